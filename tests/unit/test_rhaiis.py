"""modelgate.rhaiis: the container description, GPU checks and fingerprints (no podman run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.rhaiis import (
    CACHE_DIR,
    FINGERPRINT_LABEL,
    add_unit_label,
    build_container,
    cdi_gpu_names,
    check_gpu_count,
    gpu_devices,
    log_excerpt,
    read_cdi_specs,
    readiness_host,
    secret_digest,
    secret_name,
    vllm_command,
)
from modelgate.serving import MODELCAR_MOUNT, derive_serving_args, render_quadlet

CONFIG = {
    "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"],
    "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6,
    "hybrid_override_pattern": "M-M*M-", "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 64, "mamba_num_heads": 32, "mamba_head_dim": 16, "ssm_state_size": 32,
    "n_groups": 2, "conv_kernel": 4, "expand": 2, "vocab_size": 4096,
    "max_position_embeddings": 4096, "dtype": "bfloat16",
}


def _args(device: str = "cuda", **over: object):
    return derive_serving_args(CONFIG, device=device, gpu_memory_gib=80 if device == "cuda"
                               else 2, overrides={"max-model-len": 1024, **over},
                               weight_bytes=5 * 1024**2)


def _container(**kw: object):
    base = {"image": "registry.example/rhaiis:1", "image_id": "a" * 64,
            "modelcar": "reg/m@sha256:" + "b" * 64, "modelcar_id": "c" * 64,
            "served_name": "tiny", "port": 18500, "devices": ["nvidia.com/gpu=all"]}
    base.update(kw)
    args = base.pop("args", None) or _args()
    return build_container(args, **base)  # type: ignore[arg-type]


def test_command_is_the_quadlet_exec_line() -> None:
    """Both ways of running the server (podman_container, quadlet) pass the same arguments."""
    args = _args()
    command = vllm_command(args, "tiny")
    unit = render_quadlet(args, image="img", modelcar="mc", served_name="tiny")
    exec_line = next(ln for ln in unit.splitlines() if ln.startswith("Exec="))
    assert exec_line == "Exec=" + " ".join(command)
    assert command[:2] == ["--model", f"{MODELCAR_MOUNT}/models"]
    assert command[command.index("--served-model-name") + 1] == "tiny"
    assert command[command.index("--mamba-ssm-cache-dtype") + 1] == "float32"


def test_selinux_labelling_is_off_as_red_hat_runs_rhaiis_unless_a_policy_is_chosen() -> None:
    c = _container()
    assert c.podman_container_params()["security_opt"] == ["label=disable"]
    assert "--security-opt=label=disable" in c.podman_run_argv()
    unit = render_quadlet(_args(), image="img", modelcar="mc", served_name="tiny",
                          security_opt=["label=disable"])
    assert "SecurityLabelDisable=true" in unit.splitlines()
    own = _container(security_opt=[])
    assert own.podman_container_params()["security_opt"] == []
    assert not any(a.startswith("--security-opt") for a in own.podman_run_argv())
    assert own.fingerprint != c.fingerprint  # changing the policy replaces the container
    unit = render_quadlet(_args(), image="img", modelcar="mc", served_name="tiny",
                          security_opt=["label=type:container_runtime_t"])
    assert "PodmanArgs=--security-opt=label=type:container_runtime_t" in unit.splitlines()


def test_container_shape() -> None:
    """Port, modelcar mount, cache volume, IPC and the fingerprint label are all there."""
    c = _container(bind_address="127.0.0.1")
    params = c.podman_container_params()
    assert params["publish"] == ["127.0.0.1:18500:8000"]
    assert params["mount"] == [f"type=image,source={'c' * 64},destination={MODELCAR_MOUNT}"]
    assert params["volume"] == [f"modelgate-vllm-cache:{CACHE_DIR}"]
    assert params["ipc"] == "host"
    assert params["device"] == ["nvidia.com/gpu=all"]
    assert params["label"] == {FINGERPRINT_LABEL: c.fingerprint}
    assert params["image"] == "a" * 64  # the ID: a re-tagged image cannot slip in
    argv = c.podman_run_argv()
    assert "--ipc=host" in argv and argv[-len(c.command):] == c.command


@pytest.mark.parametrize("change", [
    {"image_id": "d" * 64},                     # a new image digest
    {"modelcar_id": "e" * 64},                  # another model
    {"port": 18501},
    {"devices": ["nvidia.com/gpu=0"]},
    {"environment": {"VLLM_LOGGING_LEVEL": "DEBUG"}},
    {"secret_digests": {"HF_TOKEN": "f" * 64}},  # a rotated token
    {"args": "max-num-seqs"},
])
def test_fingerprint_changes_with_what_defines_the_server(change: dict) -> None:
    """Same inputs give the same fingerprint; any input that matters changes it."""
    same = _container()
    assert same.fingerprint == _container().fingerprint
    if change == {"args": "max-num-seqs"}:
        change = {"args": _args(**{"max-num-seqs": 8})}
    assert _container(**change).fingerprint != same.fingerprint


def test_container_name_does_not_enter_the_fingerprint() -> None:
    """The name is identity, not configuration."""
    assert _container(name="a").fingerprint == _container(name="b").fingerprint


def test_tokens_are_refused_in_the_environment() -> None:
    """A token must go through secrets, where podman keeps it out of inspect and the unit."""
    with pytest.raises(ModelGateError, match="HF_TOKEN looks like a secret"):
        _container(environment={"HF_TOKEN": "x"})
    c = _container(secrets={"HF_TOKEN": "modelgate-hf-token"})
    assert c.podman_container_params()["secrets"] == [
        "modelgate-hf-token,type=env,target=HF_TOKEN"]


def test_secret_names_and_digests() -> None:
    """Secret names are podman-safe; the digest depends on the value and is not the value."""
    assert secret_name("HF_TOKEN") == "modelgate-hf-token"
    d = secret_digest("modelgate-hf-token", "hf_abc")
    assert re.fullmatch(r"[0-9a-f]{64}", d) and "hf_abc" not in d
    assert d != secret_digest("modelgate-hf-token", "hf_abd")


CDI = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
       "devices": [{"name": n} for n in ("all", "1", "0", "GPU-1234")]}


def test_cdi_names_sorted_numerically() -> None:
    """Index devices first, in numeric order; other kinds are ignored."""
    names = cdi_gpu_names([CDI, {"kind": "vendor.com/nic", "devices": [{"name": "0"}]}])
    assert names == ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=GPU-1234",
                     "nvidia.com/gpu=all"]


def test_read_cdi_specs(tmp_path: Path) -> None:
    """YAML specs are read from the given directories; missing directories are skipped."""
    (tmp_path / "nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: '0'\n")
    specs = read_cdi_specs([tmp_path, tmp_path / "missing"])
    assert cdi_gpu_names(specs) == ["nvidia.com/gpu=0"]


AVAILABLE = ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"]


@pytest.mark.parametrize(("gpus", "available", "expected"), [
    ("all", AVAILABLE, ["nvidia.com/gpu=all"]),
    ([1], AVAILABLE, ["nvidia.com/gpu=1"]),
    ([0, 1], AVAILABLE, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]),
    ("none", [], []),
    ("all", [], "no CDI GPU devices"),
    ([2], AVAILABLE, "nvidia.com/gpu=2 do not exist"),
    ([], AVAILABLE, "empty list"),
    ("some", AVAILABLE, "'all', 'none' or a list"),
])
def test_gpu_devices(gpus: object, available: list[str], expected: object) -> None:
    """Devices are checked against the host's CDI list, with messages that name the cause."""
    if isinstance(expected, str):
        with pytest.raises(ModelGateError, match=re.escape(expected)):
            gpu_devices(gpus, available)  # type: ignore[arg-type]
    else:
        assert gpu_devices(gpus, available) == expected  # type: ignore[arg-type]


def test_gpu_count_too_small() -> None:
    """tensor x pipeline parallelism must fit the chosen GPUs ('all' counts the host's)."""
    tp2 = {"tensor-parallel-size": 2}
    assert check_gpu_count(["nvidia.com/gpu=all"], AVAILABLE, tp2) == 2  # "all" is an alias
    with pytest.raises(ModelGateError, match="but 1 is chosen"):
        check_gpu_count(["nvidia.com/gpu=all"], ["nvidia.com/gpu=0", "nvidia.com/gpu=all"], tp2)
    assert check_gpu_count(["nvidia.com/gpu=0", "nvidia.com/gpu=1"], AVAILABLE, tp2) == 2
    with pytest.raises(ModelGateError, match=r"GPU count too small.* 2 GPUs, but 1 is chosen"):
        check_gpu_count(["nvidia.com/gpu=0"], AVAILABLE, tp2)
    with pytest.raises(ModelGateError, match="= 4 GPUs"):
        check_gpu_count(["nvidia.com/gpu=0", "nvidia.com/gpu=1"], AVAILABLE,
                        {**tp2, "pipeline-parallel-size": 2})
    assert check_gpu_count([], [], tp2) == 0  # the CPU image has no GPUs to count


def test_unit_label_and_readiness_host() -> None:
    """The fingerprint label lands in [Container]; 0.0.0.0 is checked through loopback."""
    unit = add_unit_label("[Unit]\n[Container]\nImage=x\n", FINGERPRINT_LABEL, "sha256:1")
    assert "[Container]\nLabel=io.modelgate.fingerprint=sha256:1\nImage=x" in unit
    assert readiness_host("0.0.0.0") == "127.0.0.1"
    assert readiness_host("10.0.0.5") == "10.0.0.5"


def test_log_excerpt_names_the_vllm_error() -> None:
    """The raised exception wins over vLLM's generic 'EngineCore failed to start'."""
    log = "\n".join(["INFO starting", "ERROR EngineCore failed to start.",
                     "Traceback (most recent call last):", '  File "x.py", line 1',
                     "AssertionError: Attempted to load weight (torch.Size([768, 256])) into "
                     "parameter (torch.Size([1536, 256]))", "INFO bye"])
    err, tail = log_excerpt(log, lines=2)
    assert err is not None and err.startswith("AssertionError: Attempted to load weight")
    assert tail.splitlines() == [log.splitlines()[-2], "INFO bye"]


def test_log_excerpt_prefers_the_worker_root_cause() -> None:
    """vLLM's multiprocess lines: the worker's RuntimeError, not the engine's wrapper."""
    log = "\n".join([
        "(APIServer pid=1) WARNING 11-30 04:53:44 [system_utils.py:255] Found ulimit of 20000",
        "(Worker pid=35) ERROR 11-30 04:54:05 [multiproc_executor.py:953] RuntimeError: start "
        "(0) + length (1536) exceeds dimension size (768).",
        "(EngineCore pid=23) ERROR 11-30 04:54:07 [core.py:1510] Exception: WorkerProc "
        "initialization failed due to an exception in a background process.",
        "Exception: WorkerProc initialization failed due to an exception in a background process.",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ])
    err, __ = log_excerpt(log)
    assert err == "RuntimeError: start (0) + length (1536) exceeds dimension size (768)."
