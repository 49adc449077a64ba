"""The gpu_host Molecule scenario, run by ``make test``: the role on a host without GPUs.

Runs ``molecule test -s gpu_host``: a fresh Debian 12 container (scripts/fresh-host.sh's
image) reached over containers.podman.podman stands in for a remote host without GPUs. The
role must report its preflight (no RHEL, no NVIDIA GPU on the PCI bus), skip every GPU step
with the reason, install podman, change nothing on the second run (Molecule's idempotence),
refuse the same host when GPUs are required, and keep a registry password out of every line
of output when its login fails. The RHEL and GPU steps cannot run here (no
RHEL image, no GPU); modelgate.gpu_host's decisions are unit-tested on recorded outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_molecule

pytestmark = pytest.mark.needs_tools


def test_molecule_gpu_host(repo_root: Path) -> None:
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make provision installs it)")
    out = run_molecule("gpu_host")
    assert "Idempotence completed successfully" in out or "idempotence" in out.lower(), out[-4000:]
    assert "GPU steps skipped (no NVIDIA GPU on the PCI bus)" in out, out[-4000:]
    # the scenario's registry password went to a login that failed, and into no line of output
    assert "molecule-not-a-real-password" not in out
