"""Shared test configuration: where the repository and the tool virtualenvs are."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))


def load_make_run() -> Any:
    """``tests/data/gate/make_run.py``, the builder of synthetic run directories the gate tests
    share (a data script, not a package module, so it is loaded from its path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_run", REPO / "tests" / "data" / "gate" / "make_run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool_path(env_var: str) -> Path:
    """The tool path named by ``env_var`` (set by scripts/pytest.sh), or skip with the reason."""
    value = os.environ.get(env_var, "")
    if not value or not Path(value).exists():
        pytest.skip(f"{env_var} is not set to an existing path (run through `make test`)")
    return Path(value)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO


def require_tools() -> None:
    """Skip unless the tool virtualenvs made by the provision stage are there."""
    for var in ("MODELGATE_QUANTIZE_PYTHON", "MODELGATE_SERVE_PYTHON", "MODELGATE_BENCH_BIN_DIR"):
        tool_path(var)


def run_playbook(tmp: Path, name: str, playbook: str = "site.yml", *,
                 extravars: dict[str, Any] | None = None, tags: str | None = None,
                 verbosity: int = 0, inventory: Path | None = None,
                 cmdline: str | None = None) -> Any:
    """Run a playbook of the repo through ansible-runner (default: on the local inventory).

    Runs go to ``tmp/runs``; on the local inventory the store and the virtualenvs are the
    project's own. ``cmdline`` adds ansible-playbook options (e.g. ``--check``).
    """
    import ansible_runner

    private = tmp / f"runner-{name}"
    private.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    return ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(REPO),
        playbook=playbook,
        inventory=str(inventory or REPO / "inventories" / "local"),
        cmdline=cmdline,
        extravars={"modelgate_runs_dir": str(tmp / "runs"), **(extravars or {})},
        envvars={
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".modelgate" / "collections"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        tags=tags,
        verbosity=verbosity,
        quiet=True,
        settings={"suppress_env_files": True},
    )


def ansible_expression(expression: str, tmp: Path, **extravars: str) -> Any:
    """The value of one Jinja expression as ansible-playbook evaluates it, with the project's
    collection (its filters) and ``extravars``; run outside the repo's ansible.cfg."""
    import json
    import subprocess

    import yaml

    play = tmp / "expression.yml"
    play.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Evaluate", "ansible.builtin.debug": {
            "msg": "{{ (" + expression + ") | to_json }}"}}]}]))
    env = {"ANSIBLE_COLLECTIONS_PATH": str(REPO / ".modelgate" / "collections"),
           "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
           "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(play)]
    for key, value in extravars.items():
        argv += ["-e", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    msg = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    return json.loads(msg) if isinstance(msg, str) else msg


def run_molecule(scenario: str, timeout: float = 3600) -> str:
    """``molecule test -s <scenario>`` from the repository root with the controller
    virtualenv's tools; asserts it passed and returns its whole output."""
    import subprocess

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".modelgate" / "collections"),
           "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}
    proc = subprocess.run([str(bin_dir / "molecule"), "test", "-s", scenario], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"molecule test failed (exit {proc.returncode}):\n{out[-8000:]}"
    return out


def runner_text(runner: Any) -> str:
    """The play's whole output."""
    return runner.stdout.read() if hasattr(runner.stdout, "read") else str(runner.stdout)


def play_failures(runner: Any) -> str:
    """Each failed task of a run: host, task and its ``msg``, one block per failure.

    Put in front of an assertion's message, it shows why a play failed before the missing
    artifact the assertion then trips over.
    """
    blocks = []
    for ev in runner.events:
        if ev.get("event") not in ("runner_on_failed", "runner_item_on_failed",
                                   "runner_on_unreachable"):
            continue
        data = ev.get("event_data", {})
        if data.get("ignore_errors"):
            continue
        res = data.get("res", {})
        msg = res.get("msg") or res.get("stderr") or res.get("reason") or res
        blocks.append(f"{ev['event']} [{data.get('host')}] {data.get('task')}: {msg}")
    if not blocks:
        return f"no task failed (runner status {getattr(runner, 'status', '?')})"
    return "the play failed:\n" + "\n".join(blocks)


def play_outcome(runner: Any, tail: int = 3000) -> str:
    """The play's failed tasks, then the tail of its output: an assertion message."""
    return play_failures(runner) + "\n--- output tail ---\n" + runner_text(runner)[-tail:]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CI, a test that would skip fails: a missing tool is a missing install step.

    A ``live_cluster`` test may skip: no Kubernetes API server can run on these machines, so
    without a KUBECONFIG it is reported as skipped (never as passed).
    """
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("live_cluster"):
        return
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true ({reason}): CI installs every tool the "
                           "suite needs, so a skip here is a missing set-up step")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """The same for a whole module skipped at import (``pytest.importorskip``)."""
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true ({reason}): a missing set-up step"
