#!/usr/bin/python
"""Render the KServe resources that serve one variant on OpenShift AI."""

from __future__ import annotations

DOCUMENTATION = r"""
module: kserve_manifests
short_description: Render the KServe resources that serve one variant
description:
  - Derives the vLLM arguments from the model's C(config.json) with the same derivation the
    local and RHAIIS targets use, and renders either a vLLM C(ServingRuntime) and an
    C(InferenceService) (RawDeployment), or an C(LLMInferenceService), that serve the variant
    from its modelcar (C(oci://) by digest).
  - Also renders the registry pull secret and the HF token Secret when their values are given
    (the result then carries them; register it with C(no_log)).
  - Talks to no cluster; apply the objects with M(kubernetes.core.k8s).
extends_documentation_fragment:
  - modelgate.pipeline.pod
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  model:
    description: A directory with the model's C(config.json) (the checkpoint or its source).
    type: path
    required: true
  model_name:
    description: The model's short name (the resources are named C(<model_name>-<variant>)).
    type: str
    required: true
  variant:
    description: The variant's name.
    type: str
    required: true
  modelcar:
    description: The variant's modelcar, by digest (C(registry/repo@sha256:...)).
    type: str
    required: true
  modelcar_by_tag:
    description: Accept a modelcar by tag (manifests rendered before the modelcar is pushed).
    type: bool
    default: false
  served_name:
    description: The model name clients request.
    type: str
    required: true
  namespace:
    description: The project the resources live in.
    type: str
    required: true
  image:
    description: The vLLM serving image (RHAIIS vllm-cuda), pinned by digest.
    type: str
    required: true
  shape:
    description: C(inferenceservice) (ServingRuntime + InferenceService) or C(llminferenceservice).
    type: str
    choices: [inferenceservice, llminferenceservice]
    default: inferenceservice
  gpus:
    description: GPUs per replica (also vLLM's tensor parallelism unless overridden).
    type: int
    default: 1
  gpu_resource:
    description: The extended resource that counts GPUs.
    type: str
    default: nvidia.com/gpu
  gpu_memory_gib:
    description: Memory per GPU for the serving plan; omitted, vLLM's own profiling sizes the cache.
    type: float
  cpu:
    description: CPU request of the serving container.
    type: str
    default: "4"
  memory:
    description: Memory request and limit of the serving container.
    type: str
    default: 32Gi
  overrides:
    description: vLLM flags (name to value) over the derived ones.
    type: dict
    default: {}
  expose:
    description: Label the InferenceService for an external Route (OpenShift AI).
    type: bool
    default: false
  llmisvc_version:
    description: The LLMInferenceService API version (v1alpha1 is served wherever the kind is).
    type: str
    choices: [v1alpha1, v1alpha2]
    default: v1alpha1
  router:
    description: The LLMInferenceService router (C(gateway), C(route), C(scheduler)); omitted, none.
    type: dict
  pull_secret:
    description: The name of the registry pull secret the pods use (empty, none).
    type: str
    default: ""
  registry:
    description: The registry the pull secret is for.
    type: str
    default: ""
  registry_username:
    description: Registry user for the pull secret.
    type: str
    default: ""
  registry_password:
    description: Registry password for the pull secret.
    type: str
    default: ""
  hf_token_secret:
    description:
      - The name of the Secret that holds C(HF_TOKEN) (empty, none); the serving container reads
        it. The Secret itself is rendered only with O(hf_token).
    type: str
    default: ""
  hf_token:
    description: The Hugging Face token for that Secret.
    type: str
    default: ""
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Render the InferenceService of the w4a16 variant
  modelgate.pipeline.kserve_manifests:
    model: /srv/models/nemotron-nano-9b-v2
    model_name: nemotron-nano-9b-v2
    variant: w4a16
    modelcar: quay.example.com/acme/nemotron@sha256:<digest>
    served_name: nemotron-nano-9b-v2
    namespace: modelgate
    image: registry.redhat.io/rhaiis/vllm-cuda-rhel9@sha256:<digest>
  register: rendered
"""

RETURN = r"""
name:
  description: The name of the resources.
  type: str
  returned: always
kind:
  description: The kind whose C(Ready) condition says the variant serves.
  type: str
  returned: always
api_version:
  description: Its apiVersion.
  type: str
  returned: always
objects:
  description: The serving objects in the order to apply them.
  type: list
  returned: always
secrets:
  description: The Secrets to apply first (contain secret values).
  type: list
  returned: always
startup_timeout_s:
  description: How long the weights may take to load (the startup probe and the wait).
  type: float
  returned: always
serving_args:
  description: The derived vLLM arguments with the reason for each.
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "model": {"type": "path", "required": True},
            "model_name": {"type": "str", "required": True},
            "variant": {"type": "str", "required": True},
            "modelcar": {"type": "str", "required": True},
            "modelcar_by_tag": {"type": "bool", "default": False},
            "served_name": {"type": "str", "required": True},
            "namespace": {"type": "str", "required": True},
            "image": {"type": "str", "required": True},
            "shape": {"type": "str", "choices": ["inferenceservice", "llminferenceservice"],
                      "default": "inferenceservice"},
            "gpus": {"type": "int", "default": 1},
            "gpu_resource": {"type": "str", "default": "nvidia.com/gpu"},
            "gpu_memory_gib": {"type": "float"},
            "cpu": {"type": "str", "default": "4"},
            "memory": {"type": "str", "default": "32Gi"},
            "tolerations": {"type": "list", "elements": "dict", "default": []},
            "node_selector": {"type": "dict", "default": {}},
            "overrides": {"type": "dict", "default": {}},
            "expose": {"type": "bool", "default": False},
            "router": {"type": "dict"},
            "llmisvc_version": {"type": "str", "choices": ["v1alpha1", "v1alpha2"],
                                "default": "v1alpha1"},
            "pull_secret": {"type": "str", "default": "", "no_log": False},
            "registry": {"type": "str", "default": ""},
            "registry_username": {"type": "str", "default": ""},
            "registry_password": {"type": "str", "default": "", "no_log": True},
            "hf_token_secret": {"type": "str", "default": "", "no_log": False},
            "hf_token": {"type": "str", "default": "", "no_log": True},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.errors import ModelGateError
        from modelgate.geometry import weight_bytes
        from modelgate.kserve import KServeSettings, render_secrets, render_variant
        from modelgate.serving import derive_serving_args

        p = module.params
        overrides = dict(p["overrides"])
        if p["gpus"] > 1:
            overrides.setdefault("tensor-parallel-size", p["gpus"])
        settings = KServeSettings(
            namespace=p["namespace"], image=p["image"], shape=p["shape"], gpus=p["gpus"],
            gpu_resource=p["gpu_resource"], cpu=p["cpu"], memory=p["memory"],
            tolerations=p["tolerations"], node_selector=p["node_selector"],
            pull_secret=p["pull_secret"], hf_token_secret=p["hf_token_secret"],
            expose=p["expose"], router=p["router"], llmisvc_version=p["llmisvc_version"])
        args = derive_serving_args(Path(p["model"]), gpu_memory_gib=p["gpu_memory_gib"],
                                   overrides=overrides, served_model_name=p["served_name"])
        try:
            weights = weight_bytes(Path(p["model"]))
        except ModelGateError:
            weights = None  # a config-only directory: the timeout's base alone
        rendered = render_variant(settings, model=p["model_name"], variant=p["variant"],
                                  modelcar=p["modelcar"], serving_args=args,
                                  served_name=p["served_name"], weight_bytes=weights,
                                  by_tag=p["modelcar_by_tag"])
        secrets = render_secrets(
            p["namespace"], pull_secret=p["pull_secret"], registry=p["registry"],
            username=p["registry_username"], password=p["registry_password"],
            hf_token_secret=p["hf_token_secret"], hf_token=p["hf_token"])
        return {"changed": False, **rendered, "secrets": secrets,
                "serving_args": args.to_dict()}

    run(module, action)


if __name__ == "__main__":
    main()
