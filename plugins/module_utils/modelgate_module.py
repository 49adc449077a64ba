"""Glue shared by the collection's modules: import the modelgate package cleanly and turn its
errors into fail_json results. No pipeline logic lives here (that is the modelgate package)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from modelgate.errors import ModelGateError

    MODELGATE_IMPORT_ERROR = None
except ImportError:
    ModelGateError = Exception  # type: ignore[misc,assignment]
    MODELGATE_IMPORT_ERROR = traceback.format_exc()


def require_modelgate(module: AnsibleModule) -> None:
    """Fail cleanly when the modelgate package is not importable by the module's Python."""
    if MODELGATE_IMPORT_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib(
                "modelgate",
                reason="(installed in the controller virtualenv by `make bootstrap`)",
            ),
            exception=MODELGATE_IMPORT_ERROR,
        )


def run(module: AnsibleModule, action: Callable[[], dict[str, Any]]) -> None:
    """Run ``action`` and exit with its result; a ModelGateError fails with field and fix."""
    require_modelgate(module)
    try:
        result = action()
    except ModelGateError as exc:  # type: ignore[misc]
        details = exc.to_dict() if hasattr(exc, "to_dict") else {}
        if getattr(exc, "log", None):  # a tool's log on this host, for the play to fetch
            details["log"] = exc.log
        module.fail_json(msg=str(exc), **{k: v for k, v in details.items() if k != "error"})
    module.exit_json(**result)
