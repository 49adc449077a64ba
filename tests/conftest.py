"""Shared test configuration: where the repository and the tool virtualenvs are."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
