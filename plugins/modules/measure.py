#!/usr/bin/python
"""Measure one served variant: GuideLLM load, lm-eval accuracy, logprobs for fidelity."""

from __future__ import annotations

DOCUMENTATION = r"""
module: measure
short_description: Measure served variants for the gate, one alone or several together
description:
  - Runs on the serving host and writes into O(work_dir), laid out as the run directory is;
    returns C(archive), one tar of the variant's files, which the pipeline fetches and unpacks
    into the controller's C(<run>/<variant>/).
  - Runs a GuideLLM load sweep (a preset, with overrides) against the served endpoint and
    writes the raw report and normalized results into C(<work_dir>/<variant>/guidellm/).
  - Runs lm-eval tasks through the endpoint into C(<work_dir>/<variant>/accuracy/) (first round).
  - Scores a fixed prompt set's next-token distributions into C(<variant>/logprobs.json);
    a candidate scores the baseline's exact token sequences and gets C(fidelity.json).
  - Round N > 1 adds C(results-rN.json) only, for interleaved repeated measurement.
  - With O(upstreams) instead of O(variant) and O(base_url), measures variants served side by
    side together, in one GuideLLM run through the interleaving proxy (requests dealt out in
    turn); each variant's share goes where a run of it alone would put it, cut into the time
    blocks the gate pairs the variants by, and the raw report and the proxy's routes go to
    C(<work_dir>/interleaved/r<round>/). Returns one archive per variant, and one of
    C(interleaved/).
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  work_dir:
    description:
      - This host's work directory for the run (the baseline must have been measured into the
        same one, for fidelity).
    type: path
    required: true
  variant:
    description: The variant being measured (or give O(upstreams)).
    type: str
  upstreams:
    description:
      - Variants served side by side, name -> the server's root URL, the baseline first.
    type: dict
  baseline:
    description: The baseline variant's name (empty when this is the baseline).
    type: str
    default: ""
  base_url:
    description: The server's root URL (with O(variant)).
    type: str
  quality_for:
    description:
      - With O(upstreams), the variants whose accuracy and logprobs are measured in this call
        (before the load, which also warms their servers; the others get a short warm-up).
    type: list
    elements: str
    default: []
  servers:
    description:
      - With O(upstreams), the group's local vLLM CPU servers as M(modelgate.pipeline.measure_plan)
        returns them (C(variant), C(port), C(cpus)); found running in O(state_dir), they swap
        their cores every half time block during the load, so no variant keeps the faster core.
    type: list
    elements: dict
    default: []
  state_dir:
    description: Where the local servers' state files are (with O(servers)).
    type: path
  delays_ms:
    description:
      - With O(upstreams), a fixed delay in ms the proxy adds to a variant's responses - a
        known regression, to prove the gate detects one of that size on this host.
    type: dict
    default: {}
  served_name:
    description: The model name the server answers to.
    type: str
    required: true
  processor:
    description: The checkpoint directory whose tokenizer GuideLLM and lm-eval use.
    type: path
    required: true
  bench_bin_dir:
    description: The bench virtualenv's bin directory (guidellm, lm_eval).
    type: path
    required: true
  load_profile:
    description: GuideLLM preset (ci, seed).
    type: str
    default: ci
  load_overrides:
    description: Preset fields to override (rates, max_seconds, ...).
    type: dict
    default: {}
  accuracy_tasks:
    description: lm-eval tasks (local offline tasks or presets); empty skips accuracy.
    type: list
    elements: str
    default: []
  accuracy_limit:
    description: Limit the samples per task (a count, or a fraction below 1).
    type: float
  fidelity:
    description: Collect logprobs (and compare a candidate with the baseline).
    type: bool
    default: true
  round:
    description: Measurement round (1 = everything; later rounds repeat the load only).
    type: int
    default: 1
  cpu_affinity:
    description: Cores to pin the load client to (the ones vLLM leaves free).
    type: list
    elements: int
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: none
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Measure the W4A16 variant
  modelgate.pipeline.measure:
    work_dir: /srv/modelgate/work/20261130T101010Z-ab12
    variant: w4a16
    baseline: bf16
    base_url: http://127.0.0.1:8000
    served_name: tiny
    processor: /srv/modelgate/store/served/sha256-abc
    bench_bin_dir: /srv/modelgate/venvs/bench/bin
"""

RETURN = r"""
load:
  description: The load run's summary (paths, wall time).
  type: dict
  returned: always
accuracy:
  description: Per-task scores.
  type: dict
  returned: when accuracy_tasks
fidelity:
  description: Flip rate and KL against the baseline.
  type: dict
  returned: for a candidate
files:
  description: Every file under C(<work_dir>/<variant>/), relative.
  type: list
  elements: str
  returned: always
archive:
  description:
    - Those files as one tar on this host, for the play to fetch and the controller's
      M(modelgate.pipeline.run_dir) to unpack into C(<run>/<variant>/) (I(archives)).
  type: str
  returned: with O(variant)
archives:
  description:
    - With O(upstreams), C({variant, path}) for each variant's tar and for C(interleaved)
      (the raw report and routes), in the form M(modelgate.pipeline.run_dir) I(archives) takes.
  type: list
  elements: dict
  returned: with O(upstreams)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "work_dir": {"type": "path", "required": True},
            "variant": {"type": "str"},
            "upstreams": {"type": "dict"},
            "quality_for": {"type": "list", "elements": "str", "default": []},
            "delays_ms": {"type": "dict", "default": {}},
            "servers": {"type": "list", "elements": "dict", "default": []},
            "state_dir": {"type": "path"},
            "baseline": {"type": "str", "default": ""},
            "base_url": {"type": "str"},
            "served_name": {"type": "str", "required": True},
            "processor": {"type": "path", "required": True},
            "bench_bin_dir": {"type": "path", "required": True},
            "load_profile": {"type": "str", "default": "ci"},
            "load_overrides": {"type": "dict", "default": {}},
            "accuracy_tasks": {"type": "list", "elements": "str", "default": []},
            "accuracy_limit": {"type": "float"},
            "fidelity": {"type": "bool", "default": True},
            "round": {"type": "int", "default": 1},
            "cpu_affinity": {"type": "list", "elements": "int"},
        },
        required_one_of=[("variant", "upstreams")],
        mutually_exclusive=[("variant", "upstreams")],
        required_by={"variant": "base_url"},
    )

    def action() -> dict:
        import json
        from pathlib import Path

        from modelgate.measure import (
            local_server_sessions,
            measure_together,
            measure_variant,
        )

        p = module.params
        if p["upstreams"]:
            rotate = (local_server_sessions(p["servers"], Path(p["state_dir"]))
                      if p["servers"] and p["state_dir"] else {})
            together = measure_together(
                work_dir=Path(p["work_dir"]), upstreams=p["upstreams"],
                baseline=p["baseline"], served_name=p["served_name"],
                processor=p["processor"], bench_bin_dir=Path(p["bench_bin_dir"]),
                load_profile=p["load_profile"], load_overrides=p["load_overrides"],
                accuracy_tasks=p["accuracy_tasks"], accuracy_limit=p["accuracy_limit"],
                fidelity=p["fidelity"], round_no=p["round"], quality_for=p["quality_for"],
                delays_ms={k: float(v) for k, v in p["delays_ms"].items()},
                cpu_affinity=p["cpu_affinity"], rotate_cores=rotate)
            together["archives"] = [
                {"variant": name, "path": entry["archive"]}
                for name, entry in [*together["variants"].items(),
                                    ("interleaved", together["interleaved"])]]
            return {"changed": True, **json.loads(json.dumps(together, default=str))}
        result = measure_variant(
            work_dir=Path(p["work_dir"]), variant=p["variant"], baseline=p["baseline"],
            base_url=p["base_url"], served_name=p["served_name"], processor=p["processor"],
            bench_bin_dir=Path(p["bench_bin_dir"]), load_profile=p["load_profile"],
            load_overrides=p["load_overrides"], accuracy_tasks=p["accuracy_tasks"],
            accuracy_limit=p["accuracy_limit"], fidelity=p["fidelity"], round_no=p["round"],
            cpu_affinity=p["cpu_affinity"],
        )
        return {"changed": True, **json.loads(json.dumps(result, default=str))}

    run(module, action)


if __name__ == "__main__":
    main()
