#!/usr/bin/python
"""Measure one served variant: GuideLLM load, lm-eval accuracy, logprobs for fidelity."""

from __future__ import annotations

DOCUMENTATION = r"""
module: measure
short_description: Measure one served variant for the gate
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
version_added: "0.1.0"
author: ModelGate
options:
  work_dir:
    description:
      - This host's work directory for the run (the baseline must have been measured into the
        same one, for fidelity).
    type: path
    required: true
  variant:
    description: The variant being measured.
    type: str
    required: true
  baseline:
    description: The baseline variant's name (empty when this is the baseline).
    type: str
    default: ""
  base_url:
    description: The server's root URL.
    type: str
    required: true
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
    support: none
  diff_mode:
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
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "work_dir": {"type": "path", "required": True},
            "variant": {"type": "str", "required": True},
            "baseline": {"type": "str", "default": ""},
            "base_url": {"type": "str", "required": True},
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
    )

    def action() -> dict:
        import json
        from pathlib import Path

        from modelgate.measure import measure_variant

        p = module.params
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
