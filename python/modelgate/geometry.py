"""Model geometry: every weight-bearing layer of a checkpoint, by module name and shape.

Read from ``config.json`` and, when present, from the safetensors headers (no torch needed),
so a recipe can be checked against the real shapes before any GPU time is spent.

Module names follow the installed transformers modelling code, because those are the names
LLM Compressor's ``targets`` / ``ignore`` patterns are matched against. For Nemotron-H,
transformers 5 names the backbone ``model`` (published checkpoints store ``backbone.``; the
loader renames it, see transformers ``conversion_mapping.py``), so a layer is
``model.layers.3.mixer.down_proj``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.errors import InputError, ModelGateError

# Bytes per element of each safetensors dtype (the header's "dtype" field).
SAFETENSORS_DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}

# Nemotron-H ``hybrid_override_pattern`` characters -> block kind (transformers
# configuration_nemotron_h.py ``_pattern_to_list``).
NEMOTRON_H_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
# transformers 5 spells layer kinds differently in ``layers_block_type``; map both.
_BLOCK_KIND_ALIASES = {
    "linear_attention": "mamba", "mamba": "mamba",
    "full_attention": "attention", "attention": "attention",
    "mlp": "mlp", "moe": "moe",
}
# Checkpoint key prefixes that the transformers loader renames (checkpoint -> module).
_CHECKPOINT_PREFIX_RENAMES = {"nemotron_h": [("backbone.", "model.")]}
# Largest safetensors header we accept (the format caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class LinearLayer:
    """One weight matrix: ``out_features x in_features``, as nn.Linear stores it."""

    name: str
    in_features: int
    out_features: int
    kind: str  # mamba | attention | mlp | moe_expert | router | conv1d | lm_head | linear
    module_class: str = "Linear"  # the torch class name, for class-name targets ("Linear")


@dataclass
class ModelGeometry:
    """What a recipe preflight and the serving memory planner need to know about a model."""

    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    block_kinds: list[str]
    linear_layers: list[LinearLayer]
    vocab_size: int = 0
    shapes_from: str = "config"  # "config", "config+safetensors" or "safetensors"
    model_dir: str | None = None  # where it was read from (for weight_bytes)
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    # the architecture family that derived the layers ("dense", "moe", "nemotron_h", ...);
    # "safetensors" when only the checkpoint's tensor list was read (no cache model)
    family: str = "unknown"
    # what the cache of each layer kind is made of (see CACHE_KINDS): heads, head sizes,
    # state sizes, the sliding window; read by memory_plan, the vLLM formulas live there
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def is_hybrid(self) -> bool:
        """True when the model mixes Mamba (state-space) blocks with attention."""
        return "mamba" in self.block_kinds

    def layer(self, name: str) -> LinearLayer:
        """Return the layer with this module name (KeyError when absent)."""
        for lin in self.linear_layers:
            if lin.name == name:
                return lin
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (without the raw config), for JSON output."""
        data = asdict(self)
        data.pop("config")
        return data

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelGeometry:
        """Derive the geometry from a ``config.json`` mapping alone."""
        model_type = str(config.get("model_type", ""))
        archs = config.get("architectures") or [""]
        if "hybrid_override_pattern" in config and model_type != "nemotron_h":
            model_type = "nemotron_h"  # a renamed Nemotron-H (the pattern is its signature)
        builder = FAMILIES.get(model_type)
        if builder is None:
            raise UnsupportedModelError(model_type, str(archs[0]))
        family, kinds, layers, cache = builder(config)
        return cls(
            model_type=str(config.get("model_type", "")),
            architecture=str(archs[0]),
            hidden_size=int(config.get("hidden_size", 0)),
            num_layers=len(kinds),
            block_kinds=kinds,
            linear_layers=layers,
            vocab_size=int(config.get("vocab_size", 0)),
            config=config,
            family=family,
            cache=cache,
        )

    @classmethod
    def from_model_dir(cls, path: Path | str) -> ModelGeometry:
        """Read a model directory (or a config.json path); safetensors shapes win over config."""
        path = Path(path)
        config_path = path if path.is_file() else path / "config.json"
        if not config_path.is_file():
            raise InputError(
                f"no config.json at {config_path}",
                field="model_config",
                fix="point at a Hugging Face model directory or its config.json",
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{config_path} is not valid JSON: {exc}", field="model_config",
                fix="restore the model's config.json",
            ) from exc
        if not isinstance(config, dict):
            raise InputError(
                f"{config_path} is a JSON {type(config).__name__}, not a config.json object",
                field="model_config", fix="point at a Hugging Face model's config.json")
        model_dir = config_path.parent
        tensors = read_safetensors_shapes(model_dir)
        try:
            geometry = cls.from_config(config)
        except UnsupportedModelError:
            if not tensors:
                raise
            # the preflight can still check real tensor shapes; the memory plan refuses
            # this geometry (its layer kinds are "unknown")
            geometry = _geometry_from_tensors(config, tensors)
        if tensors:
            geometry = _override_shapes(geometry, tensors)
        geometry.model_dir = str(model_dir)
        return geometry


class UnsupportedModelError(ModelGateError):
    """A model_type (or a layer kind) whose geometry modelgate does not model: refused."""

    def __init__(self, model_type: str, architecture: str = "", detail: str = "",
                 *, extra_fix: str = "") -> None:
        what = f"model_type {model_type!r}" + (f" ({architecture})" if architecture else "")
        super().__init__(
            f"modelgate does not model the layers of {what}{': ' + detail if detail else ''}; "
            "a memory plan for it would be a guess, so none is made. Modelled: "
            f"{', '.join(sorted(FAMILIES))}",
            field="model_config",
            fix=(extra_fix + ", or " if extra_fix else "")
            + "give --max-num-seqs explicitly (the plan is then skipped and vLLM's own "
            "start-up profile is the check), or file a modelgate issue to add this family",
        )
        self.model_type = model_type


# Every layer kind the memory plan knows how to size (memory_plan.py has the formulas).
CACHE_KINDS = ("attention", "sliding_attention", "mla_attention", "mamba", "mamba1",
               "gated_delta_net", "mlp", "moe")

Family = tuple[str, list[str], list[LinearLayer], dict[str, Any]]


def _cfg_int(config: dict[str, Any], *keys: str, default: int | None = None) -> int:
    """The first of ``keys`` present in config, as int; error naming the key when none is."""
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    if default is not None:
        return default
    model_type = config.get("model_type", "")
    raise ModelGateError(
        f"config.json of model_type {model_type!r} lacks {keys[0]!r}, which this family's "
        "geometry needs",
        field="model_config",
        fix="use the model's published config.json unchanged (a config missing this key "
        "is not one vLLM loads either)",
    )


def nemotron_h_block_kinds(config: dict[str, Any]) -> list[str]:
    """Per-layer block kinds of a Nemotron-H config (pattern string or layer-type list)."""
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        unknown = sorted(set(pattern) - set(NEMOTRON_H_PATTERN))
        if unknown:
            raise UnsupportedModelError(
                "nemotron_h", "", f"hybrid_override_pattern has block characters {unknown} "
                "beyond M (mamba), * (attention), - (MLP), E (MoE)")
        return [NEMOTRON_H_PATTERN[c] for c in pattern]
    types = config.get("layers_block_type") or config.get("layer_types")
    if isinstance(types, list) and types:
        kinds = [_BLOCK_KIND_ALIASES.get(str(t), str(t)) for t in types]
        unknown = sorted(set(kinds) - set(_BLOCK_KIND_ALIASES.values()))
        if unknown:
            raise UnsupportedModelError("nemotron_h", "", f"layer kinds {unknown}")
        return kinds
    raise ModelGateError(
        "Nemotron-H config has neither hybrid_override_pattern nor layers_block_type",
        field="model_config", fix="restore the model's published config.json",
    )


def _attention_cache(config: dict[str, Any], heads_key: str = "num_attention_heads",
                     kv_key: str = "num_key_value_heads") -> dict[str, Any]:
    """Heads of a standard (GQA) attention layer, as vLLM's AttentionSpec reads them."""
    hidden = _cfg_int(config, "hidden_size")
    heads = _cfg_int(config, heads_key)
    return {
        "heads": heads,
        "kv_heads": _cfg_int(config, kv_key, default=heads),
        "head_dim": _cfg_int(config, "head_dim", "attention_head_dim", default=hidden // heads),
    }


def _attention_layers(p: str, hidden: int, att: dict[str, Any],
                      q_factor: int = 1) -> list[LinearLayer]:
    """q/k/v/o projections; ``q_factor`` 2 for a gated attention whose q_proj also emits a gate."""
    q = att["heads"] * att["head_dim"]
    kv = att["kv_heads"] * att["head_dim"]
    return [
        LinearLayer(f"{p}.q_proj", hidden, q * q_factor, "attention"),
        LinearLayer(f"{p}.k_proj", hidden, kv, "attention"),
        LinearLayer(f"{p}.v_proj", hidden, kv, "attention"),
        LinearLayer(f"{p}.o_proj", q, hidden, "attention"),
    ]


def _gated_mlp(p: str, hidden: int, inter: int, kind: str = "mlp",
               names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
               ) -> list[LinearLayer]:
    """A SwiGLU MLP: gate and up (hidden -> inter), down (inter -> hidden)."""
    g, u, d = names
    return [
        LinearLayer(f"{p}.{g}", hidden, inter, kind),
        LinearLayer(f"{p}.{u}", hidden, inter, kind),
        LinearLayer(f"{p}.{d}", inter, hidden, kind),
    ]


def _lm_head(config: dict[str, Any], hidden: int) -> LinearLayer:
    return LinearLayer("lm_head", hidden, _cfg_int(config, "vocab_size"), "lm_head")


def _attention_kinds(config: dict[str, Any], n: int) -> tuple[list[str], int | None]:
    """Per-layer attention kind from ``layer_types`` / ``sliding_window``, and the window.

    ``layer_types`` decides per layer (vLLM llama.py, gpt_oss.py pass it as
    ``per_layer_sliding_window``); a model-wide ``sliding_window`` (Mistral-7B-v0.1) makes
    every layer sliding, unless ``use_sliding_window`` is false (Qwen2: transformers then
    drops the window).
    """
    window = config.get("sliding_window")
    types = config.get("layer_types")
    if isinstance(types, list) and types:
        if len(types) != n:
            raise ModelGateError(
                f"config.json layer_types has {len(types)} entries for {n} layers",
                field="model_config", fix="restore the model's published config.json")
        kinds = []
        for t in types:
            if t == "full_attention":
                kinds.append("attention")
            elif t == "sliding_attention":
                if not window:
                    raise ModelGateError("layer_types has sliding_attention but config.json "
                                         "has no sliding_window", field="model_config",
                                         fix="restore the model's published config.json")
                kinds.append("sliding_attention")
            else:
                raise UnsupportedModelError(str(config.get("model_type")), "",
                                            f"layer type {t!r}")
        return kinds, int(window) if "sliding_attention" in kinds else None
    if window and config.get("use_sliding_window", True) is not False:
        # a model-wide window: vLLM's Attention takes cache_config.sliding_window for every
        # layer without a per-layer one (vllm/model_executor/layers/attention/attention.py)
        return ["sliding_attention"] * n, int(window)
    return ["attention"] * n, None


def _dense_layers(config: dict[str, Any]) -> Family:
    """Llama-style decoders (llama, mistral, qwen2, qwen3): attention + SwiGLU MLP per layer."""
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    att = _attention_cache(config)
    inter = _cfg_int(config, "intermediate_size")
    kinds, window = _attention_kinds(config, n)
    layers: list[LinearLayer] = []
    for i in range(n):
        layers += _attention_layers(f"model.layers.{i}.self_attn", hidden, att)
        layers += _gated_mlp(f"model.layers.{i}.mlp", hidden, inter)
    layers.append(_lm_head(config, hidden))
    return "dense", kinds, layers, {"attention": att, "sliding_window": window}


def _gemma_layers(config: dict[str, Any]) -> Family:
    """Gemma 2 / Gemma 3 text decoders: Llama-shaped layers, sliding and full attention mixed.

    Without ``layer_types``, transformers derives it: Gemma 2 slides on every other layer
    (``(i + 1) % 2``), Gemma 3 on all but every ``sliding_window_pattern``-th (default 6);
    Gemma ties its embeddings unless the config says otherwise.
    """
    cfg = dict(config)
    n = _cfg_int(cfg, "num_hidden_layers")
    if not cfg.get("layer_types"):
        every = 2 if cfg.get("model_type") == "gemma2" else _cfg_int(
            cfg, "sliding_window_pattern", "_sliding_window_pattern", default=6)
        cfg["layer_types"] = ["sliding_attention" if (i + 1) % every else "full_attention"
                              for i in range(n)]
    __, kinds, layers, cache = _dense_layers(cfg)
    cache["tie_word_embeddings_default"] = True
    return "dense", kinds, layers, cache


def _experts(p: str, hidden: int, inter: int, n: int,
             names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
             ) -> list[LinearLayer]:
    """``n`` routed experts, each a SwiGLU MLP of width ``inter``."""
    out: list[LinearLayer] = []
    for e in range(n):
        out += _gated_mlp(f"{p}.{e}", hidden, inter, "moe_expert", names)
    return out


def _qwen_moe_ffn(config: dict[str, Any], i: int, hidden: int) -> tuple[str, list[LinearLayer]]:
    """The FFN of layer ``i`` of qwen2_moe / qwen3_moe / qwen3_next (Qwen2MoeSparseMoeBlock).

    Sparse when ``i`` is not in ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``
    (transformers modeling_qwen3_moe.py, vLLM qwen3_moe.py); else a dense MLP.
    """
    p = f"model.layers.{i}.mlp"
    step = _cfg_int(config, "decoder_sparse_step", default=1)
    n_exp = _cfg_int(config, "num_experts")
    if i in (config.get("mlp_only_layers") or []) or n_exp == 0 or (i + 1) % step:
        return "mlp", _gated_mlp(p, hidden, _cfg_int(config, "intermediate_size"))
    out = [LinearLayer(f"{p}.gate", hidden, n_exp, "router")]
    out += _experts(f"{p}.experts", hidden, _cfg_int(config, "moe_intermediate_size"), n_exp)
    shared = int(config.get("shared_expert_intermediate_size") or 0)
    if shared:
        out += _gated_mlp(f"{p}.shared_expert", hidden, shared)
        out.append(LinearLayer(f"{p}.shared_expert_gate", hidden, 1, "router"))
    return "moe", out


def _qwen_moe_layers(config: dict[str, Any]) -> Family:
    """qwen2_moe / qwen3_moe: attention + routed (and for qwen2_moe shared) experts."""
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    att = _attention_cache(config)
    kinds, window = _attention_kinds(config, n)
    layers: list[LinearLayer] = []
    for i in range(n):
        layers += _attention_layers(f"model.layers.{i}.self_attn", hidden, att)
        layers += _qwen_moe_ffn(config, i, hidden)[1]
    layers.append(_lm_head(config, hidden))
    return "moe", kinds, layers, {"attention": att, "sliding_window": window}


def _mixtral_layers(config: dict[str, Any]) -> Family:
    """Mixtral: attention + ``num_local_experts`` experts (w1 gate, w3 up, w2 down) per layer."""
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    att = _attention_cache(config)
    kinds, window = _attention_kinds(config, n)
    n_exp = _cfg_int(config, "num_local_experts")
    inter = _cfg_int(config, "intermediate_size")
    layers: list[LinearLayer] = []
    for i in range(n):
        p = f"model.layers.{i}"
        layers += _attention_layers(f"{p}.self_attn", hidden, att)
        layers.append(LinearLayer(f"{p}.block_sparse_moe.gate", hidden, n_exp, "router"))
        layers += _experts(f"{p}.block_sparse_moe.experts", hidden, inter, n_exp,
                           ("w1", "w3", "w2"))
    layers.append(_lm_head(config, hidden))
    return "moe", kinds, layers, {"attention": att, "sliding_window": window}


def _gpt_oss_layers(config: dict[str, Any]) -> Family:
    """gpt-oss: attention (sliding / full per ``layer_types``) + experts with a fused gate_up.

    transformers GptOssExperts stores ``gate_up_proj`` [experts, hidden, 2 x inter] and
    ``down_proj``; vLLM gpt_oss.py builds one FusedMoE of the same shapes.
    """
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    att = _attention_cache(config)
    kinds, window = _attention_kinds(config, n)
    n_exp = _cfg_int(config, "num_local_experts")
    inter = _cfg_int(config, "intermediate_size")
    layers: list[LinearLayer] = []
    for i in range(n):
        p = f"model.layers.{i}"
        layers += _attention_layers(f"{p}.self_attn", hidden, att)
        layers.append(LinearLayer(f"{p}.mlp.router", hidden, n_exp, "router"))
        for e in range(n_exp):
            layers += [
                LinearLayer(f"{p}.mlp.experts.{e}.gate_up_proj", hidden, 2 * inter, "moe_expert"),
                LinearLayer(f"{p}.mlp.experts.{e}.down_proj", inter, hidden, "moe_expert"),
            ]
    layers.append(_lm_head(config, hidden))
    return "moe", kinds, layers, {"attention": att, "sliding_window": window}


def _deepseek_layers(config: dict[str, Any]) -> Family:
    """DeepSeek-V2/V3: multi-head latent attention (MLA) + shared and routed experts.

    Layers ``< first_k_dense_replace`` have a dense MLP of ``intermediate_size``; the others
    ``n_routed_experts`` experts and ``n_shared_experts`` x ``moe_intermediate_size`` of
    shared expert (transformers modeling_deepseek_v3.py, vLLM deepseek_v2.py).
    """
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    heads = _cfg_int(config, "num_attention_heads")
    kv_rank = _cfg_int(config, "kv_lora_rank")
    rope = _cfg_int(config, "qk_rope_head_dim")
    nope = _cfg_int(config, "qk_nope_head_dim")
    v_dim = _cfg_int(config, "v_head_dim")
    q_rank = config.get("q_lora_rank")
    dense_k = _cfg_int(config, "first_k_dense_replace", default=0)
    freq = _cfg_int(config, "moe_layer_freq", default=1)
    n_exp = _cfg_int(config, "n_routed_experts")
    moe_inter = _cfg_int(config, "moe_intermediate_size")
    n_shared = _cfg_int(config, "n_shared_experts", default=0)
    layers: list[LinearLayer] = []
    kinds: list[str] = []
    for i in range(n):
        a = f"model.layers.{i}.self_attn"
        if q_rank:
            layers += [LinearLayer(f"{a}.q_a_proj", hidden, int(q_rank), "attention"),
                       LinearLayer(f"{a}.q_b_proj", int(q_rank), heads * (nope + rope),
                                   "attention")]
        else:
            layers.append(LinearLayer(f"{a}.q_proj", hidden, heads * (nope + rope), "attention"))
        layers += [
            LinearLayer(f"{a}.kv_a_proj_with_mqa", hidden, kv_rank + rope, "attention"),
            LinearLayer(f"{a}.kv_b_proj", kv_rank, heads * (nope + v_dim), "attention"),
            LinearLayer(f"{a}.o_proj", heads * v_dim, hidden, "attention"),
        ]
        kinds.append("mla_attention")
        m = f"model.layers.{i}.mlp"
        if i < dense_k or i % freq:
            layers += _gated_mlp(m, hidden, _cfg_int(config, "intermediate_size"))
            continue
        layers.append(LinearLayer(f"{m}.gate", hidden, n_exp, "router"))
        layers += _experts(f"{m}.experts", hidden, moe_inter, n_exp)
        if n_shared:
            layers += _gated_mlp(f"{m}.shared_experts", hidden, n_shared * moe_inter)
    layers.append(_lm_head(config, hidden))
    return "moe", kinds, layers, {"mla": {"kv_lora_rank": kv_rank, "qk_rope_head_dim": rope}}


def _mamba2_layers(p: str, hidden: int, m: dict[str, int]) -> list[LinearLayer]:
    """in_proj / conv1d / out_proj of a Mamba-2 mixer (MambaMixer2)."""
    conv_dim = m["inner"] + 2 * m["groups"] * m["state"]
    return [
        # in_proj packs [gate z | conv input x,B,C | dt]
        LinearLayer(f"{p}.in_proj", hidden, m["inner"] + conv_dim + m["heads"], "mamba"),
        # depthwise: weight [conv_dim, 1, kernel]; in_features = the kernel width
        LinearLayer(f"{p}.conv1d", m["kernel"], conv_dim, "conv1d", "Conv1d"),
        LinearLayer(f"{p}.out_proj", m["inner"], hidden, "mamba"),
    ]


def _nemotron_h_layers(config: dict[str, Any]) -> Family:
    """Layers of transformers' NemotronHForCausalLM (modeling_nemotron_h.py)."""
    kinds = nemotron_h_block_kinds(config)
    hidden = _cfg_int(config, "hidden_size")
    layers: list[LinearLayer] = []
    cache: dict[str, Any] = {}
    if "mamba" in kinds:
        heads = _cfg_int(config, "mamba_num_heads")
        head_dim = _cfg_int(config, "mamba_head_dim")
        # vLLM nemotron_h.py: MambaMixer2(intermediate_size=mamba_num_heads*mamba_head_dim)
        cache["mamba"] = {"heads": heads, "head_dim": head_dim, "inner": heads * head_dim,
                          "state": _cfg_int(config, "ssm_state_size"),
                          "groups": _cfg_int(config, "n_groups", default=1),
                          "kernel": _cfg_int(config, "conv_kernel", default=4)}
    if "attention" in kinds:
        cache["attention"] = _attention_cache(config)
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}.mixer"
        if kind == "mamba":
            layers += _mamba2_layers(p, hidden, cache["mamba"])
        elif kind == "attention":
            layers += _attention_layers(p, hidden, cache["attention"])
        elif kind == "mlp":
            inter = _cfg_int(config, "intermediate_size")
            layers += [
                LinearLayer(f"{p}.up_proj", hidden, inter, "mlp"),
                LinearLayer(f"{p}.down_proj", inter, hidden, "mlp"),
            ]
        else:  # moe (nemotron_h_block_kinds admits no other kind)
            layers += _nemotron_h_moe(config, p, hidden)
    layers.append(_lm_head(config, hidden))
    return "nemotron_h", kinds, layers, cache


def _nemotron_h_moe(config: dict[str, Any], p: str, hidden: int) -> list[LinearLayer]:
    """Router, experts and shared expert of a Nemotron-H MoE block (NemotronHMoE)."""
    n_experts = _cfg_int(config, "n_routed_experts", "num_local_experts")
    moe_inter = _cfg_int(config, "moe_intermediate_size")
    latent = config.get("moe_latent_size")
    expert_in = int(latent) if latent else hidden
    out = [LinearLayer(f"{p}.gate", hidden, n_experts, "router", "NemotronHTopkRouter")]
    if latent:
        out += [
            LinearLayer(f"{p}.fc1_latent_proj", hidden, expert_in, "moe_expert"),
            LinearLayer(f"{p}.fc2_latent_proj", expert_in, hidden, "moe_expert"),
        ]
    # Experts are fused 3-D parameters in transformers 5; LLM Compressor and vLLM treat each
    # expert's projections as a linear layer of this shape.
    for e in range(n_experts):
        out += [
            LinearLayer(f"{p}.experts.{e}.up_proj", expert_in, moe_inter, "moe_expert"),
            LinearLayer(f"{p}.experts.{e}.down_proj", moe_inter, expert_in, "moe_expert"),
        ]
    shared = config.get("moe_shared_expert_intermediate_size")
    if shared:
        out += [
            LinearLayer(f"{p}.shared_experts.up_proj", hidden, int(shared), "mlp"),
            LinearLayer(f"{p}.shared_experts.down_proj", int(shared), hidden, "mlp"),
        ]
    return out


def _granite_hybrid_layers(config: dict[str, Any]) -> Family:
    """Granite-4.0-H (granitemoehybrid): Mamba-2 or attention mixer, then MoE + shared MLP.

    Every layer has ``shared_mlp`` (input_linear hidden -> 2 x shared_intermediate_size,
    output_linear back) and, when ``num_local_experts`` > 0, ``block_sparse_moe`` experts of
    ``intermediate_size`` with a router (transformers modeling_granitemoehybrid.py).
    vLLM granitemoehybrid.py builds MambaMixer2 with ``intermediate_size = mamba_expand x
    hidden_size``, ``num_heads = mamba_n_heads``, ``head_dim = mamba_d_head``.
    """
    hidden = _cfg_int(config, "hidden_size")
    types = config.get("layer_types") or config.get("layers_block_type")
    if not isinstance(types, list) or not types:
        raise ModelGateError("granitemoehybrid config.json has no layer_types",
                             field="model_config", fix="restore the model's published config.json")
    unknown = sorted(set(types) - {"mamba", "attention"})
    if unknown:
        raise UnsupportedModelError("granitemoehybrid", "", f"layer types {unknown}")
    kinds = [str(t) for t in types]
    cache: dict[str, Any] = {}
    if "mamba" in kinds:
        cache["mamba"] = {"heads": _cfg_int(config, "mamba_n_heads"),
                          "head_dim": _cfg_int(config, "mamba_d_head"),
                          "inner": _cfg_int(config, "mamba_expand") * hidden,
                          "state": _cfg_int(config, "mamba_d_state"),
                          "groups": _cfg_int(config, "mamba_n_groups", default=1),
                          "kernel": _cfg_int(config, "mamba_d_conv", default=4)}
    if "attention" in kinds:
        cache["attention"] = _attention_cache(config)
    n_exp = _cfg_int(config, "num_local_experts", default=0)
    shared = _cfg_int(config, "shared_intermediate_size", default=0)
    inter = _cfg_int(config, "intermediate_size")
    layers: list[LinearLayer] = []
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}"
        if kind == "mamba":
            layers += _mamba2_layers(f"{p}.mamba", hidden, cache["mamba"])
        else:
            layers += _attention_layers(f"{p}.self_attn", hidden, cache["attention"])
        if n_exp:
            layers.append(LinearLayer(f"{p}.block_sparse_moe.router.layer", hidden, n_exp,
                                      "router"))
            for e in range(n_exp):
                q = f"{p}.block_sparse_moe.experts.{e}"
                layers += [LinearLayer(f"{q}.input_linear", hidden, 2 * inter, "moe_expert"),
                           LinearLayer(f"{q}.output_linear", inter, hidden, "moe_expert")]
        if shared:
            layers += [LinearLayer(f"{p}.shared_mlp.input_linear", hidden, 2 * shared, "mlp"),
                       LinearLayer(f"{p}.shared_mlp.output_linear", shared, hidden, "mlp")]
    layers.append(_lm_head(config, hidden))
    return "granite_hybrid", kinds, layers, cache


def _qwen3_next_layers(config: dict[str, Any]) -> Family:
    """Qwen3-Next: gated delta net (linear attention) layers, a gated full attention every
    ``full_attention_interval`` layers, and a routed + shared-expert MoE in every layer.

    Layer i is full attention when ``layer_types[i] == "full_attention"``, else (no
    layer_types) when ``(i + 1) % full_attention_interval == 0`` (transformers
    configuration_qwen3_next.py). The gated delta net: in_proj_qkvz hidden ->
    2 x key_dim + 2 x value_dim, in_proj_ba hidden -> 2 x v_heads, conv1d over
    2 x key_dim + value_dim channels, out_proj value_dim -> hidden (vLLM qwen3_next.py).
    Full attention's q_proj emits the query and its output gate (2 x heads x head_dim).
    """
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    types = config.get("layer_types")
    if isinstance(types, list) and types:
        unknown = sorted(set(types) - {"linear_attention", "full_attention"})
        if unknown:
            raise UnsupportedModelError("qwen3_next", "", f"layer types {unknown}")
        kinds = ["attention" if t == "full_attention" else "gated_delta_net" for t in types]
    else:
        every = _cfg_int(config, "full_attention_interval")
        kinds = ["attention" if (i + 1) % every == 0 else "gated_delta_net" for i in range(n)]
    att = _attention_cache(config)
    gdn = {"k_heads": _cfg_int(config, "linear_num_key_heads"),
           "v_heads": _cfg_int(config, "linear_num_value_heads"),
           "k_dim": _cfg_int(config, "linear_key_head_dim"),
           "v_dim": _cfg_int(config, "linear_value_head_dim"),
           "kernel": _cfg_int(config, "linear_conv_kernel_dim", default=4)}
    key_dim = gdn["k_heads"] * gdn["k_dim"]
    value_dim = gdn["v_heads"] * gdn["v_dim"]
    layers: list[LinearLayer] = []
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}"
        if kind == "attention":
            layers += _attention_layers(f"{p}.self_attn", hidden, att, q_factor=2)
        else:
            la = f"{p}.linear_attn"
            layers += [
                LinearLayer(f"{la}.in_proj_qkvz", hidden, 2 * key_dim + 2 * value_dim,
                            "gated_delta_net"),
                LinearLayer(f"{la}.in_proj_ba", hidden, 2 * gdn["v_heads"], "gated_delta_net"),
                LinearLayer(f"{la}.conv1d", gdn["kernel"], 2 * key_dim + value_dim, "conv1d",
                            "Conv1d"),
                LinearLayer(f"{la}.out_proj", value_dim, hidden, "gated_delta_net"),
            ]
        layers += _qwen_moe_ffn(config, i, hidden)[1]
    layers.append(_lm_head(config, hidden))
    cache = {"gated_delta_net": gdn}
    if "attention" in kinds:
        cache["attention"] = att
    return "linear_attention_hybrid", kinds, layers, cache


def _jamba_layers(config: dict[str, Any]) -> Family:
    """Jamba: Mamba-1 layers with an attention layer every ``attn_layer_period``, and MoE FFNs
    every ``expert_layer_period`` (dense MLP elsewhere).

    Layer i is attention when ``i % attn_layer_period == attn_layer_offset`` and has
    ``num_experts`` experts when ``i % expert_layer_period == expert_layer_offset``
    (transformers configuration_jamba.py ``layers_block_type`` / ``layers_num_experts``; vLLM
    jamba.py builds from the same). The Mamba-1 mixer (vLLM MambaMixer): in_proj hidden ->
    2 x inner, depthwise conv over inner, x_proj inner -> dt_rank + 2 x d_state, dt_proj
    dt_rank -> inner, out_proj inner -> hidden, with inner = mamba_expand x hidden.
    """
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    types = config.get("layers_block_type")
    if isinstance(types, list) and types:
        unknown = sorted(set(types) - {"attention", "mamba"})
        if unknown:
            raise UnsupportedModelError("jamba", "", f"layer types {unknown}")
        kinds = ["attention" if t == "attention" else "mamba1" for t in types]
    else:
        period = _cfg_int(config, "attn_layer_period")
        offset = _cfg_int(config, "attn_layer_offset")
        kinds = ["attention" if i % period == offset else "mamba1" for i in range(n)]
    m1 = {"inner": _cfg_int(config, "mamba_expand") * hidden,
          "state": _cfg_int(config, "mamba_d_state"),
          "kernel": _cfg_int(config, "mamba_d_conv", default=4)}
    dt_rank = config.get("mamba_dt_rank")
    dt_rank = -(-hidden // 16) if dt_rank in (None, "auto") else int(dt_rank)
    att = _attention_cache(config)
    n_exp = _cfg_int(config, "num_experts", default=1)
    e_period = _cfg_int(config, "expert_layer_period", default=1)
    e_offset = _cfg_int(config, "expert_layer_offset", default=0)
    inter = _cfg_int(config, "intermediate_size")
    layers: list[LinearLayer] = []
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}"
        if kind == "attention":
            layers += _attention_layers(f"{p}.self_attn", hidden, att)
        else:
            q = f"{p}.mamba"
            layers += [
                LinearLayer(f"{q}.in_proj", hidden, 2 * m1["inner"], "mamba"),
                LinearLayer(f"{q}.conv1d", m1["kernel"], m1["inner"], "conv1d", "Conv1d"),
                LinearLayer(f"{q}.x_proj", m1["inner"], dt_rank + 2 * m1["state"], "mamba"),
                LinearLayer(f"{q}.dt_proj", dt_rank, m1["inner"], "mamba"),
                LinearLayer(f"{q}.out_proj", m1["inner"], hidden, "mamba"),
            ]
        f = f"{p}.feed_forward"
        if n_exp > 1 and i % e_period == e_offset:
            layers.append(LinearLayer(f"{f}.router", hidden, n_exp, "router"))
            layers += _experts(f"{f}.experts", hidden, inter, n_exp)
        else:
            layers += _gated_mlp(f, hidden, inter)
    layers.append(_lm_head(config, hidden))
    cache: dict[str, Any] = {"mamba1": m1}
    if "attention" in kinds:
        cache["attention"] = att
    return "mamba1_hybrid", kinds, layers, cache


# model_type -> the function that derives its layers from config.json. A model_type not
# here is refused (UnsupportedModelError): falcon_h1 (attention and Mamba-2 side by side in
# every layer), zamba2 (shared attention blocks), multimodal wrappers (gemma3, qwen3_5 with
# a text_config) and the rest are not modelled yet.
FAMILIES: dict[str, Any] = {
    "llama": _dense_layers, "mistral": _dense_layers, "qwen2": _dense_layers,
    "qwen3": _dense_layers, "gemma2": _gemma_layers, "gemma3_text": _gemma_layers,
    "mixtral": _mixtral_layers, "qwen2_moe": _qwen_moe_layers, "qwen3_moe": _qwen_moe_layers,
    "deepseek_v2": _deepseek_layers, "deepseek_v3": _deepseek_layers,
    "gpt_oss": _gpt_oss_layers,
    "nemotron_h": _nemotron_h_layers, "granitemoehybrid": _granite_hybrid_layers,
    "qwen3_next": _qwen3_next_layers, "jamba": _jamba_layers,
}


# ---------------------------------------------------------------- safetensors headers


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse one safetensors file's header: 8-byte little-endian length, then JSON."""
    return _header_and_length(path)[0]


def _header_and_length(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (without ``__metadata__``) and its length in bytes."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InputError(f"{path} is too short to be safetensors", field="model",
                             fix="re-download or regenerate the checkpoint")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise InputError(f"{path}: implausible safetensors header ({length} bytes)",
                             field="model", fix="re-download or regenerate the checkpoint")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: the safetensors header is not JSON ({exc})", field="model",
                             fix="re-download or regenerate the checkpoint") from exc
    if not isinstance(header, dict):
        raise InputError(f"{path}: the safetensors header is not a JSON object", field="model",
                         fix="re-download or regenerate the checkpoint")
    header.pop("__metadata__", None)
    return header, length


def read_safetensors_shapes(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Map every tensor name in ``model_dir/*.safetensors`` to {dtype, shape, bytes}."""
    tensors: dict[str, dict[str, Any]] = {}
    # only the top level, not digest.tree_files: the shards vLLM and transformers load are
    # there, and a subdirectory (an original/ copy, a draft model) is not part of these weights
    for st in sorted(model_dir.glob("*.safetensors")):
        for name, info in read_safetensors_header(st).items():
            start, end = info["data_offsets"]
            tensors[name] = {"dtype": info["dtype"], "shape": info["shape"],
                             "bytes": int(end) - int(start)}
    return tensors


def read_safetensors_index(model_dir: Path | str) -> dict[str, Any] | None:
    """``model.safetensors.index.json`` of a model directory ({metadata, weight_map}), or None."""
    path = Path(model_dir) / "model.safetensors.index.json"
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelGateError(f"{path} is not valid JSON: {exc}", field="model",
                             fix="restore the checkpoint's model.safetensors.index.json") from exc
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise ModelGateError(f"{path} has no weight_map", field="model",
                             fix="restore the checkpoint's model.safetensors.index.json")
    return index


# A tensor-name fragment every layer of a kind has in a checkpoint (the index cross-check).
_KIND_MARKERS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "q_a_proj", "qkv_proj"),
    "sliding_attention": ("q_proj", "qkv_proj"),
    "mla_attention": ("q_proj", "q_a_proj", "kv_a_proj_with_mqa"),
    "mamba": ("A_log", "in_proj"),
    "mamba1": ("A_log", "in_proj", "x_proj"),
    "gated_delta_net": ("A_log", "in_proj_qkvz", "linear_attn"),
    "mlp": ("up_proj", "fc1"),
    "moe": ("experts", "gate"),
}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def index_layer_mismatches(geometry: ModelGeometry, weight_map: dict[str, Any]) -> list[str]:
    """Disagreements between the geometry's layer list and the checkpoint's tensor names.

    Every layer the geometry has must have tensors, of its kind (``_KIND_MARKERS``); a layer
    index beyond the geometry's is reported unless the config declares multi-token
    prediction layers (``num_nextn_predict_layers``, stored after the decoder layers).
    """
    by_layer: dict[int, list[str]] = {}
    for name in weight_map:
        m = _LAYER_RE.search(name)
        if m and not name.startswith("mtp."):
            by_layer.setdefault(int(m.group(1)), []).append(name)
    problems: list[str] = []
    for i, kind in enumerate(geometry.block_kinds):
        names = by_layer.get(i)
        if not names:
            problems.append(f"layer {i} ({kind}) has no tensors in the index")
            continue
        markers = _KIND_MARKERS.get(kind)
        if markers and not any(mk in n for n in names for mk in markers):
            problems.append(f"layer {i} is {kind} in config.json but its tensors are "
                            f"{sorted(names)[:3]}")
    extra_ok = int(geometry.config.get("num_nextn_predict_layers") or 0)
    extra = sorted(i for i in by_layer if i >= geometry.num_layers + extra_ok)
    if extra:
        problems.append(f"the index has layers {extra[:5]} beyond the {geometry.num_layers} "
                        "of config.json")
    return problems


def weight_bytes(source: ModelGeometry | Path | str) -> int:
    """Total bytes of all tensors in a checkpoint, from the safetensors headers.

    ``source`` is a model directory, or a geometry read from one by ``from_model_dir``.
    The serving memory planner uses this as the weights' footprint.
    """
    if isinstance(source, ModelGeometry):
        if not source.model_dir:
            raise ModelGateError("this geometry was not read from a model directory",
                                 field="model", fix="pass the model directory instead")
        source = source.model_dir
    model_dir = Path(source)
    if model_dir.is_file():
        model_dir = model_dir.parent
    tensors = read_safetensors_shapes(model_dir)
    if not tensors:
        raise ModelGateError(f"no *.safetensors in {model_dir}", field="model",
                             fix="give a directory holding the checkpoint's safetensors files")
    return sum(t["bytes"] for t in tensors.values())


def _module_name(model_type: str, tensor_name: str) -> str:
    """The transformers module name of a checkpoint tensor (without '.weight')."""
    name = tensor_name.removesuffix(".weight")
    for old, new in _CHECKPOINT_PREFIX_RENAMES.get(model_type, []):
        if name.startswith(old):
            name = new + name[len(old):]
    return name


def _override_shapes(geometry: ModelGeometry,
                     tensors: dict[str, dict[str, Any]]) -> ModelGeometry:
    """Replace config-derived shapes by the checkpoint's real ones where a tensor exists."""
    shapes: dict[str, list[int]] = {}
    for tname, info in tensors.items():
        if tname.endswith(".weight") and len(info["shape"]) >= 2:
            shapes[_module_name(geometry.model_type, tname)] = info["shape"]
    layers = []
    for lin in geometry.linear_layers:
        shape = shapes.get(lin.name)
        if shape is not None:
            out_f = int(shape[0])
            # conv1d stores [channels, 1, kernel]; a linear stores [out, in]
            in_f = int(shape[-1]) if len(shape) == 3 else int(shape[1])
            lin = LinearLayer(lin.name, in_f, out_f, lin.kind, lin.module_class)
        layers.append(lin)
    geometry.linear_layers = layers
    geometry.shapes_from = "config+safetensors"
    return geometry


def _geometry_from_tensors(config: dict[str, Any],
                           tensors: dict[str, dict[str, Any]]) -> ModelGeometry:
    """Fallback for unknown architectures: every 2-D ``*.weight`` that is not an embedding."""
    model_type = str(config.get("model_type", ""))
    layers = []
    for tname, info in sorted(tensors.items()):
        if not tname.endswith(".weight") or len(info["shape"]) != 2 or "embed" in tname:
            continue
        name = _module_name(model_type, tname)
        kind = "lm_head" if name == "lm_head" else "linear"
        layers.append(LinearLayer(name, int(info["shape"][1]), int(info["shape"][0]), kind))
    n = int(config.get("num_hidden_layers", 0))
    return ModelGeometry(
        model_type=model_type,
        architecture=str((config.get("architectures") or [""])[0]),
        hidden_size=int(config.get("hidden_size", 0)),
        num_layers=n,
        block_kinds=["unknown"] * n,
        linear_layers=layers,
        vocab_size=int(config.get("vocab_size", 0)),
        shapes_from="safetensors",
        config=config,
        family="safetensors",
    )


def check_model_files(model_dir: Path | str) -> list[str]:
    """Check every safetensors file of a model directory before any stage loads it.

    Each file's header must parse and the file must be exactly as long as its header says
    (8 bytes, the header, then the last tensor's end offset); with an index
    (``model.safetensors.index.json``), every file it names must be there and hold the
    tensors it maps to that file. Returns the files checked; raises ModelGateError naming the
    first file at fault (a truncated download, a copy cut short).
    """
    model_dir = Path(model_dir)
    index = read_safetensors_index(model_dir)
    files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    expected: dict[str, set[str]] = {}
    if index is not None:
        for tensor, fname in index["weight_map"].items():
            expected.setdefault(str(fname), set()).add(str(tensor))
        missing = sorted(set(expected) - set(files))
        if missing:
            raise ModelGateError(
                f"{model_dir}: the index names {missing[0]}, which is not there",
                field="modelgate_model.path",
                fix="restore the missing shard (re-download or copy the whole checkpoint)")
    if not files:
        raise ModelGateError(f"{model_dir} holds no *.safetensors file",
                             field="modelgate_model.path",
                             fix="point it at a checkpoint directory saved as safetensors")
    for fname in files:
        path = model_dir / fname
        try:
            header, length = _header_and_length(path)
            end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
        except (OSError, InputError, ValueError, KeyError, TypeError, IndexError,
                AttributeError) as exc:
            why = exc.message if isinstance(exc, InputError) else str(exc)
            raise ModelGateError(
                f"{path} is not a readable safetensors file ({why})",
                field="modelgate_model.path",
                fix="re-download or regenerate the checkpoint") from exc
        size = path.stat().st_size
        if size != 8 + length + end:
            raise ModelGateError(
                f"{path} is {size} bytes but its header describes {8 + length + end}"
                f" ({'truncated' if size < 8 + length + end else 'trailing bytes'})",
                field="modelgate_model.path",
                fix="re-download or regenerate the checkpoint (the file was cut short)")
        lacking = sorted(expected.get(fname, set()) - set(header))
        if lacking:
            raise ModelGateError(
                f"{path} lacks {len(lacking)} tensors its index maps to it (e.g. {lacking[0]})",
                field="modelgate_model.path",
                fix="restore the checkpoint's shards and index from one copy")
    return files
