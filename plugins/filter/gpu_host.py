"""Filters that read a GPU host's package manager output, for the gpu_host role.

Thin wrappers over ``modelgate.gpu_host``, where the logic and its tests (on published
outputs) live.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from modelgate import gpu_host
except ImportError as exc:  # the controller virtualenv has the package (make bootstrap)
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def dnf_enabled_streams(text: str, module: str = "nvidia-driver") -> list[str]:
    """The streams of ``module`` that ``dnf module list`` marks enabled (``[e]``)."""
    if _IMPORT_ERROR is not None:
        raise AnsibleFilterError(f"the modelgate package is not importable: {_IMPORT_ERROR}")
    return gpu_host.enabled_streams(str(text or ""), module)


class FilterModule:
    """The collection's GPU host filters."""

    def filters(self) -> dict[str, Any]:
        """Name -> function."""
        return {"dnf_enabled_streams": dnf_enabled_streams}
