"""Two hosts: the controller here, the GPU host a fresh Debian 12 container, reached over a
real non-local connection (``containers.podman.podman``).

The container starts from the debootstrapped image of ``scripts/fresh-host.sh`` with nothing
of this machine in it. Everything it needs comes through the play: the provision stage unpacks
the modelgate package and the requirement files there and builds the tool virtualenvs (the
torch CPU wheel and the network's CA bundle are ``toolchain_pip_files`` of the inventory,
copied by the play); the model is generated there, quantized there, pushed to the registry
that runs there, served and measured there. The controller keeps the run directory: every
record comes back as a module result, the measurements are fetched. A second run changes
nothing on the GPU host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, play_outcome, run_playbook, runner_text

pytestmark = [pytest.mark.e2e]

HOST = "gpu-host"
HOME = "/opt/modelgate"
SECRET = "Tw0-H0sts-Registry-Passw0rd-41c9"


def _podman(*args: str, check: bool = True, timeout: float = 600) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh Debian 12 container, running, with its own network namespace."""
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make provision installs it)")
    home = Path(os.environ.get("MODELGATE_FRESH_HOME", REPO / ".modelgate" / "fresh-host"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "fresh-host.sh"), "prepare"],
                          env={**os.environ, "MODELGATE_FRESH_HOME": str(home)},
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    made = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    name = f"modelgate-target-{uuid.uuid4().hex[:8]}"
    _podman("run", "-d", "--name", name, "--network", "slirp4netns", "--shm-size", "4g",
            made["image"], "sleep", "infinity")
    try:
        yield {"name": name, **made}
    finally:
        _podman("rm", "-f", name, check=False)


def _inventory(tmp: Path, target: dict[str, str]) -> Path:
    """The embedded default's settings, with its hosts replaced by the container."""
    inv = tmp / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    local = yaml.safe_load((REPO / "inventories/local/group_vars/all/main.yml").read_text())
    wheels = sorted(str(p) for p in Path(target["wheels"]).glob("*.whl"))
    local.update({
        "modelgate_project_dir": str(REPO),
        "modelgate_home": HOME,
        "modelgate_store_dir": "/var/lib/modelgate/store",
        "modelgate_runs_dir": str(tmp / "runs"),
        # the candidate every x86-64 build of vLLM CPU serves, against the baseline
        "modelgate_variants": [{"name": "bf16", "recipe": "none", "baseline": True},
                               {"name": "w8a8", "recipe": "w8a8-int8"}],
        # as on a GPU host with one GPU: one variant at a time, the order flipped every round
        # (the local end-to-end tests cover the side-by-side design)
        "modelgate_validate_design": "sequential",
        "toolchain_pip_files": wheels + ([target["ca"]] if target.get("ca") else []),
    })
    (inv / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(local))
    group = {"hosts": {HOST: None}}
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "hosts": {
            "localhost": {"ansible_connection": "local",
                          "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
            HOST: {"ansible_connection": "containers.podman.podman",
                   "ansible_host": target["name"],
                   "ansible_python_interpreter": f"{HOME}/venvs/modelgate/bin/python",
                   "modelgate_bootstrap_python": "/usr/bin/python3"},
        },
        "children": {g: group for g in ("modelgate_hosts", "registry_hosts",
                                        "quantize_hosts", "serve_hosts")},
    }}))
    return inv


@pytest.fixture(scope="module")
def first_run(target: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, float]:
    tmp = tmp_path_factory.mktemp("two-hosts")
    inv = _inventory(tmp, target)
    t0 = time.monotonic()
    runner = run_playbook(tmp, "first", inventory=inv, extravars={
        "modelgate_runs_dir": str(tmp / "runs"), "modelgate_registry_password": SECRET,
        "modelgate_registry_username": "ci"})
    return tmp, inv, runner, time.monotonic() - t0


def _exists_on_target(target: dict[str, str], path: str) -> bool:
    proc = subprocess.run(["podman", "exec", target["name"], "test", "-e", path],
                          capture_output=True, check=False)
    return proc.returncode == 0


def test_the_controller_holds_a_complete_run(target: dict[str, str],
                                             first_run: tuple[Path, Path, Any, float]) -> None:
    tmp, __, runner, wall = first_run
    print(f"two-host first run: {wall:.0f} s")
    run_dir = (tmp / "runs" / "latest").resolve()
    gate_path = run_dir / "gate.json"
    assert gate_path.is_file(), play_outcome(runner)
    gate = json.loads(gate_path.read_text())
    assert (runner.rc == 0) == gate["passed"], play_outcome(runner)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [v["name"] for v in manifest["variants"]] == ["bf16", "w8a8"]
    # the source model was generated on the GPU host, and digested there
    source = manifest["inputs"]["source_model"]
    assert source["digest"].startswith("sha256:") and _exists_on_target(target, source["path"])
    for variant in ("bf16", "w8a8"):
        vdir = run_dir / variant
        quant = json.loads((vdir / "quantize.json").read_text())
        # the checkpoint stays in the GPU host's store; the record says where
        assert _exists_on_target(target, quant["path"] + "/config.json")
        assert not Path(quant["path"]).exists() or quant["path"] == source["path"]
        car = json.loads((vdir / "modelcar.json").read_text())
        assert car["verify"]["ok"] and car["ref_by_digest"].startswith("127.0.0.1:5000/")
        deploy = json.loads((vdir / "deploy.json").read_text())
        assert deploy["readiness"]["ok"] and _exists_on_target(target, deploy["model_dir"])
        # measured there, fetched here
        results = json.loads((vdir / "guidellm" / "results.json").read_text())
        assert all(r["requests"]["successful"] > 0 for r in results["rates"])
        assert (vdir / "guidellm" / "report.json").is_file()
        assert json.loads((vdir / "accuracy" / "results.json").read_text())["tasks"]
        assert (vdir / "server-r1.log").stat().st_size > 0
    assert (run_dir / "w8a8" / "quantize" / "recipe.yaml").is_file()
    assert json.loads((run_dir / "w8a8" / "fidelity.json").read_text())["baseline"] == "bf16"
    assert [v["candidate"] for v in gate["verdicts"]] == ["w8a8"]
    assert list(ET.parse(run_dir / "junit.xml").getroot().iter("testcase"))
    assert (run_dir / "report.html").stat().st_size > 10_000
    # the registry password given to the play reached neither the output nor the run
    assert SECRET not in runner_text(runner)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_second_run_changes_nothing_on_the_gpu_host(
        first_run: tuple[Path, Path, Any, float]) -> None:
    tmp, inv, __, __ = first_run
    t0 = time.monotonic()
    runner = run_playbook(tmp, "second", inventory=inv,
                          tags="provision,model,quantize,modelcar",
                          extravars={"modelgate_runs_dir": str(tmp / "runs")})
    print(f"two-host second run (provision..modelcar): {time.monotonic() - t0:.0f} s")
    assert runner.rc == 0, play_outcome(runner)
    changed = []
    for ev in runner.events:
        data = ev.get("event_data", {})
        if ev.get("event") not in ("runner_on_ok", "runner_item_on_ok"):
            continue
        if not data.get("res", {}).get("changed") or data.get("host") != HOST:
            continue
        # a new run is opened on the controller (delegated tasks report the play's host)
        if data.get("task_action") == "modelgate.pipeline.run_dir":
            continue
        changed.append(f"{data.get('task')} ({data.get('task_action')})")
    assert not changed, f"changed on a second run: {changed}"
    actions = {ev.get("event_data", {}).get("task_action") for ev in runner.events}
    assert {"modelgate.pipeline.quantize", "modelgate.pipeline.job_progress",
            "modelgate.pipeline.modelcar", "modelgate.pipeline.tool_venv"} <= actions
    # the checkpoints' digests are remembered from the first run: no checkpoint byte is read
    pushed = [ev["event_data"]["res"] for ev in runner.events
              if ev.get("event") == "runner_item_on_ok"
              and ev["event_data"].get("task_action") == "modelgate.pipeline.modelcar"]
    assert len(pushed) == 2 and all(r["checkpoint_bytes_read"] == 0 for r in pushed), [
        (r.get("variant"), r.get("checkpoint_bytes_read")) for r in pushed]
