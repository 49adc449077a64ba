#!/usr/bin/python
"""Check a quantization recipe against the model's geometry and the serving kernels."""

from __future__ import annotations

DOCUMENTATION = r"""
module: preflight
short_description: Check a quantization recipe before any weight is loaded
description:
  - Reads the model geometry (config.json and safetensors headers) and checks every layer the
    recipe quantizes against the serving backend's kernel constraints (group size divides the
    input size; vLLM CPU needs output sizes that are a multiple of 32; vLLM CUDA's mixed-input
    W4A16 kernels have their own).
  - Fails, naming every offending layer with a fix, when the recipe cannot work.
extends_documentation_fragment:
  - modelgate.pipeline.recipe
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  model:
    description: The model directory or its config.json.
    type: path
    required: true
  backend:
    description: The kernels that will serve the checkpoint.
    type: str
    choices: [vllm-cuda, vllm-cpu]
  tensor_parallel_size:
    description: Tensor parallelism the checkpoint will be served with.
    type: int
    default: 1
  serve_python:
    description:
      - With O(backend=vllm-cpu), the Python of the virtualenv that serves; its torch and
        installed vLLM decide which kernel library this CPU loads and whether it has the
        recipe's kernels. Omitted, only the layer shapes are checked.
    type: path
  cuda_kernels:
    description:
      - With O(backend=vllm-cuda), the W4A16 kernels of the serving GPUs' architecture (the
        gpu_host role's C(gpu_host_gpu.w4a16_kernels)); empty, Hopper's (Machete and Marlin).
    type: list
    elements: str
    default: []
  serving_overrides:
    description:
      - The vLLM flags the variant will be served with (C(max-model-len) and the overrides);
        given, the serving arguments are derived from the model now, so a setting the model
        cannot take (a length past its positions) fails before anything is quantized.
    type: dict
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Check W4A16 group 64 on Hopper
  modelgate.pipeline.preflight:
    model: /models/nemotron-nano-9b-v2
    recipe: w4a16
    group_size: 64
    backend: vllm-cuda
"""

RETURN = r"""
ok:
  description: Whether the recipe can work.
  type: bool
  returned: always
findings:
  description: Each offending layer, the problem and the fix.
  type: list
  elements: dict
  returned: always
summary:
  description: One line.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run
from ansible_collections.modelgate.pipeline.plugins.module_utils.recipe_spec import (
    RECIPE_ARGS,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **RECIPE_ARGS,
            "model": {"type": "path", "required": True},
            "backend": {"type": "str", "choices": ["vllm-cuda", "vllm-cpu"]},
            "tensor_parallel_size": {"type": "int", "default": 1},
            "serve_python": {"type": "path"},
            "cuda_kernels": {"type": "list", "elements": "str", "default": []},
            "serving_overrides": {"type": "dict"},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.geometry import ModelGeometry
        from modelgate.preflight import check_weight_files, run_preflight
        from modelgate.recipes import build_recipe

        p = module.params
        path = Path(p["model"])
        geometry = ModelGeometry.from_model_dir(path.parent if path.is_file() else path)
        check_weight_files(path)
        recipe = build_recipe(p["recipe"], group_size=p["group_size"], ignore=p["ignore"])
        kernels = None
        if p["backend"] == "vllm-cpu" and p["serve_python"]:
            from modelgate.cpu_kernels import detect

            kernels = detect(p["serve_python"])
        report = run_preflight(geometry, recipe, p["backend"], p["tensor_parallel_size"],
                               kernels, cuda_kernels=p["cuda_kernels"])
        result = {"changed": False, **report.to_dict()}
        if p["serving_overrides"] is not None:
            from modelgate.serving import derive_serving_args

            # the memory plan belongs to the serving host: here only what the model decides
            derive_serving_args(path.parent if path.is_file() else path,
                                device="cuda", overrides=p["serving_overrides"])
        if not report.ok:
            lines = [f"{f['layer']}: {f['problem']}. Fix: {f['fix']}"
                     for f in result["findings"][:12]]
            more = len(result["findings"]) - len(lines)
            module.fail_json(
                msg=f"{report.summary}\n" + "\n".join(lines)
                + (f"\n... and {more} more" if more > 0 else ""),
                **{k: v for k, v in result.items() if k != "changed"},
            )
        return result

    run(module, action)


if __name__ == "__main__":
    main()
