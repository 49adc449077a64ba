"""podman and skopeo: the one way ModelGate runs them.

:func:`run_container_tool` runs either to completion (through :func:`modelgate.process.run_tool`)
and gives every caller the same guarantees: a missing tool is a ModelGateError naming the
package to install, a run past its timeout is a ToolError, and the output of a failed run has
the given secrets replaced by ``***`` before anyone sees it, in the error or in the returned
result. A failed command that talks to a registry (any skopeo command; podman pull, push,
login) is classified with the native client's error types: :class:`RegistryAuthError`,
:class:`RegistryNotFound`, :class:`TransientRegistryError` (worth retrying, see
:func:`modelgate.oci_push.with_retries`), else :class:`ToolError`.

Credentials reach these tools only as an auth file
(:meth:`modelgate.registry.RegistryCredentials.authfile`), never as an argument.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence

from modelgate.errors import ModelGateError, ToolError
from modelgate.oci_push import RegistryAuthError, RegistryNotFound, TransientRegistryError
from modelgate.process import run_tool
from modelgate.registry import redact

INSTALL_HINTS = {
    "podman": "install the podman package (Debian: apt-get install podman; RHEL: dnf install "
              "podman)",
    "skopeo": "install the skopeo package (Debian: apt-get install skopeo; RHEL: dnf install "
              "skopeo)",
}
# subcommands named in messages; a group (``podman secret rm``) is named with its verb
_SUBCOMMANDS = frozenset({
    "build", "copy", "create", "delete", "exec", "inspect", "list-tags", "login", "logout",
    "logs", "pull", "push", "rm", "rmi", "run", "start", "stop", "sync",
})
_GROUPS = frozenset({"container", "image", "manifest", "network", "secret", "volume"})
_REGISTRY_VERBS = frozenset({"pull", "push", "login"})

_AUTH_MARKERS = ("unauthorized", "authentication required", "401", "invalid username/password",
                 "denied")
_NOT_FOUND_MARKERS = ("manifest unknown", "name unknown", "not found", "404")
_TRANSIENT_MARKERS = ("connection refused", "connection reset", "timeout", "i/o timeout", "eof",
                      "502", "503", "504", "too many requests", "429", "temporary failure",
                      "tls handshake", "broken pipe", "no such host")


def subcommand(args: Sequence[str]) -> list[str]:
    """The subcommand words of a podman/skopeo argument list (``["secret", "rm"]``, ``["copy"]``).

    Global options and their values (skopeo's ``--override-os linux``) are passed over.
    """
    for i, arg in enumerate(args):
        if arg in _GROUPS:
            return [arg, *args[i + 1:i + 2]]
        if arg in _SUBCOMMANDS:
            return [arg]
    return []


def failure_output(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed run said, briefly: skopeo's fatal lines, else the tails of its output.

    (With ``--debug`` skopeo's output is long; the ``level=fatal`` line is the error.)
    """
    fatal = [ln for ln in (proc.stderr or "").splitlines() if "level=fatal" in ln]
    if fatal:
        return "\n".join(fatal)
    return ((proc.stderr or "")[-3000:] + (proc.stdout or "")[-1000:]).strip()


def classify_failure(what: str, proc: subprocess.CompletedProcess[str], *,
                     talks_to_registry: bool) -> ModelGateError:
    """The error for a failed run (its output already redacted), by what the output says."""
    output = failure_output(proc)
    message = f"{what} failed (exit {proc.returncode}):\n{output}"
    if not talks_to_registry:
        return ToolError(message)
    low = output.lower()
    if any(m in low for m in _AUTH_MARKERS) and "manifest unknown" not in low:
        return RegistryAuthError(
            "the registry refused the request: unauthorized (HTTP 401/403). " + message,
            field="username/password",
            fix="check the registry credentials (and that the account may push to this "
                "repository)")
    if any(m in low for m in _NOT_FOUND_MARKERS):
        return RegistryNotFound(message)
    if any(m in low for m in _TRANSIENT_MARKERS):
        return TransientRegistryError(message, fix="retry later; check the registry's health")
    return ToolError(message)


def run_container_tool(tool: str, args: Sequence[str], *, secrets: Iterable[str] = (),
                       timeout: float | None = None, check: bool = True,
                       input: str | None = None, executable: str | None = None,
                       what: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` (``podman`` or ``skopeo``) with ``args`` and return the finished process.

    ``executable`` replaces the tool's name on PATH (a configured podman binary). ``input`` goes
    to its stdin (how a secret's value reaches ``podman secret create``). ``what`` names the
    command in errors (default: the tool and its subcommand, ``podman secret rm``). On failure, with
    ``check`` (the default) a classified error is raised; without it the failed process is
    returned for the caller to judge. Either way its stdout and stderr have every one of
    ``secrets`` replaced by ``***``; a successful run's output is data and is left as it is.
    Errors are raised without a chained cause, so no traceback carries unredacted output.
    """
    if tool not in INSTALL_HINTS:
        raise ValueError(f"not a container tool: {tool}")
    words = subcommand(args)
    what = what or " ".join([executable or tool, *words])
    proc = run_tool([executable or tool, *args], timeout=timeout, input=input, check=False,
                    what=what, install_hint=INSTALL_HINTS[tool])
    if proc.returncode == 0:
        return proc
    secrets = list(secrets)
    failed = subprocess.CompletedProcess(proc.args, proc.returncode,
                                         redact(proc.stdout or "", secrets),
                                         redact(proc.stderr or "", secrets))
    if not check:
        return failed
    registry = tool == "skopeo" or (bool(words) and words[0] in _REGISTRY_VERBS)
    raise classify_failure(what, failed, talks_to_registry=registry)
