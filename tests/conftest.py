"""Shared test configuration: where the repository and the tool virtualenvs are."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))


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
                 verbosity: int = 0) -> Any:
    """Run a playbook of the repo on the local inventory through ansible-runner.

    Runs go to ``tmp/runs``; the store and the virtualenvs are the project's own.
    """
    import ansible_runner

    private = tmp / f"runner-{name}"
    private.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    return ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(REPO),
        playbook=playbook,
        inventory=str(REPO / "inventories" / "local"),
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


def runner_text(runner: Any) -> str:
    """The play's whole output."""
    return runner.stdout.read() if hasattr(runner.stdout, "read") else str(runner.stdout)
