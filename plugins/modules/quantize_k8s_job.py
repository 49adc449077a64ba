#!/usr/bin/python
"""Render the Kubernetes Job (and ConfigMap) that quantizes one variant; record its result."""

from __future__ import annotations

DOCUMENTATION = r"""
module: quantize_k8s_job
short_description: Render the Kubernetes Job that quantizes one variant, or record its result
description:
  - Computes the variant's content key on the controller (source model digest from the local
    copy of the model, recipe digest, calibration digest, and the tool versions, for which the
    image reference stands in unless O(tool_versions) is given) and renders a ConfigMap (the
    job spec, the job's source file, the calibration samples) and a C(batch/v1) Job that reads
    the model from O(model_pvc) and writes C(<output_subpath>/<key>) on O(output_pvc).
  - The Job is named after the variant and the key, so applying it again changes nothing; a
    re-created Job whose checkpoint already exists exits at once. Apply the manifests with
    M(kubernetes.core.k8s); this module talks to no cluster.
  - With O(provenance) (the finished Job's termination message), it records
    C(<run>/<variant>/quantize.json) as the local runner does instead of rendering.
  - Recipe C(none) renders no Job; the variant is the model on O(model_pvc).
extends_documentation_fragment:
  - modelgate.pipeline.pod
  - modelgate.pipeline.recipe
  - modelgate.pipeline.recipe.calibration
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  model:
    description: A local copy of the source model (digested for the key; same files as on the PVC).
    type: path
    required: true
  variant:
    description: The variant's name.
    type: str
    required: true
  calibration_dir:
    description: Where the built-in corpus is written on the controller when no files are given.
    type: path
    default: /tmp/modelgate-calibration
  image:
    description: The image with python3, torch and llmcompressor (pin it by digest).
    type: str
    required: true
  python:
    description: The Python inside O(image).
    type: str
    default: python3
  namespace:
    description: The namespace of the ConfigMap and Job.
    type: str
    required: true
  model_pvc:
    description: The PVC that holds the source model (mounted read-only).
    type: str
    required: true
  model_subpath:
    description: The model's directory inside O(model_pvc).
    type: str
    default: ""
  output_pvc:
    description: The PVC the checkpoint is written to.
    type: str
    required: true
  output_subpath:
    description: The store directory inside O(output_pvc).
    type: str
    default: checkpoints
  gpu_count:
    description: GPUs requested (0 = CPU only).
    type: int
    default: 1
  gpu_resource:
    description: The extended resource that counts GPUs.
    type: str
    default: nvidia.com/gpu
  cpu:
    description: CPU request.
    type: str
    default: "8"
  memory:
    description: Memory request and limit.
    type: str
    default: 64Gi
  service_account:
    description: The Job's service account (empty = default).
    type: str
    default: ""
  timeout:
    description: The Job's activeDeadlineSeconds.
    type: int
    default: 21600
  tool_versions:
    description: "Tool versions for the key; empty = C({image: <image>})."
    type: dict
    default: {}
  provenance:
    description:
      - The finished Job's provenance; given, the module returns the variant's quantize
        C(record) (and C(files)) for the controller to store, instead of rendering.
    type: dict
  built:
    description: Whether this run created the Job (recorded as C(built_by_this_run)).
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Render the Job of the W4A16 variant
  modelgate.pipeline.quantize_k8s_job:
    model: /srv/models/nemotron-nano-9b-v2
    variant: w4a16
    recipe: w4a16
    group_size: 64
    image: registry.example.com/ai/llm-compressor@sha256:0123...
    namespace: modelgate
    model_pvc: models
    model_subpath: nemotron-nano-9b-v2
    output_pvc: checkpoints
    tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  register: rendered

- name: Apply it
  kubernetes.core.k8s:
    state: present
    definition: "{{ item }}"
  loop: "{{ [rendered.configmap, rendered.job] }}"
"""

RETURN = r"""
name:
  description: The Job's (and ConfigMap's) name; empty for recipe none.
  type: str
  returned: always
key:
  description: The checkpoint's content key.
  type: str
  returned: always
path:
  description: Where the checkpoint is, as C(pvc://<output_pvc>/<output_subpath>/<key>).
  type: str
  returned: always
configmap:
  description: The ConfigMap manifest (null for recipe none or when recording).
  type: dict
  returned: always
job:
  description: The Job manifest (null for recipe none or when recording).
  type: dict
  returned: always
record:
  description:
    - The variant's quantize record as C({variant, stage, data, files}), for
      M(modelgate.pipeline.run_dir) I(records).
  type: dict
  returned: with O(provenance)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run
from ansible_collections.modelgate.pipeline.plugins.module_utils.recipe_spec import (
    CALIBRATION_ARGS,
    RECIPE_ARGS,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **RECIPE_ARGS,
            **CALIBRATION_ARGS,
            "model": {"type": "path", "required": True},
            "variant": {"type": "str", "required": True},
            "calibration_dir": {"type": "path", "default": "/tmp/modelgate-calibration"},
            "image": {"type": "str", "required": True},
            "python": {"type": "str", "default": "python3"},
            "namespace": {"type": "str", "required": True},
            "model_pvc": {"type": "str", "required": True},
            "model_subpath": {"type": "str", "default": ""},
            "output_pvc": {"type": "str", "required": True},
            "output_subpath": {"type": "str", "default": "checkpoints"},
            "gpu_count": {"type": "int", "default": 1},
            "gpu_resource": {"type": "str", "default": "nvidia.com/gpu"},
            "cpu": {"type": "str", "default": "8"},
            "memory": {"type": "str", "default": "64Gi"},
            "tolerations": {"type": "list", "elements": "dict", "default": []},
            "node_selector": {"type": "dict", "default": {}},
            "service_account": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 21600},
            "tool_versions": {"type": "dict", "default": {}},
            "provenance": {"type": "dict"},
            "built": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate.quantize_runners import plan_k8s_quantize, record_k8s_result

        p = dict(module.params)
        if p["provenance"] is not None:
            return record_k8s_result(p)
        return plan_k8s_quantize(p, check_mode=module.check_mode)

    run(module, action)


if __name__ == "__main__":
    main()
