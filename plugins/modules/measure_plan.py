#!/usr/bin/python
"""Decide how the validate stage measures the variants on this serving host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: measure_plan
short_description: Decide whether the variants are measured side by side or one at a time
description:
  - Runs on the serving host, which it inspects (the cores this process may use; with
    O(gpus=all), the GPUs C(nvidia-smi) lists). Changes nothing.
  - C(interleaved) when every variant measured together can have a share of its own (whole
    cores for vLLM CPU on the local target, whole GPUs on a GPU target); with more variants
    than shares, the baseline is measured with as many candidates at a time as fit, group
    after group. Each group is one GuideLLM run per round through the interleaving proxy.
  - C(sequential) otherwise, or when asked, one variant at a time, the order flipped in
    every round.
version_added: "0.2.0"
author: ModelGate maintainers (@modelgate)
options:
  variants:
    description: The variants' names in measuring order, the baseline first.
    type: list
    elements: str
    required: true
  rounds:
    description: Load-test rounds per variant (per group when interleaved).
    type: int
    default: 2
  port:
    description: The first server's port; the servers of a group take the ports after it.
    type: int
    default: 8000
  design:
    description: auto, interleaved (an error where the host cannot) or sequential.
    type: str
    choices: [auto, interleaved, sequential]
    default: auto
  target:
    description: The serving target (local, rhaiis).
    type: str
    default: local
  device:
    description: What the servers run on (cpu, cuda).
    type: str
    choices: [cpu, cuda]
    default: cpu
  gpus:
    description:
      - GPU indices the servers may use, C(all) (those C(nvidia-smi) lists here) or C(none).
    type: raw
    default: all
  keep_serving:
    description: Leave the last group's servers running (a re-run finds them and reuses them).
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
    details: Only inspects the host.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Plan the measurement of three variants
  modelgate.pipeline.measure_plan:
    variants: [bf16, w8a8, w4a16]
    rounds: 2
    port: 8000
  register: plan
"""

RETURN = r"""
design:
  description: interleaved or sequential.
  type: str
  returned: always
reason:
  description: Why, in words (the shares, the groups; or what side by side would need).
  type: str
  returned: always
schedule:
  description: Sequential design, C([round, variant]) pairs in measuring order.
  type: list
  returned: always
groups:
  description:
    - Interleaved design, each C({variants, servers, rounds, quality_for, stop_after}); a
      server is C({variant, port, cpus, gpus}).
  type: list
  returned: always
client_cpus:
  description: Interleaved design, the cores left to the load client (empty, it floats).
  type: list
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "variants": {"type": "list", "elements": "str", "required": True},
            "rounds": {"type": "int", "default": 2},
            "port": {"type": "int", "default": 8000},
            "design": {"type": "str", "choices": ["auto", "interleaved", "sequential"],
                       "default": "auto"},
            "target": {"type": "str", "default": "local"},
            "device": {"type": "str", "choices": ["cpu", "cuda"], "default": "cpu"},
            "gpus": {"type": "raw", "default": "all"},
            "keep_serving": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate.errors import ModelGateError
        from modelgate.measure import host_gpus, plan_measurement

        p = module.params
        gpus = p["gpus"]
        if gpus == "all":
            gpus = host_gpus() if p["device"] == "cuda" else []
        elif gpus in ("none", None):
            gpus = []
        elif isinstance(gpus, list) and all(str(g).isdigit() for g in gpus):
            gpus = [int(g) for g in gpus]
        else:
            raise ModelGateError(f"gpus must be all, none or a list of indices, got {gpus!r}",
                                 field="gpus", fix="e.g. [0, 1]")
        plan = plan_measurement(
            variants=p["variants"], rounds=p["rounds"], port=p["port"], design=p["design"],
            target=p["target"], device=p["device"], gpus=gpus,
            keep_serving=p["keep_serving"])
        return {"changed": False, **plan}

    run(module, action)


if __name__ == "__main__":
    main()
