"""The serve_rhaiis Molecule scenario, run by ``make test``.

Runs ``molecule test -s serve_rhaiis`` from the repository root with the controller
virtualenv's molecule. The scenario builds (or finds cached) the vLLM CPU stand-in image, pushes
modelcars to the local registry (127.0.0.1:5000, started by ``make provision``), serves the
generated model under podman, re-runs the role (Molecule's idempotence step: nothing may
change), sends a completion and checks each bad input, then tears down.

Needs: ``MODELGATE_QUANTIZE_PYTHON`` (set by scripts/pytest.sh; it generates the test model),
podman, debootstrap and the local registry. Run it under ``flock /tmp/modelgate-heavy.lock``
where several people share the machine: it holds a vLLM server for about a minute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_molecule, tool_path

pytestmark = pytest.mark.needs_tools


def test_molecule_serve_rhaiis(repo_root: Path) -> None:
    """The scenario passes: serve, idempotent re-run, completion, bad inputs, teardown."""
    tool_path("MODELGATE_QUANTIZE_PYTHON")
    for tool in ("podman", "debootstrap", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make provision installs it)")
    from modelgate.registry import probe_v2

    if probe_v2("127.0.0.1:5000") is None:
        pytest.skip("the local registry 127.0.0.1:5000 is not running (make provision)")
    out = run_molecule("serve_rhaiis")
    # the idempotence step ran and found nothing changed on the second converge
    assert "Idempotence completed successfully" in out or "idempotence" in out.lower(), out[-4000:]
    assert "a broken checkpoint was served" not in out
    # the scenario's token (serve_rhaiis_secrets) reached vLLM but no line of output
    assert "molecule-not-a-real-token" not in out
