"""Check ModelGate's AAP configuration on the controller, before any call to AAP.

An action plugin, not a module: the awx.awx modules whose argument specs the data must pass
are imported in the controller's own Python, through the collection loader that
ansible-playbook has installed. The checks are the modelgate package's (modelgate.aap).
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


def _secret_values(config: dict[str, Any]) -> list[str]:
    """Every credential input value: redacted from the problems reported."""
    values = []
    for cred in config.get("controller_credentials") or []:
        for value in (cred.get("inputs") or {}).values():
            if isinstance(value, str) and len(value) >= 4:
                values.append(value)
    return values


class ActionModule(ActionBase):
    """Fail with every problem of the configuration, each naming its item and field."""

    TRANSFERS_FILES = False
    # documented in plugins/modules/aap_configuration_check.py
    ARGUMENT_SPEC: dict[str, Any] = {
        "config": {"type": "dict", "required": True},
        "project_dir": {"type": "path", "required": True},
    }

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        result["changed"] = False
        args = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)[1]
        config, project_dir = args["config"], args["project_dir"]
        try:
            from pathlib import Path

            from modelgate.aap import check_configuration
            from modelgate.errors import ModelGateError
        except ImportError as exc:
            raise AnsibleActionFail(f"the modelgate package is not importable on the "
                                    f"controller: {exc}") from exc
        try:
            problems = check_configuration(config, Path(str(project_dir)))
        except ModelGateError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        for secret in _secret_values(config):
            problems = [p.replace(secret, "********") for p in problems]
        counts = {k: len(v or []) for k, v in config.items()}
        result["checked"] = counts
        result["problems"] = problems
        if problems:
            result["failed"] = True
            result["msg"] = (f"{len(problems)} problem(s) in the AAP configuration:\n"
                             + "\n".join(problems))
        else:
            result["msg"] = ("every item passes the argument specs of the awx.awx modules and "
                             "the project checks:\n"
                             + "\n".join(f"{n} {k}" for k, n in counts.items()))
        return result
