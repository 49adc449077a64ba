"""The checks Galaxy and Automation Hub apply to the built collection (issue 19).

``scripts/sanity.sh`` builds the collection from the tracked files, installs it under an
``ansible_collections/modelgate/pipeline`` of its own and runs ``ansible-test sanity`` there;
galaxy-importer then imports the same tarball, its own ansible-test step off (sanity is the
test above). Both use the controller virtualenv's tools (requirements/controller.txt).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# the only entry certification allows here: the collection is Apache-2.0, not GPLv3
ALLOWED_IGNORES = {"validate-modules:missing-gplv3-license"}
IGNORE_NOTICE = re.compile(
    r"Ignore files skip ansible-test sanity tests, found ignore-2\.\d+\.txt with \d+ statement")


@pytest.fixture(scope="module")
def sanity(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``scripts/sanity.sh`` run: its output and the tarball it built."""
    tmp = tmp_path_factory.mktemp("certification")
    dist = tmp / "dist"
    dist.mkdir()
    env = {**os.environ, "MODELGATE_SANITY_BIN": str(BIN), "MODELGATE_SANITY_DIST": str(dist)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "sanity.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3000, check=False)
    tarballs = sorted(dist.glob("modelgate-pipeline-*.tar.gz"))
    return {"proc": proc, "tarball": tarballs[0] if tarballs else dist / "missing", "tmp": tmp}


def test_ansible_test_sanity_passes_on_the_built_collection(sanity):
    proc = sanity["proc"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-12000:]
    assert "Running sanity test" in out
    assert 'Required program "' not in out, "a sanity test was skipped for a missing tool"


def _declared_minors() -> list[str]:
    """The ansible-core minor versions meta/runtime.yml admits, up to the installed one."""
    import ansible

    spec = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
    low = re.fullmatch(r">=\s*2\.(\d+)(\.\d+)?", spec.strip())
    assert low, f"requires_ansible {spec!r}: expected a lower bound '>=2.N.M'"
    high = int(ansible.__version__.split(".")[1])
    return [f"2.{n}" for n in range(int(low.group(1)), high + 1)]


def test_ignore_files_hold_only_what_certification_allows():
    minors = _declared_minors()
    files = sorted((REPO / "tests" / "sanity").glob("ignore-*.txt"))
    assert [f.name for f in files] == sorted(f"ignore-{m}.txt" for m in minors)
    for path in files:
        for line in path.read_text().splitlines():
            entry = line.split("#", 1)[0].split()
            if not entry:
                continue
            target, check = entry[0], entry[1]
            assert check in ALLOWED_IGNORES, f"{path.name}: {line}"
            assert (REPO / target).is_file(), f"{path.name}: {target} does not exist"


def test_galaxy_importer_accepts_the_tarball(sanity):
    tarball = sanity["tarball"]
    assert tarball.is_file(), (sanity["proc"].stdout + sanity["proc"].stderr)[-4000:]
    config = sanity["tmp"] / "galaxy-importer.cfg"
    config.write_text("[galaxy-importer]\nRUN_ANSIBLE_TEST = False\n")
    env = {**os.environ, "GALAXY_IMPORTER_CONFIG": str(config),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "galaxy_importer.main", str(tarball)],
                          cwd=sanity["tmp"], env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    problems = [line for line in out.splitlines()
                if re.match(r"\s*(ERROR|WARNING|CRITICAL)\b", line)
                and not IGNORE_NOTICE.search(line)]
    # The one notice left is the importer's note that tests/sanity/ignore-*.txt exist; what
    # they hold is checked above (only entries certification allows).
    assert not problems, "\n".join(problems)
    assert "Importer processing completed successfully" in out, out[-4000:]
