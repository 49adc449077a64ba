#!/usr/bin/python
"""Open or create a ModelGate run directory, and store what the stages return into it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: run_dir
short_description: Open or create a ModelGate run directory, and store stage records in it
description:
  - Creates C(runs_dir/<run_id>/manifest.json) for a new run, or opens an existing run, and
    merges the given inputs and variants into its manifest.
  - Points C(runs_dir/latest) at the run.
  - The run directory is the controller's, and this module is its one writer. Stage modules
    that run on target hosts return their records; the play stores them with I(records), which
    writes C(<run>/<variant>/<stage>.json), registers the record in the manifest, and writes
    the small text files that came with it. An unchanged record changes nothing.
  - Returns every stored record, so later plays learn what earlier stages produced from the
    run's owner rather than by reading its files.
  - In check mode nothing is written (a new run is not created, C(latest) is not moved).
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  runs_dir:
    description: Directory that holds one sub-directory per run. Give this or I(path).
    type: path
  path:
    description: An existing run directory (instead of I(runs_dir) and I(run_id)).
    type: path
  run_id:
    description:
      - Run to open. C(latest) continues the newest run. Omitted, a new run is created.
      - An id that names no run is an error (naming the runs there), unless I(create).
    type: str
  create:
    description:
      - Create the run I(run_id) when there is none by that id (a caller that names its own
        runs, such as a Molecule scenario). The pipeline never sets it, so a mistyped
        C(modelgate_run_id) cannot start a run.
    type: bool
    default: false
  inputs:
    description: Inputs to merge into the manifest (secrets must not be passed here).
    type: dict
  variants:
    description: The run's variants (name, recipe, baseline flag); replaces the recorded list.
    type: list
    elements: dict
  records:
    description:
      - Stage records to store, each C({variant, stage, data}) and optionally C(files), which
        maps paths relative to C(<variant>/) to text (or to data, written as JSON).
    type: list
    elements: dict
    default: []
  archives:
    description:
      - Fetched measurement archives to unpack, each a dict with C(variant) and C(path), the
        C(archive) that M(modelgate.pipeline.measure) returns, fetched to this host. Their
        files go into C(<run>/<variant>/) and the fetched copy is removed.
    type: list
    elements: dict
    default: []
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Open a new run
  modelgate.pipeline.run_dir:
    runs_dir: /srv/modelgate/runs
    inputs: {model: tiny}
  register: run

- name: Store the quantize stage's record, as returned by the quantize module on the GPU host
  modelgate.pipeline.run_dir:
    path: "{{ run.path }}"
    records:
      - variant: w4a16
        stage: quantize
        data: "{{ quantized.record }}"
        files: {quantize/recipe.yaml: "{{ quantized.recipe_yaml }}"}
  delegate_to: localhost
"""

RETURN = r"""
run_id:
  description: The run's id.
  type: str
  returned: always
path:
  description: The run directory.
  type: str
  returned: always
created:
  description: Whether the run was (in check mode, would be) created.
  type: bool
  returned: always
records:
  description: "Every stored record of the run: C({variant: {stage: record}})."
  type: dict
  returned: always
workflow_artifacts:
  description:
    - What the next node of an AAP workflow reads (the stages publish it with
      C(ansible.builtin.set_stats)), C(modelgate_run_id), C(modelgate_modelcars) (variant to
      reference by digest), C(modelgate_endpoints) (variant to URL) and C(modelgate_gate)
      (passed, status, message, gate, junit, report; null before the gate ran).
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "runs_dir": {"type": "path"},
            "path": {"type": "path"},
            "run_id": {"type": "str"},
            "create": {"type": "bool", "default": False},
            "inputs": {"type": "dict"},
            "variants": {"type": "list", "elements": "dict"},
            "records": {"type": "list", "elements": "dict", "default": []},
            "archives": {"type": "list", "elements": "dict", "default": []},
        },
        required_one_of=[("runs_dir", "path")],
        mutually_exclusive=[("path", "runs_dir"), ("path", "run_id")],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.rundir import RunDir, store_records, unpack_measurements

        p = module.params
        check = module.check_mode
        if p["path"]:
            run_dir = RunDir.existing(Path(p["path"]), dry_run=check)
            created = False
        else:
            run_dir, created = RunDir.open(Path(p["runs_dir"]), p["run_id"], dry_run=check,
                                           create=p["create"])
        sections = {k: p[k] for k in ("inputs", "variants") if p[k] is not None}
        changed = created
        if sections:
            changed = run_dir.would_update(**sections) or changed
            if not check:
                run_dir.update(**sections)
        changed = store_records(run_dir, p["records"], dry_run=check) or changed
        for entry in p["archives"]:
            changed = unpack_measurements(run_dir, str(entry["variant"]), Path(entry["path"]),
                                          dry_run=check) or changed
        return {"changed": changed, "created": created, "run_id": run_dir.run_id,
                "path": str(run_dir.path), "records": run_dir.records(),
                "workflow_artifacts": run_dir.workflow_artifacts()}

    run(module, action)


if __name__ == "__main__":
    main()
