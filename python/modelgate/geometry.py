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
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError

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
        if model_type == "nemotron_h" or "hybrid_override_pattern" in config:
            kinds, layers = _nemotron_h_layers(config)
        elif "num_hidden_layers" in config and "hidden_size" in config:
            kinds, layers = _llama_like_layers(config)
        else:
            raise ModelGateError(
                f"cannot derive layer shapes for model_type {model_type!r} from config.json",
                field="model_config",
                fix="give the model directory with its *.safetensors files, whose headers "
                "carry every tensor shape",
            )
        return cls(
            model_type=model_type,
            architecture=str(archs[0]),
            hidden_size=int(config.get("hidden_size", 0)),
            num_layers=len(kinds),
            block_kinds=kinds,
            linear_layers=layers,
            vocab_size=int(config.get("vocab_size", 0)),
            config=config,
        )

    @classmethod
    def from_model_dir(cls, path: Path | str) -> ModelGeometry:
        """Read a model directory (or a config.json path); safetensors shapes win over config."""
        path = Path(path)
        config_path = path if path.is_file() else path / "config.json"
        if not config_path.is_file():
            raise ModelGateError(
                f"no config.json at {config_path}",
                field="model_config",
                fix="point at a Hugging Face model directory or its config.json",
            )
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelGateError(
                f"{config_path} is not valid JSON: {exc}", field="model_config",
                fix="restore the model's config.json",
            ) from exc
        model_dir = config_path.parent
        tensors = read_safetensors_shapes(model_dir)
        try:
            geometry = cls.from_config(config)
        except ModelGateError:
            if not tensors:
                raise
            geometry = _geometry_from_tensors(config, tensors)
        if tensors:
            geometry = _override_shapes(geometry, tensors)
        geometry.model_dir = str(model_dir)
        return geometry


def _cfg_int(config: dict[str, Any], *keys: str, default: int | None = None) -> int:
    """The first of ``keys`` present in config, as int; error naming the key when none is."""
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    if default is not None:
        return default
    raise ModelGateError(
        f"config.json lacks {keys[0]!r}", field="model_config",
        fix=f"add {keys[0]} to config.json (or give the model directory with safetensors)",
    )


def nemotron_h_block_kinds(config: dict[str, Any]) -> list[str]:
    """Per-layer block kinds of a Nemotron-H config (pattern string or layer-type list)."""
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        unknown = sorted(set(pattern) - set(NEMOTRON_H_PATTERN))
        if unknown:
            raise ModelGateError(
                f"hybrid_override_pattern has unknown block characters {unknown}",
                field="model_config", fix="use only M (mamba), * (attention), - (MLP), E (MoE)",
            )
        return [NEMOTRON_H_PATTERN[c] for c in pattern]
    types = config.get("layers_block_type") or config.get("layer_types")
    if isinstance(types, list) and types:
        return [_BLOCK_KIND_ALIASES.get(str(t), str(t)) for t in types]
    raise ModelGateError(
        "Nemotron-H config has neither hybrid_override_pattern nor layers_block_type",
        field="model_config", fix="restore the model's config.json",
    )


def _nemotron_h_layers(config: dict[str, Any]) -> tuple[list[str], list[LinearLayer]]:
    """Layers of transformers' NemotronHForCausalLM (modeling_nemotron_h.py)."""
    kinds = nemotron_h_block_kinds(config)
    hidden = _cfg_int(config, "hidden_size")
    layers: list[LinearLayer] = []
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}.mixer"
        if kind == "mamba":
            heads = _cfg_int(config, "mamba_num_heads")
            inner = heads * _cfg_int(config, "mamba_head_dim")
            conv_dim = inner + 2 * _cfg_int(config, "n_groups", default=1) * _cfg_int(
                config, "ssm_state_size"
            )
            layers += [
                # in_proj packs [gate z | conv input x,B,C | dt] (NemotronHMamba2Mixer)
                LinearLayer(f"{p}.in_proj", hidden, inner + conv_dim + heads, "mamba"),
                # depthwise: weight [conv_dim, 1, kernel]; in_features = the kernel width
                LinearLayer(f"{p}.conv1d", _cfg_int(config, "conv_kernel", default=4),
                            conv_dim, "conv1d", "Conv1d"),
                LinearLayer(f"{p}.out_proj", inner, hidden, "mamba"),
            ]
        elif kind == "attention":
            heads = _cfg_int(config, "num_attention_heads")
            kv = _cfg_int(config, "num_key_value_heads", default=heads)
            head_dim = _cfg_int(config, "head_dim", "attention_head_dim", default=hidden // heads)
            layers += [
                LinearLayer(f"{p}.q_proj", hidden, heads * head_dim, "attention"),
                LinearLayer(f"{p}.k_proj", hidden, kv * head_dim, "attention"),
                LinearLayer(f"{p}.v_proj", hidden, kv * head_dim, "attention"),
                LinearLayer(f"{p}.o_proj", heads * head_dim, hidden, "attention"),
            ]
        elif kind == "mlp":
            inter = _cfg_int(config, "intermediate_size")
            layers += [
                LinearLayer(f"{p}.up_proj", hidden, inter, "mlp"),
                LinearLayer(f"{p}.down_proj", inter, hidden, "mlp"),
            ]
        elif kind == "moe":
            layers += _nemotron_h_moe(config, p, hidden)
        else:
            raise ModelGateError(
                f"unknown Nemotron-H block kind {kind!r} at layer {i}", field="model_config",
                fix="upgrade modelgate for this block kind",
            )
    layers.append(
        LinearLayer("lm_head", hidden, _cfg_int(config, "vocab_size"), "lm_head")
    )
    return kinds, layers


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


def _llama_like_layers(config: dict[str, Any]) -> tuple[list[str], list[LinearLayer]]:
    """Layers of a Llama-style decoder (LlamaForCausalLM, Mistral, Qwen2, ...)."""
    hidden = _cfg_int(config, "hidden_size")
    n = _cfg_int(config, "num_hidden_layers")
    heads = _cfg_int(config, "num_attention_heads")
    kv = _cfg_int(config, "num_key_value_heads", default=heads)
    head_dim = _cfg_int(config, "head_dim", default=hidden // heads)
    inter = _cfg_int(config, "intermediate_size")
    layers: list[LinearLayer] = []
    for i in range(n):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        layers += [
            LinearLayer(f"{a}.q_proj", hidden, heads * head_dim, "attention"),
            LinearLayer(f"{a}.k_proj", hidden, kv * head_dim, "attention"),
            LinearLayer(f"{a}.v_proj", hidden, kv * head_dim, "attention"),
            LinearLayer(f"{a}.o_proj", heads * head_dim, hidden, "attention"),
            LinearLayer(f"{m}.gate_proj", hidden, inter, "mlp"),
            LinearLayer(f"{m}.up_proj", hidden, inter, "mlp"),
            LinearLayer(f"{m}.down_proj", inter, hidden, "mlp"),
        ]
    layers.append(LinearLayer("lm_head", hidden, _cfg_int(config, "vocab_size"), "lm_head"))
    return ["attention"] * n, layers


# ---------------------------------------------------------------- safetensors headers


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse one safetensors file's header: 8-byte little-endian length, then JSON."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelGateError(f"{path} is too short to be safetensors", field="model",
                                 fix="re-download or regenerate the checkpoint")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise ModelGateError(f"{path}: implausible safetensors header ({length} bytes)",
                                 field="model", fix="re-download or regenerate the checkpoint")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


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
    )
