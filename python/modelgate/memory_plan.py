"""Accelerator memory plan for a vLLM server: how many sequences fit, and why.

vLLM spends ``gpu_memory_gib x gpu_memory_utilization`` on four things: the weights, activations
(plus CUDA graphs and the CUDA context), the attention KV cache (grows with every token of every
running sequence) and, for a hybrid Mamba/attention model, a fixed recurrent state per running
sequence (conv state + SSM state of every Mamba layer, independent of its length). The plan
computes each term from the model's geometry, says how it was computed, and derives how many
sequences of ``max_model_len`` tokens fit at once: the ``--max-num-seqs`` that cannot run out
of cache. It is an estimate made before any server starts; vLLM's own profile at start-up
(``Maximum concurrency for N tokens per request``) is the measurement to compare it with.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from modelgate.errors import ModelGateError
from modelgate.geometry import (
    CACHE_KINDS,
    ModelGeometry,
    UnsupportedModelError,
    index_layer_mismatches,
    read_safetensors_index,
)

GiB = 1024**3
# Bytes per element of the dtype names used in config.json and on vLLM's command line.
DTYPE_BYTES: dict[str, float] = {
    "float32": 4, "fp32": 4, "float": 4,
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "fp8_ds_mla": 1,
    "int8": 1, "uint8": 1,
}
# vLLM's default scheduler cap (SchedulerConfig.max_num_seqs on a GPU).
DEFAULT_MAX_NUM_SEQS_CAP = 256


@dataclass
class MemoryTerm:
    """One line of the plan: a quantity, its value and how it was computed."""

    name: str
    bytes: int
    formula: str

    @property
    def gib(self) -> float:
        """The value in GiB, rounded for display."""
        return round(self.bytes / GiB, 3)


@dataclass
class MemoryPlan:
    """The memory budget of one serving configuration and the concurrency it allows."""

    gpu_memory_gib: float
    gpu_memory_utilization: float
    max_model_len: int
    kv_cache_dtype: str
    mamba_cache_dtype: str
    mamba_ssm_cache_dtype: str
    budget_bytes: int
    weight_bytes: int
    weight_source: str
    activation_reserve_bytes: int
    cache_bytes: int  # what is left for KV cache + Mamba state
    kv_bytes_per_token: int
    mamba_state_bytes_per_sequence: int
    sliding_window_bytes_per_sequence: int
    bytes_per_sequence: int  # one sequence at max_model_len, as vLLM pages it
    bytes_per_sequence_ideal: int  # the same without paging overhead
    paging: dict[str, Any]
    max_sequences_fit: int
    max_num_seqs: int
    max_num_seqs_cap: int
    requested_max_num_seqs: int | None
    max_model_len_fit: int  # longest single sequence the cache can hold
    terms: list[MemoryTerm] = field(default_factory=list)

    @property
    def cache_bytes_needed(self) -> int:
        """Cache the chosen ``max_num_seqs`` sequences of ``max_model_len`` tokens need."""
        return self.bytes_per_sequence * max(self.max_num_seqs, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: every term with bytes, GiB and its formula."""
        data = asdict(self)
        data["terms"] = [{**asdict(t), "gib": t.gib} for t in self.terms]
        data["cache_bytes_needed"] = self.cache_bytes_needed
        return data


def dtype_bytes(dtype: str, *, field_name: str = "dtype") -> float:
    """Bytes per element of a dtype name; ModelGateError naming the field when unknown."""
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise ModelGateError(
            f"unknown dtype {dtype!r}",
            field=field_name,
            fix=f"use one of {sorted(DTYPE_BYTES)}",
        )
    return DTYPE_BYTES[key]


def model_dtype(geometry: ModelGeometry) -> str:
    """The checkpoint's compute dtype from config.json (``dtype`` or ``torch_dtype``)."""
    cfg = geometry.config
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16").removeprefix("torch.")


def count_kinds(geometry: ModelGeometry) -> dict[str, int]:
    """Number of layers of each block kind (mamba, attention, mlp, moe)."""
    counts: dict[str, int] = {}
    for kind in geometry.block_kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def tied_embeddings(geometry: ModelGeometry) -> bool:
    """Whether lm_head shares the embedding (config, else the family's default: Gemma ties)."""
    default = bool(geometry.cache.get("tie_word_embeddings_default", False))
    return bool(geometry.config.get("tie_word_embeddings", default))


def parameter_count(geometry: ModelGeometry) -> int:
    """Approximate parameter count: every linear layer plus the input embedding.

    Norms, biases and the Mamba A/D/dt vectors are a few parts per million and are left out.
    """
    linear = sum(lin.in_features * lin.out_features for lin in geometry.linear_layers)
    embedding = geometry.vocab_size * geometry.hidden_size
    tied = tied_embeddings(geometry)
    has_head = any(lin.name == "lm_head" for lin in geometry.linear_layers)
    # a tied lm_head shares the embedding's storage
    if tied and has_head:
        linear -= geometry.vocab_size * geometry.hidden_size
    return linear + embedding


def _matches(name: str, patterns: list[str]) -> bool:
    """Whether a module name matches an ignore / not-convert list entry.

    Entries are exact names, ``re:`` regular expressions (compressed-tensors), or glob
    patterns that also cover everything under the module (``model.layers.*.self_attn``).
    """
    for pat in patterns:
        pat = str(pat)
        if pat.startswith("re:"):
            if re.match(pat[3:], name):
                return True
        elif name == pat or fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(
                name, pat + ".*") or name.endswith("." + pat):
            return True
    return False


@dataclass
class QuantScheme:
    """How many bytes a quantized linear layer of ``n`` weights takes, and which are skipped."""

    method: str
    bits: float  # weight bits
    group_size: int  # elements per scale (0: per output channel); -1: no scale
    scale_bytes: float  # bytes of one scale (+ zero point)
    skip: list[str]  # module patterns that stay in the model dtype
    experts_only: bool = False  # mxfp4: only MoE expert weights are quantized

    def layer_bytes(self, lin: Any) -> float:
        """Bytes of one linear layer under this scheme."""
        n = lin.in_features * lin.out_features
        if self.group_size > 0:
            scales = n / self.group_size
        elif self.group_size == 0:
            scales = lin.out_features
        else:
            scales = 0
        return n * self.bits / 8 + scales * self.scale_bytes


_EXACT_SIZES_FIX = ("give the model directory with its *.safetensors files (their headers give "
                    "the exact weight bytes)")


def quant_scheme(geometry: ModelGeometry) -> QuantScheme | None:
    """The checkpoint's quantization as stored, from ``quantization_config``; None for none.

    MXFP4 (gpt-oss): E2M1 4-bit elements + one E8M0 byte per 32, on the MoE experts only
    (vLLM quantization/mxfp4.py; modules_to_not_convert stay BF16). FP8: 1 byte, an FP32
    scale per ``weight_block_size`` block or per output channel (quantization/fp8.py).
    GPTQ / AWQ: ``bits`` per weight, an FP16 scale and a packed zero point per
    ``group_size``. compressed-tensors: its config_groups' ``weights`` (num_bits,
    group_size / strategy) and ``ignore`` list. Anything else is refused.
    """
    qc = geometry.config.get("quantization_config") or geometry.config.get(
        "compression_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method") or qc.get("format") or "")
    skip = [str(x) for x in (qc.get("modules_to_not_convert") or qc.get("ignore")
                             or qc.get("ignored_layers") or [])]
    skip = skip or ["lm_head"]
    if method == "mxfp4":
        return QuantScheme(method, 4, 32, 1, skip, experts_only=True)
    if method == "fp8":
        block = qc.get("weight_block_size")
        size = int(block[0]) * int(block[1]) if block else 0
        return QuantScheme(method, 8, size, 4, skip)
    if method in ("gptq", "awq"):
        bits = int(qc.get("bits") or qc.get("w_bit") or 4)
        group = int(qc.get("group_size") or qc.get("q_group_size") or 128)
        return QuantScheme(method, bits, max(group, 0), 2 + bits / 8, skip)
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        weights = [g.get("weights") for g in groups.values() if isinstance(g, dict)]
        weights = [w for w in weights if isinstance(w, dict)]
        if len(weights) != 1:
            raise UnsupportedModelError(
                geometry.model_type, geometry.architecture,
                f"a compressed-tensors config with {len(weights)} weight schemes (sizing mixed "
                "schemes is not modelled)", extra_fix=_EXACT_SIZES_FIX)
        w = weights[0]
        bits = int(w.get("num_bits") or 8)
        strategy = str(w.get("strategy") or "")
        group = int(w.get("group_size") or 0) if strategy in ("group", "tensor_group") else 0
        if strategy == "tensor":
            group = -1
        scale = 1 if w.get("type") == "float" and bits == 4 else 2  # nvfp4: fp8 scales
        if w.get("symmetric") is False:
            scale += bits / 8
        return QuantScheme(method, bits, group, scale, skip)
    raise UnsupportedModelError(
        geometry.model_type, geometry.architecture,
        f"quantization_config.quant_method {method!r} (its stored size is not modelled)",
        extra_fix=_EXACT_SIZES_FIX)


def config_weight_bytes(geometry: ModelGeometry) -> tuple[int, str]:
    """Bytes the checkpoint's weights take, from config.json alone (quantization-aware).

    Linear layers in their stored format (``quant_scheme``), the embedding (and an untied
    lm_head) in the model dtype; norms and biases are left out (parts per million).
    """
    dt = model_dtype(geometry)
    elem = dtype_bytes(dt)
    scheme = quant_scheme(geometry)
    if scheme is None:
        params = parameter_count(geometry)
        return int(params * elem), f"{params:,} parameters x {elem:g} B ({dt})"
    quantized = 0
    full = geometry.vocab_size * geometry.hidden_size  # the input embedding
    total = full * elem
    tied = tied_embeddings(geometry)
    for lin in geometry.linear_layers:
        if lin.kind == "lm_head" and tied:
            continue
        n = lin.in_features * lin.out_features
        keep = (lin.kind in ("lm_head", "router", "conv1d") or _matches(lin.name, scheme.skip)
                or (scheme.experts_only and lin.kind != "moe_expert"))
        if keep:
            full += n
            total += n * elem
        else:
            quantized += n
            total += scheme.layer_bytes(lin)
    return int(total), (
        f"{quantized:,} parameters stored as {scheme.method} ({scheme.bits:g}-bit, "
        f"scale per {scheme.group_size or 'channel'}) + {full:,} in {dt}")


# Where each formula comes from (vLLM v1; file / function), shown on the plan's terms.
SRC_ATTENTION = ("vllm/v1/kv_cache_interface.py AttentionSpec.page_size_bytes: 2 x block x "
                 "kv_heads x head_size x dtype")
SRC_MLA = ("vllm/v1/kv_cache_interface.py MLAAttentionSpec: one latent of kv_lora_rank + "
           "qk_rope_head_dim per token, no separate V")
SRC_SLIDING = ("vllm/v1/kv_cache_interface.py SlidingWindowSpec.max_admission_blocks_per_request:"
               " cdiv(min(window - 1 + max_in_flight_tokens, max_model_len), block) + 1 pages; "
               "vllm/config/vllm.py VllmConfig.max_in_flight_tokens = 2 batches (async "
               "scheduling) x max_num_batched_tokens")
SRC_MAMBA2 = ("vllm/model_executor/layers/mamba/mamba_utils.py "
              "MambaStateShapeCalculator.mamba2_state_shape")
SRC_MAMBA1 = ("vllm/model_executor/layers/mamba/mamba_utils.py "
              "MambaStateShapeCalculator.mamba1_state_shape")
SRC_GDN = ("vllm/model_executor/layers/mamba/mamba_utils.py "
           "MambaStateShapeCalculator.gated_delta_net_state_shape")
SRC_PAGING = ("vllm/v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_page_size; "
              "vllm/model_executor/models/config.py HybridAttentionMambaModelConfig")
# vLLM's default chunked-prefill budget on a GPU for the OpenAI server (>= 70 GiB devices,
# vllm/engine/arg_utils.py), times the 2 batches in flight under async scheduling
# (VllmConfig.max_concurrent_batches): what a sliding-window layer holds beyond its window.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_IN_FLIGHT_TOKENS = 2 * DEFAULT_MAX_NUM_BATCHED_TOKENS

# vLLM's CacheConfig.gpu_memory_utilization default (vllm/config/cache.py: 0.92 in 0.25 and 0.32)
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
# The first vLLM release that turns prefix caching on by default for hybrid (Mamba +
# attention) and attention-free models: vllm-project/vllm#50991, merged 2026-08-04 after 0.26.0.
# Before it, ModelConfig.is_prefix_caching_supported is False for them ("still experimental").
# Checked: 0.25.0 logs enable_prefix_caching=False for Nemotron-H; 0.32.0 logs True.
VLLM_HYBRID_PREFIX_CACHING_FROM = (0, 27)


@dataclass(frozen=True)
class EngineDefaults:
    """What a vLLM version does when a flag is not given, for the terms the plan depends on."""

    version: str | None
    prefix_caching: bool
    gpu_memory_utilization: float
    reason: str


def _release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a vLLM version string such as ``0.25.0+cu130`` or ``0.32.0rc1``."""
    m = re.match(r"\s*v?(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def engine_defaults(version: str | None, geometry: ModelGeometry) -> EngineDefaults:
    """vLLM's defaults for this model at ``version`` (None: not known, the safe assumption).

    Unknown versions assume prefix caching on for a recurrent model: it charges each
    sequence three Mamba states instead of one, so the plan fits fewer sequences than the
    engine would, never more.
    """
    recurrent = any(k in ("mamba", "mamba1", "gated_delta_net") for k in geometry.block_kinds)
    util = VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    release = _release(version) if version else None
    if not recurrent:
        return EngineDefaults(version, True, util, "prefix caching on (vLLM's default for "
                              "attention-only models; it does not change their cache plan)")
    if release is None:
        return EngineDefaults(version, True, util, (
            f"vLLM version {'unknown' if not version else repr(version)}: assumed prefix "
            "caching on for this recurrent model (three Mamba states per sequence; fewer "
            "sequences than an engine with it off, never more)"))
    on = release >= VLLM_HYBRID_PREFIX_CACHING_FROM
    first = ".".join(map(str, VLLM_HYBRID_PREFIX_CACHING_FROM))
    return EngineDefaults(version, on, util, (
        f"vLLM {version}: prefix caching {'on' if on else 'off'} by default for hybrid and "
        f"attention-free models ({'from' if on else 'before'} {first}, vllm-project/vllm#50991), "
        f"so {'three Mamba states' if on else 'one Mamba state'} per sequence"))


def require_modelled(geometry: ModelGeometry) -> None:
    """Refuse a geometry with a layer kind the plan has no cache formula for."""
    unknown = sorted(set(geometry.block_kinds) - set(CACHE_KINDS))
    if unknown or geometry.family in ("unknown", "safetensors"):
        raise UnsupportedModelError(
            geometry.model_type, geometry.architecture,
            f"layer kinds {unknown or ['unknown']} (only the checkpoint's tensor list was read)")


def _cache_dtype(geometry: ModelGeometry, kv_cache_dtype: str) -> tuple[str, float]:
    dt = model_dtype(geometry) if kv_cache_dtype == "auto" else kv_cache_dtype
    return dt, dtype_bytes(dt, field_name="kv_cache_dtype")


def attention_bytes_per_token_per_layer(geometry: ModelGeometry,
                                        kv_cache_dtype: str = "auto") -> tuple[int, str]:
    """KV bytes one attention layer stores per token (0 without attention) and the formula."""
    dt, elem = _cache_dtype(geometry, kv_cache_dtype)
    if "mla" in geometry.cache:
        mla = geometry.cache["mla"]
        width = mla["kv_lora_rank"] + mla["qk_rope_head_dim"]
        return int(width * elem), (
            f"({mla['kv_lora_rank']} kv_lora_rank + {mla['qk_rope_head_dim']} "
            f"qk_rope_head_dim) x {elem:g} B ({dt}) [{SRC_MLA}]")
    att = geometry.cache.get("attention")
    if not att:
        return 0, "no attention layers"
    return int(2 * att["kv_heads"] * att["head_dim"] * elem), (
        f"2 (K,V) x {att['kv_heads']} KV heads x {att['head_dim']} head_dim x {elem:g} B "
        f"({dt}) [{SRC_ATTENTION}]")


def kv_bytes_per_token(geometry: ModelGeometry, kv_cache_dtype: str) -> tuple[int, str]:
    """KV cache bytes per token of the layers whose cache grows with the whole sequence.

    Full-attention and MLA layers; sliding-window layers hold at most their window and are
    counted per sequence instead (``sliding_window_bytes``).
    """
    require_modelled(geometry)
    kinds = count_kinds(geometry)
    n_full = kinds.get("attention", 0) + kinds.get("mla_attention", 0)
    if n_full == 0:
        return 0, "no full-attention layers: no per-token KV cache"
    per_layer, formula = attention_bytes_per_token_per_layer(geometry, kv_cache_dtype)
    return n_full * per_layer, f"{n_full} attention layers (full length) x {formula}"


def recurrent_state_bytes(geometry: ModelGeometry, mamba_cache_dtype: str,
                          mamba_ssm_cache_dtype: str) -> dict[str, tuple[int, int, str]]:
    """Per layer kind: (conv bytes, SSM/temporal bytes, formula) of ONE layer's fixed state.

    Mamba-2: conv ``(conv_kernel - 1) x (inner + 2 x n_groups x ssm_state)``, SSM
    ``heads x head_dim x ssm_state``. Gated delta net: conv ``(kernel - 1) x (2 x k_heads x
    k_dim + v_heads x v_dim)``, temporal ``v_heads x v_dim x k_dim``. Conv state in
    ``mamba_cache_dtype`` (``auto`` = the model dtype), SSM / temporal state in
    ``mamba_ssm_cache_dtype`` (``auto`` = the conv dtype): MambaStateDtypeCalculator.
    """
    conv_dt = model_dtype(geometry) if mamba_cache_dtype == "auto" else mamba_cache_dtype
    ssm_dt = conv_dt if mamba_ssm_cache_dtype == "auto" else mamba_ssm_cache_dtype
    conv_elem = dtype_bytes(conv_dt, field_name="mamba_cache_dtype")
    ssm_elem = dtype_bytes(ssm_dt, field_name="mamba_ssm_cache_dtype")
    out: dict[str, tuple[int, int, str]] = {}
    m = geometry.cache.get("mamba")
    if m and "mamba" in geometry.block_kinds:
        conv_dim = m["inner"] + 2 * m["groups"] * m["state"]
        out["mamba"] = (
            int((m["kernel"] - 1) * conv_dim * conv_elem),
            int(m["heads"] * m["head_dim"] * m["state"] * ssm_elem),
            f"conv ({m['kernel']}-1) x ({m['inner']} + 2 x {m['groups']} x {m['state']}) x "
            f"{conv_elem:g} B ({conv_dt}) | SSM {m['heads']} heads x {m['head_dim']} x "
            f"{m['state']} x {ssm_elem:g} B ({ssm_dt}) [{SRC_MAMBA2}]")
    m1 = geometry.cache.get("mamba1")
    if m1 and "mamba1" in geometry.block_kinds:
        out["mamba1"] = (
            int((m1["kernel"] - 1) * m1["inner"] * conv_elem),
            int(m1["inner"] * m1["state"] * ssm_elem),
            f"conv ({m1['kernel']}-1) x {m1['inner']} x {conv_elem:g} B ({conv_dt}) | SSM "
            f"{m1['inner']} x {m1['state']} x {ssm_elem:g} B ({ssm_dt}) [{SRC_MAMBA1}]")
    g = geometry.cache.get("gated_delta_net")
    if g and "gated_delta_net" in geometry.block_kinds:
        conv_dim = 2 * g["k_heads"] * g["k_dim"] + g["v_heads"] * g["v_dim"]
        out["gated_delta_net"] = (
            int((g["kernel"] - 1) * conv_dim * conv_elem),
            int(g["v_heads"] * g["v_dim"] * g["k_dim"] * ssm_elem),
            f"conv ({g['kernel']}-1) x (2 x {g['k_heads']} x {g['k_dim']} + {g['v_heads']} x "
            f"{g['v_dim']}) x {conv_elem:g} B ({conv_dt}) | temporal {g['v_heads']} v_heads x "
            f"{g['v_dim']} x {g['k_dim']} x {ssm_elem:g} B ({ssm_dt}) [{SRC_GDN}]")
    return out


def mamba_state_bytes(geometry: ModelGeometry, mamba_cache_dtype: str,
                      mamba_ssm_cache_dtype: str) -> tuple[int, int, str]:
    """Fixed recurrent state per sequence over all layers: (conv bytes, SSM bytes, formula).

    Covers Mamba-2 and gated delta net layers (``recurrent_state_bytes`` per layer, times
    the number of such layers); 0 for a model without them.
    """
    require_modelled(geometry)
    kinds = count_kinds(geometry)
    conv = ssm = 0
    parts_conv, parts_ssm = [], []
    for kind, (c, s, formula) in recurrent_state_bytes(
            geometry, mamba_cache_dtype, mamba_ssm_cache_dtype).items():
        n = kinds.get(kind, 0)
        conv += n * c
        ssm += n * s
        f_conv, __, f_ssm = formula.partition(" | ")
        parts_conv.append(f"{n} {kind} layers x {f_conv}")
        parts_ssm.append(f"{n} {kind} layers x {f_ssm}")
    if not parts_conv:
        return 0, 0, "no Mamba / linear-attention layers: no recurrent state"
    return conv, ssm, "; ".join(parts_conv) + " | " + "; ".join(parts_ssm)


def _cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


@dataclass
class PagedLayout:
    """How vLLM's hybrid KV cache manager pages the cache (vllm/v1/core/kv_cache_utils.py).

    Every layer's page has one size: attention blocks grow until one block of one attention
    layer is at least one recurrent layer's state (``HybridAttentionMambaModelConfig``), and
    Mamba / gated-delta-net pages are padded up to it. Layers are grouped by kind (group
    size = the fewest layers of a kind, or the most when the counts are within 1.5x); a block
    of the shared pool spans one layer of every group. A request at ``max_model_len`` holds
    ``cdiv(len, block_size)`` blocks in each full-attention group, at most its window's
    blocks (+1) in each sliding-window group, and ``mamba_states`` blocks in each recurrent
    group (3 with prefix caching, vLLM's "align" mode: running state, previous state,
    prefill checkpoint; else 1).
    """

    block_size: int
    page_bytes: int
    group_size: int
    attention_groups: int
    mamba_groups: int
    mamba_states: int
    mamba_page_bytes: int
    sliding_groups: int = 0
    sliding_window: int = 0
    in_flight_tokens: int = DEFAULT_IN_FLIGHT_TOKENS

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block of the pool takes (one page in each layer slot of a group)."""
        return self.page_bytes * self.group_size

    def sliding_blocks(self, max_model_len: int) -> int:
        """Blocks one sliding-window group holds for a sequence of ``max_model_len``."""
        if not self.sliding_groups:
            return 0
        tokens = min(self.sliding_window - 1 + self.in_flight_tokens, max_model_len)
        return _cdiv(tokens, self.block_size) + 1

    def blocks_per_sequence(self, max_model_len: int) -> int:
        """Blocks one sequence of ``max_model_len`` tokens holds."""
        return (_cdiv(max_model_len, self.block_size) * self.attention_groups
                + self.sliding_groups * self.sliding_blocks(max_model_len)
                + self.mamba_groups * self.mamba_states)

    def bytes_per_sequence(self, max_model_len: int) -> int:
        """Cache bytes one sequence of ``max_model_len`` tokens holds."""
        return self.blocks_per_sequence(max_model_len) * self.bytes_per_block

    def max_len_fit(self, cache_bytes: int) -> int:
        """Longest single sequence the cache holds."""
        fixed = self.mamba_groups * self.mamba_states
        blocks = cache_bytes // max(self.bytes_per_block, 1) - fixed
        if self.attention_groups == 0:
            if self.sliding_groups:
                blocks -= self.sliding_groups * self.sliding_blocks(1 << 30)
            return 0 if blocks < 0 else 1 << 30
        if self.sliding_groups:  # the window part is bounded; take it at its largest
            blocks -= self.sliding_groups * self.sliding_blocks(1 << 30)
        return max(0, blocks // self.attention_groups * self.block_size)

    def formula(self, max_model_len: int) -> str:
        """The per-sequence computation, spelled out."""
        sliding = ""
        if self.sliding_groups:
            sliding = (f" + {self.sliding_groups} sliding groups x "
                       f"(cdiv(min({self.sliding_window} - 1 + {self.in_flight_tokens}, "
                       f"{max_model_len}), {self.block_size}) + 1)")
        return (
            f"(cdiv({max_model_len}, block {self.block_size}) x {self.attention_groups} "
            f"full-attention groups{sliding} + {self.mamba_groups} recurrent groups x "
            f"{self.mamba_states} states) x {self.page_bytes} B page x {self.group_size} "
            f"layers per group (recurrent page {self.mamba_page_bytes} B padded to the "
            f"attention page) [{SRC_PAGING}]"
        )


def paged_layout(geometry: ModelGeometry, *, kv_cache_dtype: str = "auto",
                 mamba_cache_dtype: str = "auto", mamba_ssm_cache_dtype: str = "float32",
                 block_alignment: int = 16, prefix_caching: bool = True,
                 in_flight_tokens: int = DEFAULT_IN_FLIGHT_TOKENS) -> PagedLayout:
    """vLLM's page geometry for this model (see ``PagedLayout``)."""
    require_modelled(geometry)
    kinds = count_kinds(geometry)
    n_full = kinds.get("attention", 0) + kinds.get("mla_attention", 0)
    n_sliding = kinds.get("sliding_attention", 0)
    states = recurrent_state_bytes(geometry, mamba_cache_dtype, mamba_ssm_cache_dtype)
    n_rec = {k: kinds.get(k, 0) for k in states}
    per_layer_token, __ = attention_bytes_per_token_per_layer(geometry, kv_cache_dtype)
    if not (n_full or n_sliding):
        per_layer_token = 0
    rec_page = max((c + s for c, s, __ in states.values()), default=0)
    block = block_alignment
    if rec_page and per_layer_token:
        block = block_alignment * _cdiv(rec_page, block_alignment * per_layer_token)
    page = block * per_layer_token if per_layer_token else rec_page
    counts = [c for c in (n_full, n_sliding, *n_rec.values()) if c]
    group = min(counts) if counts else 1
    if counts and max(counts) < 1.5 * min(counts):
        group = max(counts)
    window = int(geometry.cache.get("sliding_window") or 0)
    return PagedLayout(
        block_size=block, page_bytes=page, group_size=group,
        attention_groups=_cdiv(n_full, group) if n_full else 0,
        mamba_groups=sum(_cdiv(n, group) for n in n_rec.values() if n),
        mamba_states=3 if prefix_caching else 1,
        mamba_page_bytes=rec_page,
        sliding_groups=_cdiv(n_sliding, group) if n_sliding else 0,
        sliding_window=window,
        in_flight_tokens=in_flight_tokens,
    )


def sliding_window_bytes(geometry: ModelGeometry, layout: PagedLayout, kv_cache_dtype: str,
                         max_model_len: int) -> tuple[int, str]:
    """KV bytes the sliding-window layers hold for one sequence (bounded by the window)."""
    n = count_kinds(geometry).get("sliding_attention", 0)
    if not n:
        return 0, "no sliding-window layers"
    per_layer, formula = attention_bytes_per_token_per_layer(geometry, kv_cache_dtype)
    tokens = layout.sliding_blocks(max_model_len) * layout.block_size
    return n * per_layer * tokens, (
        f"{n} sliding-window layers x {tokens} tokens (window {layout.sliding_window}, "
        f"{layout.in_flight_tokens} in-flight tokens, +1 block) x {formula} "
        f"[{SRC_SLIDING}]")


def choose_max_num_seqs(fit: int, cap: int = DEFAULT_MAX_NUM_SEQS_CAP) -> int:
    """min(cap, fit), rounded down to a multiple of 8 once it is at least 8."""
    chosen = max(0, min(cap, fit))
    return chosen // 8 * 8 if chosen >= 8 else chosen


INDEX_TOLERANCE = 0.02  # a checkpoint index disagreeing by more than this stops the plan


def cross_check_index(geometry: ModelGeometry) -> MemoryTerm | None:
    """Compare ``model.safetensors.index.json`` with the geometry; ModelGateError on mismatch.

    Its ``metadata.total_size`` against the geometry's weight bytes (``config_weight_bytes``;
    more than 2% apart stops the plan with both numbers), its tensor names against the layer
    list (``index_layer_mismatches``). None when the directory has no index.
    """
    if not geometry.model_dir:
        return None
    index = read_safetensors_index(geometry.model_dir)
    if index is None:
        return None
    problems = index_layer_mismatches(geometry, index["weight_map"])
    if problems:
        raise ModelGateError(
            f"model.safetensors.index.json disagrees with the {geometry.model_type} geometry "
            f"derived from config.json: {'; '.join(problems[:4])}",
            field="model_config",
            fix="check that config.json belongs to these weights; if it does, the family's "
            "geometry is not what modelgate models: give --max-num-seqs explicitly and file an "
            "issue")
    total = (index.get("metadata") or {}).get("total_size")
    if total is None:
        return MemoryTerm("checkpoint_index", 0, "index has no metadata.total_size; "
                          "tensor names match the layer list")
    try:
        expected, formula = config_weight_bytes(geometry)
    except UnsupportedModelError as exc:  # sized from the shards' headers instead
        return MemoryTerm("checkpoint_index", int(total), "tensor names match the layer list; "
                          f"size not compared: {exc.message.split(';')[0]}")
    total = int(total)
    has_mtp = any(n.startswith("mtp.") for n in index["weight_map"]) or bool(
        geometry.config.get("num_nextn_predict_layers"))
    gap = abs(total - expected) / max(total, 1)
    if gap > INDEX_TOLERANCE and not has_mtp:
        raise ModelGateError(
            f"the checkpoint index says the weights are {total:,} B ({total / GiB:.2f} GiB) but "
            f"the geometry from config.json gives {expected:,} B ({expected / GiB:.2f} GiB, "
            f"{formula}): {gap:.1%} apart, beyond {INDEX_TOLERANCE:.0%}",
            field="model_config",
            fix="check that config.json (and its quantization_config) belongs to these "
            "weights; if it does, give --max-num-seqs explicitly (no plan) and file an issue")
    note = (f"index total_size {total:,} B vs geometry {expected:,} B ({gap:.2%} apart"
            + (", multi-token-prediction weights included in the index and not in the "
               "geometry: size not compared" if has_mtp else "") + "); tensor names match the "
            "layer list")
    return MemoryTerm("checkpoint_index", total, note)


def plan_memory(
    geometry: ModelGeometry,
    *,
    gpu_memory_gib: float,
    max_model_len: int,
    activation_reserve_gib: float,
    gpu_memory_utilization: float = VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    kv_cache_dtype: str = "auto",
    mamba_cache_dtype: str = "auto",
    mamba_ssm_cache_dtype: str = "float32",
    weight_bytes: int | None = None,
    max_num_seqs: int | None = None,
    max_num_seqs_cap: int = DEFAULT_MAX_NUM_SEQS_CAP,
    block_alignment: int = 16,
    prefix_caching: bool = True,
    in_flight_tokens: int = DEFAULT_IN_FLIGHT_TOKENS,
) -> MemoryPlan:
    """Plan the memory of one server; ModelGateError (with the numbers) when it cannot fit.

    ``weight_bytes`` is the checkpoint's real tensor size (``geometry.weight_bytes``); without
    it, parameters x model dtype is used (right for BF16, far too high for a quantized model).
    ``max_num_seqs`` is a user override: it must fit at ``max_model_len``.
    ``block_alignment`` is vLLM's attention block granularity (16 on GPU, 128 on CPU) and
    ``prefix_caching`` whether it is on (vLLM's default): see ``paged_layout``.
    """
    if gpu_memory_gib <= 0:
        raise ModelGateError(f"gpu_memory_gib must be positive, got {gpu_memory_gib}",
                             field="gpu_memory_gib", fix="give the accelerator's memory in GiB")
    if not 0 < gpu_memory_utilization <= 1:
        raise ModelGateError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}",
            field="gpu_memory_utilization", fix="use e.g. 0.9")
    if max_model_len < 1:
        raise ModelGateError(f"max_model_len must be >= 1, got {max_model_len}",
                             field="max_model_len", fix="use e.g. 4096")

    require_modelled(geometry)
    terms: list[MemoryTerm] = []
    budget = int(gpu_memory_gib * GiB * gpu_memory_utilization)
    terms.append(MemoryTerm("budget", budget,
                            f"{gpu_memory_gib:g} GiB x gpu_memory_utilization "
                            f"{gpu_memory_utilization:g}"))

    if weight_bytes is not None:
        weights, source = int(weight_bytes), "checkpoint tensors (safetensors headers)"
        w_formula = "sum of the checkpoint's tensor sizes"
    else:
        weights, w_formula = config_weight_bytes(geometry)
        source = ("parameters x dtype" if quant_scheme(geometry) is None
                  else "parameters x stored format (config.json quantization_config)")
    terms.append(MemoryTerm("weights", weights, w_formula))
    index_term = cross_check_index(geometry)
    if index_term is not None:
        terms.append(index_term)

    reserve = int(activation_reserve_gib * GiB)
    terms.append(MemoryTerm("activation_reserve", reserve,
                            f"{activation_reserve_gib:g} GiB for activations, CUDA graphs "
                            "and the runtime's own allocations"))

    cache = budget - weights - reserve
    terms.append(MemoryTerm("cache", cache, "budget - weights - activation_reserve"))
    if cache <= 0:
        raise ModelGateError(
            f"weights ({weights / GiB:.2f} GiB) + activation reserve ({reserve / GiB:.2f} GiB)"
            f" exceed the budget of {budget / GiB:.2f} GiB ({gpu_memory_gib:g} GiB x "
            f"{gpu_memory_utilization:g}): nothing is left for the KV cache",
            field="gpu_memory_gib",
            fix="use a larger accelerator, a quantized variant, tensor parallelism, "
            "or a higher gpu_memory_utilization",
        )

    kv_token, kv_formula = kv_bytes_per_token(geometry, kv_cache_dtype)
    terms.append(MemoryTerm("kv_cache_per_token", kv_token, kv_formula))
    conv, ssm, m_formula = mamba_state_bytes(geometry, mamba_cache_dtype, mamba_ssm_cache_dtype)
    conv_formula, __, ssm_formula = m_formula.partition(" | ")
    terms.append(MemoryTerm("mamba_conv_state_per_sequence", conv, conv_formula))
    terms.append(MemoryTerm("mamba_ssm_state_per_sequence", ssm, ssm_formula or conv_formula))
    paging = paged_layout(geometry, kv_cache_dtype=kv_cache_dtype,
                          mamba_cache_dtype=mamba_cache_dtype,
                          mamba_ssm_cache_dtype=mamba_ssm_cache_dtype,
                          block_alignment=block_alignment, prefix_caching=prefix_caching,
                          in_flight_tokens=in_flight_tokens)
    sliding = sliding_window_bytes(geometry, paging, kv_cache_dtype, max_model_len)
    if sliding[0]:
        terms.append(MemoryTerm("sliding_window_kv_per_sequence", sliding[0], sliding[1]))
    ideal = kv_token * max_model_len + conv + ssm + sliding[0]
    terms.append(MemoryTerm("per_sequence_ideal", ideal,
                            f"kv_cache_per_token x {max_model_len} max_model_len + "
                            "recurrent state + sliding-window KV (no paging overhead)"))
    per_seq = paging.bytes_per_sequence(max_model_len)
    terms.append(MemoryTerm("per_sequence", per_seq, paging.formula(max_model_len)))
    if per_seq <= 0:  # a model without any cache (should not happen for an LLM)
        per_seq = 1
    fit = cache // per_seq
    len_fit = paging.max_len_fit(cache)
    if fit < 1:
        raise ModelGateError(
            f"one sequence of max_model_len {max_model_len} needs {per_seq / GiB:.2f} GiB "
            f"of cache but only {cache / GiB:.2f} GiB is left after weights "
            f"({weights / GiB:.2f} GiB) and reserve ({reserve / GiB:.2f} GiB)",
            field="max_model_len",
            fix=f"use max_model_len <= {max(len_fit, 0)}, or more memory",
        )
    if max_num_seqs is not None:
        if max_num_seqs < 1:
            raise ModelGateError(f"max_num_seqs must be >= 1, got {max_num_seqs}",
                                 field="max_num_seqs", fix="use e.g. 64")
        if max_num_seqs > fit:
            raise ModelGateError(
                f"max_num_seqs {max_num_seqs} cannot fit: {max_num_seqs} sequences x "
                f"{per_seq / GiB:.3f} GiB (max_model_len {max_model_len}) = "
                f"{max_num_seqs * per_seq / GiB:.2f} GiB, but only {cache / GiB:.2f} GiB "
                f"of cache is left ({budget / GiB:.2f} GiB budget - {weights / GiB:.2f} GiB "
                f"weights - {reserve / GiB:.2f} GiB reserve); at most {fit} fit",
                field="max_num_seqs",
                fix=f"use max_num_seqs <= {fit}, a shorter max_model_len, or more memory",
            )
        chosen = max_num_seqs
    else:
        chosen = choose_max_num_seqs(fit, max_num_seqs_cap)
    return MemoryPlan(
        gpu_memory_gib=gpu_memory_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        kv_cache_dtype=kv_cache_dtype,
        mamba_cache_dtype=mamba_cache_dtype,
        mamba_ssm_cache_dtype=mamba_ssm_cache_dtype,
        budget_bytes=budget,
        weight_bytes=weights,
        weight_source=source,
        activation_reserve_bytes=reserve,
        cache_bytes=cache,
        kv_bytes_per_token=kv_token,
        mamba_state_bytes_per_sequence=conv + ssm,
        sliding_window_bytes_per_sequence=sliding[0],
        bytes_per_sequence=per_seq,
        bytes_per_sequence_ideal=ideal,
        paging=asdict(paging),
        max_sequences_fit=int(fit),
        max_num_seqs=int(chosen),
        max_num_seqs_cap=max_num_seqs_cap,
        requested_max_num_seqs=max_num_seqs,
        max_model_len_fit=int(len_fit),
        terms=terms,
    )


def default_activation_reserve_gib(geometry: ModelGeometry, *, device: str = "cuda",
                                   max_num_batched_tokens: int = 8192) -> float:
    """A conservative reserve for activations: a fixed runtime part plus one prefill chunk.

    The chunk term is ``max_num_batched_tokens x (4 x hidden + 2 x widest projection)``
    elements in the model dtype: the residual stream, norms and the widest intermediate
    (MLP or Mamba in_proj) alive at once. The fixed part covers the CUDA context, CUDA graphs
    and NCCL buffers on a GPU (2 GiB), the Python/torch runtime on a CPU (0.5 GiB).
    """
    widest = max((lin.out_features for lin in geometry.linear_layers
                  if lin.kind != "lm_head"), default=geometry.hidden_size)
    elem = dtype_bytes(model_dtype(geometry))
    chunk = max_num_batched_tokens * (4 * geometry.hidden_size + 2 * widest) * elem
    fixed = 2.0 if device == "cuda" else 0.5
    return round(fixed + chunk / GiB, 3)
