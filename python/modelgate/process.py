"""Supervised background processes (the local registry, local vLLM servers) and their waits.

A process is started in its own session, so it outlives the Ansible task that started it, with
a pidfile, a log file and a small JSON state file that records how it was started: a later call
with the same fingerprint finds it running and changes nothing. :func:`wait_http` is the one
readiness wait (the local registry, vLLM here and under podman); :func:`run_tool` runs a tool
to completion.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelgate.errors import ModelGateError, ToolError


@dataclass
class ProcessSpec:
    """How to start one supervised process."""

    name: str
    argv: list[str]
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    fingerprint: str = ""
    # cores the process (and everything it starts) may run on; empty: any
    cpu_affinity: list[int] = field(default_factory=list)

    @property
    def pidfile(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def statefile(self) -> Path:
        return self.state_dir / f"{self.name}.json"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_state(spec: ProcessSpec) -> dict | None:
    """Return the recorded state of a running process, or None when it is not running."""
    if not spec.statefile.exists():
        return None
    state = json.loads(spec.statefile.read_text())
    if not pid_alive(int(state["pid"])):
        return None
    return state


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def start(spec: ProcessSpec, extra_env: Mapping[str, str] | None = None) -> dict:
    """Start the process unless one with the same fingerprint runs; return its state.

    The returned dict has ``changed``: False when the running process already matched.
    A running process with another fingerprint is stopped first.
    """
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(spec)
    if state and state.get("fingerprint") == spec.fingerprint:
        return {**state, "changed": False}
    if state:
        stop(spec)
    env = {**os.environ, **spec.env, **(extra_env or {})}
    with spec.logfile.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {spec.argv}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
            preexec_fn=affinity_preexec(spec.cpu_affinity),
        )
    state = {
        "pid": proc.pid,
        "argv": spec.argv,
        "fingerprint": spec.fingerprint,
        "log": str(spec.logfile),
        "started_at": time.time(),
    }
    spec.pidfile.write_text(f"{proc.pid}\n")
    spec.statefile.write_text(json.dumps(state, indent=2))
    return {**state, "changed": True}


def affinity_preexec(cpus: list[int] | None) -> Callable[[], None] | None:
    """preexec_fn that puts the child (and so its children) on ``cpus``; None for any."""
    if not cpus:
        return None
    wanted = set(cpus)

    def _apply() -> None:
        os.sched_setaffinity(0, wanted)

    return _apply


def session_threads(sid: int) -> list[int]:
    """Every thread of every process in session ``sid`` (a supervised process started its
    own session: it and all it started)."""
    tids: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # state, ppid, pgrp, session
                continue
            tids += [int(t.name) for t in (proc / "task").iterdir()]
        except (OSError, IndexError, ValueError):
            continue  # it exited meanwhile
    return tids


def pin_session(sid: int, cpus: list[int]) -> int:
    """Move every thread of session ``sid`` onto ``cpus``; returns how many were moved."""
    moved = 0
    for tid in session_threads(sid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, set(cpus))
            moved += 1
    return moved


def stop(spec: ProcessSpec, timeout: float = 30.0) -> bool:
    """Stop the process group (SIGTERM, then SIGKILL); return True when one was running."""
    state = read_state(spec)
    was_running = state is not None
    if state:
        pid = int(state["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        # reap it if it is our own child
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    for p in (spec.pidfile, spec.statefile):
        p.unlink(missing_ok=True)
    return was_running


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file ('' when absent)."""
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def probe_http(url: str, timeout: float = 3.0, context: ssl.SSLContext | None = None
               ) -> tuple[int | None, str]:
    """``GET url`` once: ``(status, "")`` when anything answers (error statuses too),
    ``(None, reason)`` when nothing does."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return int(resp.status), ""
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", None) or exc)


class EndpointNotReady(ToolError):
    """An endpoint that did not become ready: what serves it stopped first (``ended``), or
    it did not answer in time. ``reason`` says which, in a few words."""

    def __init__(self, message: str, *, url: str, reason: str, ended: bool,
                 field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message, field=field, fix=fix)
        self.url = url
        self.reason = reason
        self.ended = ended


def process_ended(spec: ProcessSpec) -> Callable[[], str | None]:
    """For :func:`wait_http`: ``"exited"`` once the supervised process is no longer running."""
    return lambda: None if read_state(spec) is not None else "exited"


def wait_http(
    url: str,
    timeout: float,
    spec: ProcessSpec | None = None,
    interval: float = 1.0,
    *,
    accept: Callable[[int], bool] | None = None,
    ended: Callable[[], str | None] | None = None,
    what: str | None = None,
    log: Path | None = None,
) -> float:
    """Poll ``url`` until it answers 2xx (or a status ``accept`` takes); return the seconds waited.

    The one readiness wait. After each unanswered poll ``ended()`` is asked whether what serves
    the endpoint has stopped (it returns why, e.g. ``"exited"``); if so the wait ends at once
    with :class:`EndpointNotReady` (``ended`` True) naming ``what`` and carrying the last lines
    of ``log``. A supervised ``spec`` supplies all three (its process, name and log). Past
    ``timeout`` seconds: :class:`EndpointNotReady` with ``ended`` False and the last error.
    """
    if spec is not None:
        ended = ended or process_ended(spec)
        what = what or spec.name
        log = log or spec.logfile
    accept = accept or (lambda status: 200 <= status < 300)
    start_t = time.monotonic()
    while True:
        status, error = probe_http(url, timeout=5.0)
        if status is not None and accept(status):
            return time.monotonic() - start_t
        last_error = error or f"HTTP {status}"
        why = ended() if ended is not None else None
        if why:
            tail = f" Last log lines:\n{log_tail(log)}" if log is not None else ""
            raise EndpointNotReady(
                f"{what or 'the server'} {why} before {url} answered.{tail}",
                url=url, reason=why, ended=True,
                fix=f"read the whole log: {log}" if log is not None else None)
        if time.monotonic() - start_t >= timeout:
            raise EndpointNotReady(
                f"{url} did not answer within {timeout:.0f}s (last error: {last_error})",
                url=url, reason=f"did not answer {url} within {timeout:.0f}s", ended=False,
                fix="raise the timeout, or read the log" + (f" {log}" if log else ""))
        time.sleep(interval)


def run_tool(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             cwd: str | None = None, log: Path | None = None,
             timeout: float | None = None, input: str | None = None, check: bool = True,
             what: str | None = None, install_hint: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; raise ToolError with its output's tail when it fails.

    ``what`` names the command in errors (default: the executable). A tool that is not
    installed is a ModelGateError (``install_hint`` says how to get it), one that runs past
    ``timeout`` seconds a ToolError. With ``check`` False a failed run is returned, not raised.
    """
    what = what or argv[0]
    if shutil.which(argv[0]) is None:
        raise ModelGateError(f"{argv[0]} is not installed", field=Path(argv[0]).name,
                             fix=install_hint or f"install {Path(argv[0]).name}, or give "
                                                 "its full path")
    full_env = {**os.environ, **(env or {})}
    proc = None
    try:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as f:
                proc = subprocess.run(list(argv), stdout=f, stderr=subprocess.STDOUT,
                                      text=True, env=full_env, cwd=cwd, timeout=timeout,
                                      input=input, check=False)
            output = log_tail(log, 40)
        else:
            proc = subprocess.run(list(argv), capture_output=True, text=True, env=full_env,
                                  cwd=cwd, timeout=timeout, input=input, check=False)
            output = (proc.stdout or "")[-4000:] + (proc.stderr or "")[-4000:]
    except subprocess.TimeoutExpired:
        pass  # raised below, outside this block: the exception holds output that may be secret
    if proc is None:
        raise ToolError(f"{what} did not finish within {timeout:g}s",
                        fix="raise the timeout, or find out what it waits for (a registry, "
                            "a lock, a prompt)")
    if check and proc.returncode != 0:
        raise ToolError(
            f"{what} exited with {proc.returncode}:\n{output}",
            fix=f"see the full log: {log}" if log else None,
        )
    return proc


def as_dict(spec: ProcessSpec) -> dict:
    """Plain-data form of a spec (paths as strings)."""
    d = asdict(spec)
    d["state_dir"] = str(spec.state_dir)
    return d
