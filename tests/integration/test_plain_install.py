"""``pip install ./python`` alone gives a modelgate whose every command runs.

A clean virtualenv with nothing but the package and what it declares (no controller
requirements, no tools): every command's ``--help``, then one real call each of ``gate``,
``preflight``, ``plan`` and ``loadtest-normalize`` on stored files, none of them a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
# pip's own output is not the test's subject; its failure is reported with its tail
PIP_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def plain_modelgate(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``modelgate`` script of a fresh virtualenv with only ``pip install ./python``."""
    env_dir = tmp_path_factory.mktemp("plain") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    # a copy, not the checkout: the build writes build/ and egg-info beside the sources
    src = shutil.copytree(repo_root / "python", env_dir.parent / "src",
                          ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", str(src)],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return env_dir / "bin" / "modelgate"


def _run(exe: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd)


def _commands(exe: Path) -> list[str]:
    out = _run(exe, "--help").stdout
    line = next(x for x in out.splitlines() if x.strip().startswith("{"))
    return line.strip().strip("{}").split(",")


def test_every_command_has_help(plain_modelgate: Path) -> None:
    commands = _commands(plain_modelgate)
    assert {"gate", "preflight", "plan", "loadtest-normalize", "verdict"} <= set(commands)
    for command in commands:
        proc = _run(plain_modelgate, command, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout, (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])


def test_real_calls_on_stored_files(plain_modelgate: Path, tmp_path: Path) -> None:
    report = DATA / "guidellm" / "report_ci_tiny.json"
    for variant in ("bf16", "w4a16"):
        out = tmp_path / variant / "guidellm" / "results.json"
        out.parent.mkdir(parents=True)
        proc = _run(plain_modelgate, "loadtest-normalize", "--report", str(report),
                    "--variant", variant, "--write", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(out.read_text())["rates"], out.read_text()[:500]

    # the same measurements on both sides: judged, not crashed (0 pass, 1 fail, 3 inconclusive)
    proc = _run(plain_modelgate, "gate", "--baseline", str(tmp_path / "bf16"),
                "--candidate", str(tmp_path / "w4a16"), "--out", str(tmp_path / "gate.json"))
    assert proc.returncode in (0, 1, 3) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((tmp_path / "gate.json").read_text())["checks"]

    config = DATA / "nemotron_nano_9b_v2" / "config.json"
    # no torch and no vLLM here: the kernel check says what it could not look at
    proc = _run(plain_modelgate, "preflight", "--model-config", str(config), "--recipe", "w4a16",
                "--group-size", "64", "--backend", "vllm-cpu")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert found["ok"] and found["kernels"]["path"] is None, found

    proc = _run(plain_modelgate, "plan", "--model", str(config.parent), "--gpu-memory-gib", "80")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout), proc.stdout[:500]


def test_bad_input_is_a_json_error_not_a_traceback(plain_modelgate: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "report.json"
    garbage.write_text("{not json")
    proc = _run(plain_modelgate, "loadtest-normalize", "--report", str(garbage),
                "--variant", "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
