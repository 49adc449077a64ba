"""Errors that carry the input at fault and how to fix it."""

from __future__ import annotations


class ModelGateError(Exception):
    """A failure the user can act on: names the input (``field``) and the ``fix``."""

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.fix = fix

    def __str__(self) -> str:
        parts = [self.message]
        if self.field:
            parts.append(f"(input: {self.field})")
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, str | None]:
        """Plain-data form, for JSON output and Ansible's fail_json."""
        return {"error": self.message, "field": self.field, "fix": self.fix}


class ToolError(ModelGateError):
    """An external tool (vLLM, GuideLLM, lm-eval, skopeo, ...) failed."""


class InputError(ModelGateError):
    """An input file that is missing, unreadable, empty, binary or of the wrong shape.

    Every command exits 2 on it, whatever its exit 1 means (a regression for ``gate``, a recipe
    that cannot work for ``preflight``).
    """
