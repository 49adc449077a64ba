"""The quick start on a machine ModelGate has never seen, run by ``make test``.

``scripts/fresh-host.sh demo`` debootstraps a Debian 12 root file system (once, cached as a
podman image), copies the committed checkout into a new container from it and runs ``make demo``
there: the Python venv module, the controller virtualenv, the system packages, the tool
virtualenvs, the model, every stage. Only a pip download cache, the CPU torch wheel and the
network's CA bundle come from this host (the script says why). The test asserts a verdict was
reached: set-up and play both ran, the play's exit is the gate's, and the last lines say what
was decided for each candidate.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

# set-up (about 4 minutes here with a warm network) plus the play (about 11)
TIMEOUT_S = 3600


def test_make_demo_reaches_a_verdict_on_a_fresh_debian(repo_root: Path, tmp_path: Path) -> None:
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make provision installs it)")
    env = {**os.environ, "MODELGATE_FRESH_HOME": str(tmp_path / "fresh")}
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "fresh-host.sh"), "demo"],
                          cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    out = proc.stdout + proc.stderr
    phases = dict(re.findall(r"^@@ (\w+) \d+ (\d+)$", out, re.M))
    assert phases.get("bootstrap") == "0" and phases.get("provision") == "0", out[-6000:]
    assert "demo" in phases, out[-6000:]
    # a verdict, whichever it is: one sentence per candidate, then the bottom line
    assert "Verdict:" in out, out[-6000:]
    sentences = re.findall(r"^  (\w[\w.-]*): (refused|passed|not shipped|left out)", out, re.M)
    assert {name for name, __ in sentences} >= {"w8a8"}, out[-4000:]
    refused = any(word in ("refused", "not shipped") for __, word in sentences)
    assert (phases["demo"] != "0") == refused, out[-4000:]
    assert proc.returncode == int(phases["demo"]), out[-2000:]
    assert re.search(r"^set-up: make bootstrap \d+ s \(exit 0\), provision \d+ s \(exit 0\)$",
                     out, re.M), out[-2000:]
