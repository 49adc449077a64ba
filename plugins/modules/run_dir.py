#!/usr/bin/python
"""Open or create a ModelGate run directory."""

from __future__ import annotations

DOCUMENTATION = r"""
module: run_dir
short_description: Open or create a ModelGate run directory
description:
  - Creates C(runs_dir/<run_id>/manifest.json) for a new run, or opens an existing run, and
    merges the given inputs and variants into its manifest.
  - Points C(runs_dir/latest) at the run.
version_added: "0.1.0"
author: ModelGate
options:
  runs_dir:
    description: Directory that holds one sub-directory per run.
    type: path
    required: true
  run_id:
    description:
      - Run to open. C(latest) continues the newest run. Omitted, a new run is created.
    type: str
  inputs:
    description: Inputs to merge into the manifest (secrets must not be passed here).
    type: dict
  variants:
    description: The run's variants (name, recipe, baseline flag); replaces the recorded list.
    type: list
    elements: dict
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Open a new run
  modelgate.pipeline.run_dir:
    runs_dir: /srv/modelgate/runs
    inputs: {model: tiny}
  register: run
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
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "runs_dir": {"type": "path", "required": True},
            "run_id": {"type": "str"},
            "inputs": {"type": "dict"},
            "variants": {"type": "list", "elements": "dict"},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.rundir import RunDir

        p = module.params
        run_dir, created = RunDir.open(Path(p["runs_dir"]), p["run_id"])
        sections = {k: p[k] for k in ("inputs", "variants") if p[k] is not None}
        changed = created
        if sections and not module.check_mode:
            before = run_dir.manifest()
            changed = run_dir.update(**sections) != before or changed
        return {"changed": changed, "run_id": run_dir.run_id, "path": str(run_dir.path)}

    run(module, action)


if __name__ == "__main__":
    main()
