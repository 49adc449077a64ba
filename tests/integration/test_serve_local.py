"""The local vLLM server, for real: start, readiness, idempotent restart, port clash, stop.

Needs the serve virtualenv and a small model:

- ``MODELGATE_SERVE_PYTHON``: python of a virtualenv with vLLM (e.g. /tmp/probe/serve/bin/python)
- ``MODELGATE_TEST_MODEL``: a model directory vLLM serves on this machine (the tiny hybrid)
- ``MODELGATE_TEST_PORT``: optional, default 18410

On a CPU-only machine this takes about a minute (vLLM CPU start-up with --enforce-eager).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.process import pid_alive
from modelgate.serving import (
    check_ready,
    derive_serving_args,
    local_server_spec,
    local_server_status,
    start_local_server,
    startup_timeout_s,
    stop_local_server,
)

pytestmark = pytest.mark.needs_tools

SERVE_PYTHON = os.environ.get("MODELGATE_SERVE_PYTHON")
TEST_MODEL = os.environ.get("MODELGATE_TEST_MODEL")
PORT = int(os.environ.get("MODELGATE_TEST_PORT", "18410"))


@pytest.fixture(scope="module")
def server_spec(tmp_path_factory):
    if not SERVE_PYTHON or not TEST_MODEL:
        pytest.skip("set MODELGATE_SERVE_PYTHON (vLLM virtualenv python) and "
                    "MODELGATE_TEST_MODEL (a small model directory) to run this test")
    args = derive_serving_args(TEST_MODEL, device="cpu", gpu_memory_gib=4,
                               overrides={"max-model-len": 1024})
    spec = local_server_spec(TEST_MODEL, "tiny", PORT, SERVE_PYTHON, args,
                             tmp_path_factory.mktemp("serve"))
    yield spec
    stop_local_server(spec)


def test_start_ready_idempotent_clash_stop(server_spec, tmp_path):
    spec = server_spec
    timeout = startup_timeout_s(args_weight_bytes(spec), "cpu")
    t0 = time.monotonic()
    first = start_local_server(spec, timeout)
    startup = time.monotonic() - t0
    print(f"vLLM start-up to ready: {startup:.1f}s (server start {first['startup_s']}s)")
    assert first["changed"] is True
    assert first["readiness"]["ok"] is True
    assert first["readiness"]["completion_text"]
    assert "tiny" in first["readiness"]["models"]
    assert "--mamba-ssm-cache-dtype" in first["argv"]

    # the same model and arguments: found running, not restarted
    second = start_local_server(spec, timeout)
    assert second["changed"] is False
    assert second["pid"] == first["pid"]
    assert pid_alive(first["pid"])

    # an independent check from outside the start path
    ready = check_ready(first["base_url"], "tiny", timeout=10)
    assert ready.ok and ready.completion_latency_s > 0

    # another server (other state dir, so not ours) on the same port is refused
    other = local_server_spec(spec.model_dir, "tiny", PORT, SERVE_PYTHON,
                              derive_serving_args(spec.model_dir, device="cpu",
                                                  gpu_memory_gib=4),
                              tmp_path / "other")
    with pytest.raises(ModelGateError) as err:
        start_local_server(other, 30)
    assert f"port {PORT}" in str(err.value)
    assert local_server_status(other)["running"] is False

    stopped = stop_local_server(spec)
    assert stopped["changed"] is True
    assert not pid_alive(first["pid"])
    assert local_server_status(spec)["running"] is False
    with socket.socket() as s:  # the port is free again
        assert s.connect_ex(("127.0.0.1", PORT)) != 0
    assert stop_local_server(spec)["changed"] is False


def test_startup_failure_names_vllm_error(tmp_path):
    if not SERVE_PYTHON or not TEST_MODEL:
        pytest.skip("set MODELGATE_SERVE_PYTHON and MODELGATE_TEST_MODEL")
    # a max-model-len far above max_position_embeddings makes vLLM refuse the config early
    args = derive_serving_args(TEST_MODEL, device="cpu", gpu_memory_gib=4)
    args.set("max-model-len", 10_000_000, "test: invalid on purpose")
    spec = local_server_spec(TEST_MODEL, "tiny", PORT + 1, SERVE_PYTHON, args, tmp_path)
    with pytest.raises(ModelGateError) as err:
        start_local_server(spec, 240)
    message = str(err.value)
    assert "vLLM error:" in message
    assert "max_model_len (10000000)" in message  # vLLM's own reason, not just its type
    assert str(spec.logfile) in message
    assert Path(spec.logfile).exists()
    assert local_server_status(spec)["running"] is False


def args_weight_bytes(spec) -> int:
    """The weights' size on disk, for the start-up timeout."""
    return sum(p.stat().st_size for p in Path(spec.model_dir).glob("*.safetensors"))


# vLLM's own start-up step, then the extension file the process really mapped
_LOADED = r"""
from vllm.platforms.cpu import CpuPlatform
CpuPlatform.import_kernels()
import json, torch
print(json.dumps(sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps")
                         if "/vllm/_C" in line})))
print(hasattr(torch.ops._C, "cpu_gemm_wna16"), hasattr(torch.ops._C, "onednn_scaled_mm"))
"""


def test_kernel_library_decision_matches_what_vllm_loads_here() -> None:
    """cpu_kernels.detect names the library vLLM maps on this CPU, with the ops it registers."""
    import json
    import subprocess

    from modelgate.cpu_kernels import detect

    if not SERVE_PYTHON:
        pytest.skip("set MODELGATE_SERVE_PYTHON (vLLM virtualenv python)")
    lib = detect(SERVE_PYTHON)
    proc = subprocess.run([SERVE_PYTHON, "-c", _LOADED], capture_output=True, text=True,
                          timeout=300, check=True)
    mapped, ops = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(mapped) == [lib.library], (lib, proc.stdout)
    wna16, onednn = (word == "True" for word in ops.split())
    assert wna16 == ("cpu_gemm_wna16" in lib.ops) and onednn == ("onednn_scaled_mm" in lib.ops)
