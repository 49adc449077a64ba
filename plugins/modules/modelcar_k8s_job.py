#!/usr/bin/python
"""Render the Kubernetes Job that builds and pushes one variant's modelcar; record its result."""

from __future__ import annotations

DOCUMENTATION = r"""
module: modelcar_k8s_job
short_description: Render the in-cluster Job that builds and pushes a modelcar, or record its result
description:
  - Renders a ConfigMap (ModelGate's package as a .tar.gz, the provenance) and a C(batch/v1) Job
    that reads the variant's checkpoint from its PVC (the quantize record's C(pvc://) path),
    copies the base image with skopeo in an init container, and runs C(modelgate modelcar
    publish) (build, push, verify), so the checkpoint never passes through the controller.
  - The tag is C(<variant>-<key[:16]>) of the quantize content key and the Job is named after
    it, so applying it again changes nothing.
  - With O(termination_message) (the finished pod's termination message), returns the
    variant's modelcar C(record) for the controller to store instead of rendering.
  - Talks to no cluster; apply the manifests with M(kubernetes.core.k8s).
extends_documentation_fragment:
  - modelgate.pipeline.pod
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  variant:
    description: The variant's name.
    type: str
    required: true
  checkpoint:
    description: The checkpoint, C(pvc://<claim>/<path>) (the quantize record's path).
    type: str
  key:
    description: The quantize content key (hex) of the variant.
    type: str
  namespace:
    description: The namespace of the ConfigMap and Job.
    type: str
    default: modelgate
  image:
    description: An image with python3 (the quantize image has one).
    type: str
    default: ""
  skopeo_image:
    description: The image whose skopeo copies the base image.
    type: str
    default: quay.io/skopeo/stable:v1.20
  base:
    description: The modelcar base image, pinned by digest.
    type: str
    default: ""
  registry:
    description: The registry host[:port] to push to.
    type: str
    default: ""
  repository:
    description: The repository in it.
    type: str
    default: ""
  tls_verify:
    description: Verify the registry's TLS certificate.
    type: bool
    default: true
  push_secret:
    description: A Secret with C(username) and C(password) keys for the push (empty, anonymous).
    type: str
    default: ""
  scratch_pvc:
    description: A PVC for the OCI layouts (empty, an emptyDir of O(scratch_size)).
    type: str
    default: ""
  scratch_size:
    description: The emptyDir's size limit (at least the checkpoint's size).
    type: str
    default: 64Gi
  cpu:
    description: CPU request.
    type: str
    default: "2"
  memory:
    description: Memory request and limit.
    type: str
    default: 8Gi
  service_account:
    description: The Job's service account (empty, default).
    type: str
    default: ""
  timeout:
    description: The Job's activeDeadlineSeconds.
    type: int
    default: 7200
  provenance:
    description: Provenance labels (source_model, source_revision, recipe_hash, ...).
    type: dict
    default: {}
  termination_message:
    description: The finished pod's termination message; given, the module returns the C(record).
    type: str
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Render the modelcar Job of w4a16
  modelgate.pipeline.modelcar_k8s_job:
    variant: w4a16
    checkpoint: pvc://modelgate-checkpoints/checkpoints/0123abcd
    key: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    namespace: modelgate
    image: quay.example.com/acme/llm-compressor@sha256:<digest>
    base: registry.access.redhat.com/ubi9/ubi-micro@sha256:<digest>
    registry: quay.example.com
    repository: acme/nemotron-nano-9b-v2
  register: modelcar_job
"""

RETURN = r"""
name:
  description: The Job's (and ConfigMap's) name.
  type: str
  returned: when rendering
ref:
  description: The image the Job pushes (by tag).
  type: str
  returned: when rendering
configmap:
  description: The ConfigMap manifest.
  type: dict
  returned: when rendering
job:
  description: The Job manifest.
  type: dict
  returned: when rendering
record:
  description: The modelcar record C({variant, stage, data}), from O(termination_message).
  type: dict
  returned: with O(termination_message)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "variant": {"type": "str", "required": True},
            "checkpoint": {"type": "str"},
            "key": {"type": "str", "no_log": False},
            "namespace": {"type": "str", "default": "modelgate"},
            "image": {"type": "str", "default": ""},
            "skopeo_image": {"type": "str", "default": "quay.io/skopeo/stable:v1.20"},
            "base": {"type": "str", "default": ""},
            "registry": {"type": "str", "default": ""},
            "repository": {"type": "str", "default": ""},
            "tls_verify": {"type": "bool", "default": True},
            "push_secret": {"type": "str", "default": "", "no_log": False},
            "scratch_pvc": {"type": "str", "default": ""},
            "scratch_size": {"type": "str", "default": "64Gi"},
            "cpu": {"type": "str", "default": "2"},
            "memory": {"type": "str", "default": "8Gi"},
            "tolerations": {"type": "list", "elements": "dict", "default": []},
            "node_selector": {"type": "dict", "default": {}},
            "service_account": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 7200},
            "provenance": {"type": "dict", "default": {}},
            "termination_message": {"type": "str"},
        },
        required_one_of=[("termination_message", "checkpoint")],
        required_by={"checkpoint": "key"},
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate.modelcar_k8s import ModelcarJob, record_from_summary, render_modelcar_job

        p = module.params
        if p["termination_message"] is not None:
            return {"changed": False, "record": record_from_summary(p["termination_message"])}
        job = ModelcarJob(
            namespace=p["namespace"], image=p["image"], skopeo_image=p["skopeo_image"],
            base=p["base"], registry=p["registry"], repository=p["repository"],
            tls_verify=p["tls_verify"], push_secret=p["push_secret"],
            scratch_pvc=p["scratch_pvc"], scratch_size=p["scratch_size"], cpu=p["cpu"],
            memory=p["memory"], tolerations=tuple(p["tolerations"]),
            node_selector=p["node_selector"], service_account=p["service_account"],
            timeout_s=p["timeout"])
        rendered = render_modelcar_job(job, variant=p["variant"], checkpoint=p["checkpoint"],
                                       key=p["key"], provenance=p["provenance"])
        return {"changed": False, **rendered}

    run(module, action)


if __name__ == "__main__":
    main()
