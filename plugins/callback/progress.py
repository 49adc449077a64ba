"""Print the progress of ModelGate's long-running jobs on every retry of their poll task."""

from __future__ import annotations

DOCUMENTATION = r"""
name: progress
type: notification
short_description: Show ModelGate job progress while a task is retried
description:
  - >-
    Modules cannot stream output, so long ModelGate jobs run in the background and a
    C(modelgate.pipeline.job_progress) task polls them with C(until)/C(retries). On each retry
    this callback prints the task's C(msg), for example C(w4a16: layer 4/6, 21 s), so the play
    output shows layers done / total and the elapsed time.
  - Only tasks of the C(modelgate.pipeline) collection are shown; everything else is untouched.
version_added: "0.1.0"
author: ModelGate
requirements:
  - "enable in ansible.cfg: C(callbacks_enabled = modelgate.pipeline.progress)"
"""

from typing import Any

from ansible.plugins.callback import CallbackBase

# short names too: a play may use `collections:` and call job_progress unqualified
_ACTIONS = ("modelgate.pipeline.", "job_progress")


class CallbackModule(CallbackBase):
    """Notification callback: one progress line per retry of a ModelGate poll task."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "modelgate.pipeline.progress"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_retry(self, result: Any) -> None:
        """Print ``msg`` of a retried ModelGate task (the default callback prints the rest)."""
        action = str(getattr(result._task, "action", "") or "")
        if not any(action.startswith(a) or action == a for a in _ACTIONS):
            return
        msg = result._result.get("msg")
        if msg:
            host = result._host.get_name()
            self._display.display(f"  [{host}] progress: {msg}", color="cyan")
