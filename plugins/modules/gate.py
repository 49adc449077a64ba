#!/usr/bin/python
"""Judge a run: every candidate against its baseline, then the report."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gate
short_description: Decide whether each candidate may ship, and write the report
description:
  - Compares every candidate variant of a run with its baseline under a policy (metric,
    rates, statistic, direction, tolerance), deciding from per-request and per-sample data
    (bootstrap confidence intervals, paired comparisons); a check that lacks data is
    inconclusive, never a silent pass.
  - The policy may also state absolute service levels in C(slos) (for example TTFT p95 at
    most 200 ms at 5 requests/s, or 99% of requests meeting per-request limits), decided on
    each candidate alone, noise-aware in the same way; they count toward the same
    dimensions (latency, errors, throughput). See C(modelgate/gate.py) and the commented
    example in the default policy.
  - With one load-test round per variant, measured one after the other, a latency check's
    interval sees the noise within each run but not the drift of the host between runs, so
    the check is V(inconclusive), naming the cause and the fix (two or more rounds per
    variant, or the variants measured together), unless the policy's C(single_round_drift)
    (a factor from 1 to 10, for example 1.5) allows for that drift; the interval is then
    widened by the factor on both sides before it is decided.
  - No pass without evidence. The verdict C(status) is V(pass) only when every dimension the
    policy names (latency, throughput, errors, accuracy, fidelity) has a check that decided
    pass and no check failed; V(fail) when a check failed; V(inconclusive) when a dimension
    has no deciding check and the policy's C(accept_inconclusive) does not list it.
  - Writes C(gate.json) and C(junit.xml) into the run directory, then C(report.html) with its
    plots, B(before) it fails; the failure message names every failed check with its numbers
    and every dimension without evidence with what is missing and how to get it.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  run_path:
    description: The run directory.
    type: path
    required: true
  policy:
    description: A policy YAML file; empty = the built-in defaults.
    type: path
  baseline:
    description: A stored baseline (run directory or raw GuideLLM report) instead of the run's own.
    type: path
  accept_inconclusive:
    description:
      - Dimensions (latency, throughput, errors, accuracy, fidelity) whose lack of a deciding
        check does not block a pass, added to the policy's own C(accept_inconclusive); for
        example V(accuracy) for a model that answers at chance.
    type: list
    elements: str
    default: []
  tolerances:
    description:
      - Replaces the tolerance of every check of a dimension (V(latency), V(throughput),
        V(errors), V(accuracy), V(fidelity)); for example V(latency) set to V(0.2) lets each
        latency check be 20% worse, V(accuracy) set to V(0.98) sets the minimum recovery. The
        policy used, with these, is recorded in gate.json.
    type: dict
    default: {}
  fail_on_regression:
    description:
      - Fail the task when the verdict is not a pass (V(fail) or V(inconclusive)).
      - To let an inconclusive dimension through, list it in O(accept_inconclusive) or in the
        policy's C(accept_inconclusive), not here.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: none
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Gate the run
  modelgate.pipeline.gate:
    run_path: /srv/modelgate/runs/20261130T101010Z-ab12
"""

RETURN = r"""
passed:
  description: True only when RV(status) is V(pass).
  type: bool
  returned: always
status:
  description:
    - The verdict, V(pass), V(fail) or V(inconclusive) (C(modelgate gate) exits 0, 1, 3).
  type: str
  returned: always
message:
  description: Each failed check and each dimension without evidence, one per line.
  type: str
  returned: always
report:
  description: Path of report.html.
  type: str
  returned: always
summary:
  description: A short Markdown summary for CI logs.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "run_path": {"type": "path", "required": True},
            "policy": {"type": "path"},
            "baseline": {"type": "path"},
            "accept_inconclusive": {"type": "list", "elements": "str", "default": []},
            "tolerances": {"type": "dict", "default": {}},
            "fail_on_regression": {"type": "bool", "default": True},
        },
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.measure import judge_run

        p = module.params
        outcome = judge_run(Path(p["run_path"]), policy=p["policy"] or None,
                            baseline=p["baseline"] or None,
                            accept_inconclusive=p["accept_inconclusive"],
                            tolerances=p["tolerances"])
        if p["fail_on_regression"] and not outcome["passed"]:
            module.fail_json(msg=outcome["message"], **{k: v for k, v in outcome.items()
                                                        if k != "message"})
        return {"changed": True, **outcome}

    run(module, action)


if __name__ == "__main__":
    main()
