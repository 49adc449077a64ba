"""Serving arguments, the local server spec and the CLI: pure logic, no vLLM."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from modelgate.cli import main
from modelgate.errors import ModelGateError
from modelgate.memory_plan import VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
from modelgate.serving import (
    ServingArgs,
    derive_serving_args,
    first_error_line,
    local_server_spec,
    render_quadlet,
    start_local_server,
    startup_timeout_s,
)

# Published config facts of nvidia/NVIDIA-Nemotron-Nano-9B-v2 (no weights needed).
NEMOTRON_NANO_9B_V2 = {
    "architectures": ["NemotronHForCausalLM"],
    "model_type": "nemotron_h",
    "auto_map": {"AutoConfig": "configuration_nemotron_h.NemotronHConfig",
                 "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM"},
    "hidden_size": 4480,
    "num_hidden_layers": 56,
    "intermediate_size": 15680,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 131072,
    "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
    "ssm_state_size": 128,
    "conv_kernel": 4,
    "n_groups": 8,
    "mamba_num_heads": 128,
    "mamba_head_dim": 80,
    "torch_dtype": "bfloat16",
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
}
# The W4A16 (GPTQ, group 64) checkpoint of that geometry measured 6.0 GiB (DESIGN field notes).
W4A16_BYTES = int(6.0 * 1024**3)


def _model_dir(tmp_path: Path, config: dict) -> Path:
    d = tmp_path / "nano9b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_hybrid_custom_code_model_on_h100():
    args = derive_serving_args(NEMOTRON_NANO_9B_V2, gpu_memory_gib=80,
                               served_model_name="nano9b")
    argv = args.to_argv()
    # dashes: vLLM 0.32 registers --mamba-ssm-cache-dtype (underscores are rewritten)
    assert argv[argv.index("--mamba-ssm-cache-dtype") + 1] == "float32"
    assert "--trust-remote-code" in argv
    assert argv[argv.index("--max-model-len") + 1] == "32768"  # capped below 131072
    assert argv[argv.index("--max-num-seqs") + 1] == "56"
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    assert argv[argv.index("--served-model-name") + 1] == "nano9b"
    assert "--quantization" not in argv and "--enforce-eager" not in argv
    for flag in args.args:
        assert args.reasons[flag], flag
    assert "auto_map" in args.reasons["trust-remote-code"]


def test_quantized_checkpoint_needs_no_quantization_flag():
    config = {**NEMOTRON_NANO_9B_V2, "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized"}}
    args = derive_serving_args(config, gpu_memory_gib=80, weight_bytes=W4A16_BYTES)
    assert "--quantization" not in args.to_argv()
    assert "compressed-tensors" in args.reasons["quantization"]
    assert args.args["max-num-seqs"] == 64  # more room than BF16's 56


def test_weight_bytes_come_from_safetensors_headers(tmp_path):
    d = _model_dir(tmp_path, NEMOTRON_NANO_9B_V2)
    # a minimal safetensors file: 8-byte header length, JSON header, data
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1024, 1024],
                               "data_offsets": [0, 2 * 1024 * 1024]}}).encode()
    with (d / "model.safetensors").open("wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + bytes(2 * 1024 * 1024))
    args = derive_serving_args(d, gpu_memory_gib=80)
    assert args.plan is not None
    assert args.plan.weight_bytes == 2 * 1024 * 1024
    assert args.plan.weight_source.startswith("checkpoint tensors")
    assert args.args["served-model-name"] == "nano9b"


def test_overrides_win_and_feed_the_plan():
    args = derive_serving_args(NEMOTRON_NANO_9B_V2, gpu_memory_gib=80, overrides={
        "max_model_len": 8192, "max_num_seqs": 40, "enable_chunked_prefill": True,
        "trust-remote-code": False})
    argv = args.to_argv()
    assert argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv[argv.index("--max-num-seqs") + 1] == "40"
    assert "--enable-chunked-prefill" in argv
    assert "--trust-remote-code" not in argv  # False removes a flag
    assert args.plan is not None and args.plan.max_model_len == 8192
    assert args.reasons["max-model-len"] == "user override"


def test_override_that_cannot_fit_is_an_error():
    with pytest.raises(ModelGateError) as err:
        derive_serving_args(NEMOTRON_NANO_9B_V2, gpu_memory_gib=80,
                            overrides={"max-num-seqs": 512})
    # 80 GiB x vLLM's default 0.92, engine version unknown: three Mamba states per sequence
    assert "512" in str(err.value) and "at most 58" in str(err.value)


def test_max_model_len_beyond_the_model_is_an_error():
    with pytest.raises(ModelGateError) as err:
        derive_serving_args(NEMOTRON_NANO_9B_V2, overrides={"max-model-len": 262144})
    assert err.value.field == "max_model_len"


def test_gpu_without_memory_leaves_max_num_seqs_to_vllm():
    args = derive_serving_args(NEMOTRON_NANO_9B_V2)
    assert args.plan is None
    assert "max-num-seqs" not in args.args
    assert args.args["gpu-memory-utilization"] == VLLM_DEFAULT_GPU_MEMORY_UTILIZATION == 0.92


def test_cpu_sets_eager_and_an_explicit_kv_cache():
    args = derive_serving_args(NEMOTRON_NANO_9B_V2, device="cpu", gpu_memory_gib=64,
                               weight_bytes=W4A16_BYTES, overrides={"max-model-len": 4096})
    assert args.args["enforce-eager"] is True
    assert "gpu-memory-utilization" not in args.args
    assert args.plan is not None
    kv = args.args["kv-cache-memory-bytes"]
    assert kv >= args.plan.cache_bytes_needed and kv % (1024**2) == 0
    assert args.args["max-num-seqs"] <= 32


def test_to_argv_forms():
    args = ServingArgs()
    args.set("--enforce_eager", True, "r")
    args.set("max_num_seqs", 8, "r")
    args.set("gone", None, "r")
    args.set("compilation-config", {"level": 0}, "r")
    assert args.to_argv() == ["--enforce-eager", "--max-num-seqs", "8",
                              "--compilation-config", '{"level":0}']


def test_spec_fingerprint_tracks_model_args_and_env(tmp_path):
    d = _model_dir(tmp_path, NEMOTRON_NANO_9B_V2)
    args = derive_serving_args(d, gpu_memory_gib=80)

    def mk(a=args, env=None):
        return local_server_spec(d, "nano9b", 18450, sys.executable, a, tmp_path / "state",
                                 env=env)

    spec = mk()
    assert spec.argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert spec.argv[spec.argv.index("--port") + 1] == "18450"
    assert spec.name == "vllm-18450" and spec.base_url == "http://127.0.0.1:18450"
    assert mk().fingerprint == spec.fingerprint  # deterministic
    other = derive_serving_args(d, gpu_memory_gib=80, overrides={"max-model-len": 4096})
    assert mk(other).fingerprint != spec.fingerprint
    assert mk(env={"VLLM_LOGGING_LEVEL": "DEBUG"}).fingerprint != spec.fingerprint
    (d / "config.json").write_text(json.dumps({**NEMOTRON_NANO_9B_V2, "vocab_size": 131073}))
    assert mk().fingerprint != spec.fingerprint


def test_cpu_threads_bind_omp(tmp_path):
    d = _model_dir(tmp_path, NEMOTRON_NANO_9B_V2)
    args = derive_serving_args(d, device="cpu", gpu_memory_gib=64, weight_bytes=W4A16_BYTES,
                               overrides={"max-model-len": 2048})
    spec = local_server_spec(d, "n", 18451, sys.executable, args, tmp_path, cpu_threads=2)
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert spec.cpu_affinity == []  # the rest of the server may run anywhere


def test_cpu_cores_put_the_whole_server_on_them(tmp_path):
    d = _model_dir(tmp_path, NEMOTRON_NANO_9B_V2)
    args = derive_serving_args(d, device="cpu", gpu_memory_gib=64, weight_bytes=W4A16_BYTES,
                               overrides={"max-model-len": 2048})
    spec = local_server_spec(d, "n", 18452, sys.executable, args, tmp_path, cpu_threads=1,
                             cpu_cores=[3, 2])
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "2,3"
    assert spec.cpu_affinity == [2, 3]
    other = local_server_spec(d, "n", 18452, sys.executable, args, tmp_path, cpu_cores=[0])
    assert other.fingerprint != spec.fingerprint


def test_a_cpu_server_the_host_cannot_hold_is_refused_before_it_starts(monkeypatch):
    from modelgate import serving

    args = derive_serving_args(NEMOTRON_NANO_9B_V2, device="cpu", gpu_memory_gib=64,
                               weight_bytes=W4A16_BYTES, overrides={"max-model-len": 2048})
    need = W4A16_BYTES + args.args["kv-cache-memory-bytes"] + serving.CPU_SERVER_RUNTIME_BYTES
    monkeypatch.setattr(serving, "host_memory_gib", lambda: need / 1024**3 + 0.5)
    serving.check_host_memory(args, 8001)  # fits
    monkeypatch.setattr(serving, "host_memory_gib", lambda: need / 1024**3 - 0.5)
    with pytest.raises(ModelGateError) as err:
        serving.check_host_memory(args, 8001)
    assert err.value.field == "serve_local_memory_gib"
    assert "port 8001" in err.value.message and "sequential" in err.value.fix


def test_port_held_by_another_process_is_refused(tmp_path):
    d = _model_dir(tmp_path, NEMOTRON_NANO_9B_V2)
    args = derive_serving_args(d, gpu_memory_gib=80)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = local_server_spec(d, "n", port, sys.executable, args, tmp_path / "state")
        with pytest.raises(ModelGateError) as err:
            start_local_server(spec, 5)
    assert f"port {port}" in str(err.value) and err.value.field == "port"
    assert not spec.statefile.exists()  # nothing was started


def test_first_error_line_prefers_the_raised_exception():
    log = "\n".join([
        "INFO 11-30 loading",
        "(EngineCore pid=1) ERROR 11-30 [core.py] EngineCore failed to start.",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: User-specified max_model_len (10000000) is greater than the derived "
        "max_model_len (max_position_embeddings=4096)",
    ])
    assert first_error_line(log).startswith("ValueError: User-specified max_model_len")
    assert first_error_line("a\nERROR 1 boom\nb") == "ERROR 1 boom"
    assert first_error_line("all fine") is None
    pydantic = "\n".join([
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
        "  Value error, User-specified max_model_len (10000000) is greater than the derived",
        "    For further information visit https://errors.pydantic.dev/2.14/v/value_error",
        "(APIServer pid=1) exiting",
    ])
    assert first_error_line(pydantic) == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig "
        "Value error, User-specified max_model_len (10000000) is greater than the derived")


def test_startup_timeout_scales_with_weights():
    assert startup_timeout_s(0, "cpu") == 180
    assert startup_timeout_s(1024**3, "cpu") == 210
    # the GPU bound sits well above the 257 s a 9.4 GiB FP8 variant took to start on an H200
    # beside two others (the old 180 + 5 s/GiB gave it 227 s and failed it)
    assert startup_timeout_s(16 * 1024**3, "cuda") == 420 + 10 * 16
    assert startup_timeout_s(int(9.38 * 1024**3), "cuda") > 1.5 * 257


def test_first_error_line_skips_vllms_ulimit_warning():
    # the start of a vLLM 0.25 log on the H200 (bench/results/h200-2026-12-02b): a WARNING
    # that quotes an OSError is not why a server failed
    log = ("(APIServer pid=1153) WARNING 12-02 05:30:29 [system_utils.py:299] Found ulimit of "
           "20000 and failed to automatically increase with error current limit exceeds "
           "maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too many "
           "open files`. Consider increasing with ulimit -n\n"
           "(EngineCore pid=1516) INFO 12-02 05:33:55 [core.py:337] init engine took 155.40 s")
    assert first_error_line(log) is None


def test_cli_plan_prints_terms_and_exits_1_when_override_cannot_fit(tmp_path, capsys):
    d = _model_dir(tmp_path, NEMOTRON_NANO_9B_V2)
    rc = main(["plan", "--model", str(d), "--gpu-memory-gib", "141"],
              modules=["modelgate.serving"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["args"]["max-num-seqs"] == 112
    assert {t["name"] for t in out["plan"]["terms"]} >= {"weights", "kv_cache_per_token"}
    rc = main(["plan", "--model", str(d), "--gpu-memory-gib", "80", "--max-num-seqs", "300"],
              modules=["modelgate.serving"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out["field"] == "max_num_seqs" and "300" in out["error"]


def test_cli_serve_status_and_stop_without_a_server(tmp_path, capsys):
    rc = main(["serve", "status", "--port", "18452", "--state-dir", str(tmp_path)],
              modules=["modelgate.serving"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["running"] is False
    rc = main(["serve", "stop", "--port", "18452", "--state-dir", str(tmp_path)],
              modules=["modelgate.serving"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["changed"] is False


def _unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse a systemd/quadlet unit: section -> [(key, value)], keeping repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, __, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def test_render_quadlet_from_the_same_serving_args():
    args = derive_serving_args(NEMOTRON_NANO_9B_V2, gpu_memory_gib=80, overrides={
        "compilation-config": {"cudagraph_capture_sizes": [1, 8]}})
    unit = render_quadlet(
        args, image="registry.redhat.io/rhaiis/vllm-cuda-rhel9:3.2.1",
        modelcar="quay.io/acme/nano9b-w4a16@sha256:abc", served_name="nano9b", port=18480,
        gpus=[0, 1], environment={"VLLM_LOGGING_LEVEL": "INFO"}, secrets={"HF_TOKEN": "hf-token"})
    sections = _unit_sections(unit)
    assert set(sections) == {"Unit", "Container", "Service", "Install"}
    container = sections["Container"]

    def values(key):
        return [v for k, v in container if k == key]

    assert values("Image") == ["registry.redhat.io/rhaiis/vllm-cuda-rhel9:3.2.1"]
    assert values("AddDevice") == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert values("PodmanArgs") == ["--ipc=host"]
    assert values("PublishPort") == ["0.0.0.0:18480:8000"]
    assert values("Mount") == [
        "type=image,source=quay.io/acme/nano9b-w4a16@sha256:abc,destination=/mnt/modelcar"]
    assert values("Secret") == ["hf-token,type=env,target=HF_TOKEN"]
    assert "HF_TOKEN" not in " ".join(values("Environment"))
    exec_line = values("Exec")[0]
    # the same arguments as every other target, in systemd quoting
    assert "--model /mnt/modelcar/models" in exec_line
    assert "--mamba-ssm-cache-dtype float32" in exec_line
    assert "--max-num-seqs 56" in exec_line and "--trust-remote-code" in exec_line
    assert '--compilation-config "{\\"cudagraph_capture_sizes\\":[1,8]}"' in exec_line


def test_render_quadlet_refuses_secrets_in_environment():
    args = derive_serving_args(NEMOTRON_NANO_9B_V2, gpu_memory_gib=80)
    with pytest.raises(ModelGateError) as err:
        render_quadlet(args, image="i", modelcar="m", served_name="n",
                       environment={"HF_TOKEN": "hf_secret"})
    assert err.value.field == "environment"
    unit = render_quadlet(args, image="i", modelcar="m", served_name="n")
    assert "AddDevice=nvidia.com/gpu=all" in unit
