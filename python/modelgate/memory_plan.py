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

from dataclasses import asdict, dataclass, field
from typing import Any

from modelgate.errors import ModelGateError
from modelgate.geometry import ModelGeometry

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


def _cfg(geometry: ModelGeometry, *keys: str, default: int | None = None) -> int:
    """An integer config value (first key present) or ModelGateError naming the key."""
    for key in keys:
        if geometry.config.get(key) is not None:
            return int(geometry.config[key])
    if default is not None:
        return default
    raise ModelGateError(
        f"config.json lacks {keys[0]!r}, needed for the memory plan",
        field="model_config",
        fix=f"add {keys[0]} to the model's config.json",
    )


def parameter_count(geometry: ModelGeometry) -> int:
    """Approximate parameter count: every linear layer plus the input embedding.

    Norms, biases and the Mamba A/D/dt vectors are a few parts per million and are left out.
    """
    linear = sum(lin.in_features * lin.out_features for lin in geometry.linear_layers)
    embedding = geometry.vocab_size * geometry.hidden_size
    tied = bool(geometry.config.get("tie_word_embeddings", False))
    has_head = any(lin.name == "lm_head" for lin in geometry.linear_layers)
    # a tied lm_head shares the embedding's storage
    if tied and has_head:
        linear -= geometry.vocab_size * geometry.hidden_size
    return linear + embedding


def kv_bytes_per_token(geometry: ModelGeometry, kv_cache_dtype: str) -> tuple[int, str]:
    """Attention KV cache bytes per token (K and V of every attention layer) and the formula."""
    n_attn = count_kinds(geometry).get("attention", 0)
    if n_attn == 0:
        return 0, "no attention layers: no KV cache"
    heads = _cfg(geometry, "num_attention_heads")
    kv_heads = _cfg(geometry, "num_key_value_heads", default=heads)
    head_dim = _cfg(geometry, "head_dim", "attention_head_dim",
                    default=geometry.hidden_size // heads)
    cache_dtype = model_dtype(geometry) if kv_cache_dtype == "auto" else kv_cache_dtype
    elem = dtype_bytes(cache_dtype, field_name="kv_cache_dtype")
    value = int(2 * n_attn * kv_heads * head_dim * elem)
    return value, (
        f"2 (K,V) x {n_attn} attention layers x {kv_heads} KV heads x {head_dim} head_dim"
        f" x {elem:g} B ({cache_dtype})"
    )


def mamba_state_bytes(geometry: ModelGeometry, mamba_cache_dtype: str,
                      mamba_ssm_cache_dtype: str) -> tuple[int, int, str]:
    """Fixed recurrent state per sequence: (conv bytes, SSM bytes, formula).

    Shapes as vLLM's ``MambaStateShapeCalculator.mamba2_state_shape``: conv state
    ``(conv_kernel - 1) x (inner + 2 x n_groups x ssm_state)`` in ``mamba_cache_dtype``
    (``auto`` = the model dtype), SSM state ``heads x head_dim x ssm_state`` in
    ``mamba_ssm_cache_dtype`` (``auto`` = the conv dtype), for every Mamba layer.
    """
    n_mamba = count_kinds(geometry).get("mamba", 0)
    if n_mamba == 0:
        return 0, 0, "no Mamba layers: no recurrent state"
    heads = _cfg(geometry, "mamba_num_heads")
    head_dim = _cfg(geometry, "mamba_head_dim")
    state = _cfg(geometry, "ssm_state_size")
    groups = _cfg(geometry, "n_groups", default=1)
    kernel = _cfg(geometry, "conv_kernel", default=4)
    inner = heads * head_dim
    conv_dim = inner + 2 * groups * state
    conv_dt = model_dtype(geometry) if mamba_cache_dtype == "auto" else mamba_cache_dtype
    ssm_dt = conv_dt if mamba_ssm_cache_dtype == "auto" else mamba_ssm_cache_dtype
    conv_elem = dtype_bytes(conv_dt, field_name="mamba_cache_dtype")
    ssm_elem = dtype_bytes(ssm_dt, field_name="mamba_ssm_cache_dtype")
    conv = int(n_mamba * (kernel - 1) * conv_dim * conv_elem)
    ssm = int(n_mamba * heads * head_dim * state * ssm_elem)
    formula = (
        f"{n_mamba} Mamba layers x conv ({kernel}-1) x ({inner} + 2 x {groups} x {state})"
        f" x {conv_elem:g} B ({conv_dt}) | {n_mamba} Mamba layers x SSM {heads} heads"
        f" x {head_dim} x {state} x {ssm_elem:g} B ({ssm_dt})"
    )
    return conv, ssm, formula


def _cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


@dataclass
class PagedLayout:
    """How vLLM's hybrid KV cache manager pages the cache (vllm/v1/core/kv_cache_utils.py).

    Every layer's page has one size: attention blocks grow until one block of one attention
    layer is at least one Mamba layer's state (``platforms/interface.py``), and Mamba pages
    are padded up to it. Layers are grouped (group size = the fewer layer kind, or the larger
    when the counts are within 1.5x); a block of the shared pool spans one layer of every
    group. A request at ``max_model_len`` holds ``cdiv(len, block_size)`` blocks in each
    attention group and ``mamba_states`` blocks in each Mamba group (3 with prefix caching,
    vLLM's "align" mode: running state, previous state, prefill checkpoint; else 1).
    """

    block_size: int
    page_bytes: int
    group_size: int
    attention_groups: int
    mamba_groups: int
    mamba_states: int
    mamba_page_bytes: int

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block of the pool takes (one page in each layer slot of a group)."""
        return self.page_bytes * self.group_size

    def blocks_per_sequence(self, max_model_len: int) -> int:
        """Blocks one sequence of ``max_model_len`` tokens holds."""
        return (_cdiv(max_model_len, self.block_size) * self.attention_groups
                + self.mamba_groups * self.mamba_states)

    def bytes_per_sequence(self, max_model_len: int) -> int:
        """Cache bytes one sequence of ``max_model_len`` tokens holds."""
        return self.blocks_per_sequence(max_model_len) * self.bytes_per_block

    def max_len_fit(self, cache_bytes: int) -> int:
        """Longest single sequence the cache holds."""
        blocks = cache_bytes // max(self.bytes_per_block, 1) - self.mamba_groups * self.mamba_states
        if self.attention_groups == 0:
            return 0 if blocks < 0 else 1 << 30
        return max(0, blocks // self.attention_groups * self.block_size)

    def formula(self, max_model_len: int) -> str:
        """The per-sequence computation, spelled out."""
        return (
            f"(cdiv({max_model_len}, block {self.block_size}) x {self.attention_groups} "
            f"attention groups + {self.mamba_groups} Mamba groups x {self.mamba_states} "
            f"states) x {self.page_bytes} B page x {self.group_size} layers per group"
            f" (Mamba page {self.mamba_page_bytes} B padded to the attention page)"
        )


def paged_layout(geometry: ModelGeometry, *, kv_cache_dtype: str = "auto",
                 mamba_cache_dtype: str = "auto", mamba_ssm_cache_dtype: str = "float32",
                 block_alignment: int = 16, prefix_caching: bool = True) -> PagedLayout:
    """vLLM's page geometry for this model (see ``PagedLayout``)."""
    kinds = count_kinds(geometry)
    n_attn, n_mamba = kinds.get("attention", 0), kinds.get("mamba", 0)
    kv_token, __ = kv_bytes_per_token(geometry, kv_cache_dtype)
    per_layer_token = kv_token // n_attn if n_attn else 0
    conv, ssm, __ = mamba_state_bytes(geometry, mamba_cache_dtype, mamba_ssm_cache_dtype)
    mamba_page = (conv + ssm) // n_mamba if n_mamba else 0
    block = block_alignment
    if n_mamba and per_layer_token:
        block = block_alignment * _cdiv(mamba_page, block_alignment * per_layer_token)
    page = block * per_layer_token if per_layer_token else mamba_page
    counts = [c for c in (n_attn, n_mamba) if c]
    group = min(counts) if counts else 1
    if counts and max(counts) < 1.5 * min(counts):
        group = max(counts)
    return PagedLayout(
        block_size=block, page_bytes=page, group_size=group,
        attention_groups=_cdiv(n_attn, group) if n_attn else 0,
        mamba_groups=_cdiv(n_mamba, group) if n_mamba else 0,
        mamba_states=3 if prefix_caching else 1,
        mamba_page_bytes=mamba_page,
    )


def choose_max_num_seqs(fit: int, cap: int = DEFAULT_MAX_NUM_SEQS_CAP) -> int:
    """min(cap, fit), rounded down to a multiple of 8 once it is at least 8."""
    chosen = max(0, min(cap, fit))
    return chosen // 8 * 8 if chosen >= 8 else chosen


def plan_memory(
    geometry: ModelGeometry,
    *,
    gpu_memory_gib: float,
    max_model_len: int,
    activation_reserve_gib: float,
    gpu_memory_utilization: float = 0.9,
    kv_cache_dtype: str = "auto",
    mamba_cache_dtype: str = "auto",
    mamba_ssm_cache_dtype: str = "float32",
    weight_bytes: int | None = None,
    max_num_seqs: int | None = None,
    max_num_seqs_cap: int = DEFAULT_MAX_NUM_SEQS_CAP,
    block_alignment: int = 16,
    prefix_caching: bool = True,
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

    terms: list[MemoryTerm] = []
    budget = int(gpu_memory_gib * GiB * gpu_memory_utilization)
    terms.append(MemoryTerm("budget", budget,
                            f"{gpu_memory_gib:g} GiB x gpu_memory_utilization "
                            f"{gpu_memory_utilization:g}"))

    if weight_bytes is not None:
        weights, source = int(weight_bytes), "checkpoint tensors (safetensors headers)"
        w_formula = "sum of the checkpoint's tensor sizes"
    else:
        dt = model_dtype(geometry)
        params = parameter_count(geometry)
        weights = int(params * dtype_bytes(dt))
        source = "parameters x dtype"
        w_formula = f"{params:,} parameters x {dtype_bytes(dt):g} B ({dt})"
    terms.append(MemoryTerm("weights", weights, w_formula))

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
    ideal = kv_token * max_model_len + conv + ssm
    terms.append(MemoryTerm("per_sequence_ideal", ideal,
                            f"kv_cache_per_token x {max_model_len} max_model_len + "
                            "mamba state (no paging overhead)"))
    paging = paged_layout(geometry, kv_cache_dtype=kv_cache_dtype,
                          mamba_cache_dtype=mamba_cache_dtype,
                          mamba_ssm_cache_dtype=mamba_ssm_cache_dtype,
                          block_alignment=block_alignment, prefix_caching=prefix_caching)
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
