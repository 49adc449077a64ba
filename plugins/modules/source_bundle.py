#!/usr/bin/python
"""Bundle the modelgate package and requirement files for the hosts that run stages."""

from __future__ import annotations

DOCUMENTATION = r"""
module: source_bundle
short_description: Bundle the modelgate package and requirement files for target hosts
description:
  - Writes the project's C(python/) (the modelgate package) and C(requirements/) as one tar,
    reproducibly (the same files give the same bytes), for the toolchain role to unpack on
    each host that runs a stage, where the host's modules and tool virtualenvs install it.
  - Runs on the controller (delegated to localhost); O(dest) is rewritten only when the
    content changed, so copying it again changes nothing on the hosts.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  project_dir:
    description: The ModelGate checkout (it has C(python/) and C(requirements/)).
    type: path
    required: true
  dest:
    description: The tar file to write.
    type: path
    required: true
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Bundle the package for the GPU hosts
  modelgate.pipeline.source_bundle:
    project_dir: "{{ playbook_dir | dirname }}"
    dest: "{{ playbook_dir | dirname }}/.modelgate/bundle/modelgate-src.tar"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
path:
  description: The bundle.
  type: str
  returned: always
digest:
  description: Its sha256.
  type: str
  returned: always
files:
  description: How many files it holds.
  type: int
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.toolchain import source_bundle

        p = module.params
        return source_bundle(Path(p["project_dir"]), Path(p["dest"]),
                             check_mode=module.check_mode)

    run(module, action)


if __name__ == "__main__":
    main()
