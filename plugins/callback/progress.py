"""ModelGate's screen output: Ansible's default, with long waits shown as progress lines."""

from __future__ import annotations

DOCUMENTATION = r"""
name: progress
type: stdout
short_description: Ansible's default output, with ModelGate job progress in place of retries
description:
  - >-
    Modules cannot stream output, so long ModelGate jobs run in the background and a
    C(modelgate.pipeline.job_progress) task polls them with C(until)/C(retries). The default
    callback prints C(FAILED - RETRYING) on every poll, although nothing failed; this one prints
    the task's C(msg) instead, one line per poll, for example C(w4a16: layer 4/6, 21 s).
  - Any other task retried with C(until) gets one C(waiting) line per attempt. Everything else
    is the default callback's output, options included.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
extends_documentation_fragment:
  - default_callback
  - result_format_callback
requirements:
  - "set as stdout in ansible.cfg: C(stdout_callback = modelgate.pipeline.progress)"
"""

from typing import Any

from ansible.plugins.callback.default import CallbackModule as DefaultCallback

# short names too: a play may use `collections:` and call job_progress unqualified
_ACTIONS = ("modelgate.pipeline.", "job_progress")


def _part(result: Any, name: str) -> Any:
    """``result.task`` / ``.host`` / ``.result`` (ansible-core >= 2.19), or the old ``_task``."""
    return getattr(result, name, None) or getattr(result, f"_{name}", None)


class CallbackModule(DefaultCallback):
    """The default stdout callback; a retry is a progress line, never ``FAILED``."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "modelgate.pipeline.progress"

    def v2_runner_retry(self, result: Any) -> None:
        """One line per poll: the job's progress, or which attempt of how many this was."""
        task = _part(result, "task")
        res = _part(result, "result") or {}
        host = _part(result, "host")
        host_name = host.get_name() if host is not None else "?"
        action = str(getattr(task, "action", "") or "")
        msg = res.get("msg")
        if msg and any(action.startswith(a) or action == a for a in _ACTIONS):
            self._display.display(f"  [{host_name}] progress: {msg}", color="cyan")
            return
        name = getattr(result, "task_name", None) or getattr(task, "name", None) or action
        attempts, retries = res.get("attempts", 0), res.get("retries", 0)
        self._display.display(f"  [{host_name}] waiting: {name} (attempt {attempts} of "
                              f"{retries})", color="cyan")
