#!/usr/bin/python
"""Check a run's variant set as a whole, and decide which variants the serving host can serve."""

from __future__ import annotations

DOCUMENTATION = r"""
module: variant_set
short_description: Check the variant set before any stage runs
description:
  - >-
    Checks the whole list at once. Every variant has a unique name and a known recipe, and
    exactly one is the baseline (none, when a stored baseline is given).
  - >-
    With O(backend=vllm-cpu) and O(serve_python), decides from the serving virtualenv's
    installed vLLM which kernel library this CPU loads (C(_C), C(_C_AVX512) or C(_C_AVX2)) and
    whether it has each recipe's kernels (W4A16 C(cpu_gemm_wna16); W8A8 int8 the oneDNN ones).
    A variant with C(if_servable=true) that cannot be served is left out, with the reason; any
    other fails the task, naming the CPU's instruction set, the missing kernel and what works.
  - Reads only. The play runs it with O(inputs) on the controller (where a local model and the
    gate policy file are), then on the serving host for its kernels.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  variants:
    description:
      - The inventory's variants (C(name), C(recipe), C(group_size), C(ignore), C(baseline),
        C(serving_overrides), C(if_servable)).
    type: list
    elements: dict
    required: true
  backend:
    description: The kernels that will serve the checkpoints.
    type: str
    choices: [vllm-cuda, vllm-cpu]
  serve_python:
    description:
      - The Python of the virtualenv that serves (vllm-cpu); its torch and vLLM decide.
        Omitted, kernels are not checked.
    type: path
  stored_baseline:
    description: The baseline comes from a stored result file, so no variant need be one.
    type: bool
    default: false
  inputs:
    description:
      - The run's other inputs, named without the C(modelgate_) prefix (C(target),
        C(quantize_runner), C(serving), C(calibration), C(validate_rounds), C(load_profile),
        C(load_overrides), C(gate_policy), C(gate_tolerances), C(model), C(runs_dir) with
        C(run_id), the run to continue), checked first and before the serving host is probed.
        Ranges (ports 1-65535, lengths, counts and rounds at least 1), choices, that a run to
        continue exists, the gate policy file (parsed by the gate's own parser), the load
        profile and, for a local model, every safetensors file against its header and index.
      - A key left out is not checked.
    type: dict
    default: {}
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Check the variants against this host's vLLM CPU
  modelgate.pipeline.variant_set:
    variants:
      - {name: bf16, recipe: none, baseline: true}
      - {name: w8a8, recipe: w8a8-int8}
      - {name: w4a16, recipe: w4a16, group_size: 64, if_servable: true}
    backend: vllm-cpu
    serve_python: /srv/modelgate/venvs/serve/bin/python
  register: variant_set
"""

RETURN = r"""
variants:
  description: The variants this run builds, in the given order, without C(if_servable).
  type: list
  elements: dict
  returned: always
left_out:
  description: Each variant left out (C(name), C(recipe), C(reason)).
  type: list
  elements: dict
  returned: always
kernels:
  description: The vLLM CPU library decided from (C(isa), C(library), C(path), C(ops)), or null.
  type: dict
  returned: always
inputs:
  description: What the input check decided (C(gate_policy), C(load_profile), C(model_files)).
  type: dict
  returned: always
msg:
  description: One line per decision.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "variants": {"type": "list", "elements": "dict", "required": True},
            "backend": {"type": "str", "choices": ["vllm-cuda", "vllm-cpu"]},
            "serve_python": {"type": "path"},
            "stored_baseline": {"type": "bool", "default": False},
            "inputs": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate.cpu_kernels import detect
        from modelgate.variant_set import check_run_inputs, check_variant_set

        p = module.params
        # the run's other inputs first: they need no probe of the serving host
        inputs = check_run_inputs(p["inputs"])
        kernels = (detect(p["serve_python"])
                   if p["backend"] == "vllm-cpu" and p["serve_python"] else None)
        decided = check_variant_set(p["variants"], backend=p["backend"], kernels=kernels,
                                    stored_baseline=p["stored_baseline"])
        return {"changed": False, "msg": decided.summary, "inputs": inputs, **decided.to_dict()}

    run(module, action)


if __name__ == "__main__":
    main()
