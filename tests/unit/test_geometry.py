"""ModelGeometry from config.json and safetensors headers (no torch)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.geometry import (
    ModelGeometry,
    check_model_files,
    read_safetensors_header,
    weight_bytes,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "nemotron_nano_9b_v2"


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """Write a valid safetensors file with zeroed data; return the data size in bytes."""
    sizes = {"BF16": 2, "F32": 4, "I32": 4, "U8": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return offset


def test_nemotron_nano_9b_block_kinds_and_counts():
    g = ModelGeometry.from_model_dir(DATA / "config.json")
    assert g.model_type == "nemotron_h"
    assert g.architecture == "NemotronHForCausalLM"
    assert g.num_layers == 56 and g.hidden_size == 4480
    assert g.block_kinds.count("mamba") == 27
    assert g.block_kinds.count("attention") == 4
    assert g.block_kinds.count("mlp") == 25
    assert g.is_hybrid
    pattern = g.config["hybrid_override_pattern"]
    assert g.block_kinds[pattern.index("*")] == "attention"
    assert g.block_kinds[14] == "attention" and g.block_kinds[13] == "mamba"


@pytest.mark.parametrize(
    ("name", "in_features", "out_features", "kind"),
    [
        # in_proj packs z (128*80) + conv input (10240 + 2*8*128) + dt (128 heads)
        ("model.layers.0.mixer.in_proj", 4480, 10240 + 12288 + 128, "mamba"),
        ("model.layers.0.mixer.out_proj", 10240, 4480, "mamba"),
        ("model.layers.0.mixer.conv1d", 4, 12288, "conv1d"),
        ("model.layers.1.mixer.up_proj", 4480, 15680, "mlp"),
        ("model.layers.1.mixer.down_proj", 15680, 4480, "mlp"),
        ("model.layers.14.mixer.q_proj", 4480, 40 * 128, "attention"),
        ("model.layers.14.mixer.k_proj", 4480, 8 * 128, "attention"),
        ("model.layers.14.mixer.o_proj", 5120, 4480, "attention"),
        ("lm_head", 4480, 131072, "lm_head"),
    ],
)
def test_nemotron_nano_9b_layer_shapes(name, in_features, out_features, kind):
    layer = ModelGeometry.from_model_dir(DATA).layer(name)
    assert (layer.in_features, layer.out_features, layer.kind) == (
        in_features, out_features, kind)


def test_safetensors_shapes_override_config_and_backbone_prefix_is_renamed(tmp_path):
    config = json.loads((DATA / "config.json").read_text())
    config.update(hybrid_override_pattern="M-", num_hidden_layers=2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    # checkpoints store Nemotron-H under "backbone."; transformers names the module "model."
    size = write_safetensors(tmp_path / "model.safetensors", {
        "backbone.layers.1.mixer.down_proj.weight": ("BF16", [4480, 15616]),
        "backbone.layers.1.mixer.up_proj.weight": ("BF16", [15616, 4480]),
        "backbone.norm_f.weight": ("F32", [4480]),
    })
    g = ModelGeometry.from_model_dir(tmp_path)
    assert g.shapes_from == "config+safetensors"
    down = g.layer("model.layers.1.mixer.down_proj")
    assert (down.in_features, down.out_features) == (15616, 4480)
    assert g.layer("model.layers.0.mixer.out_proj").in_features == 10240  # config-derived
    assert weight_bytes(tmp_path) == size == weight_bytes(g)
    assert "__metadata__" not in read_safetensors_header(tmp_path / "model.safetensors")


def test_llama_like_generic_path():
    g = ModelGeometry.from_config({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 176, "vocab_size": 1000,
    })
    assert g.num_layers == 2 and not g.is_hybrid
    assert g.layer("model.layers.1.self_attn.k_proj").out_features == 32
    assert g.layer("model.layers.0.mlp.down_proj").in_features == 176
    assert len(g.linear_layers) == 2 * 7 + 1


def test_unknown_architecture_falls_back_to_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    write_safetensors(tmp_path / "model.safetensors", {
        "encoder.proj.weight": ("BF16", [96, 32]), "embed.weight": ("BF16", [10, 32])})
    g = ModelGeometry.from_model_dir(tmp_path)
    assert [(x.name, x.in_features, x.out_features) for x in g.linear_layers] == [
        ("encoder.proj", 32, 96)]


def test_missing_config_names_the_input(tmp_path):
    with pytest.raises(ModelGateError) as err:
        ModelGeometry.from_model_dir(tmp_path)
    assert err.value.field == "model_config"
    with pytest.raises(ModelGateError):
        ModelGeometry.from_config({"model_type": "mystery"})


def test_generated_source_reads_a_config_transformers_5_saved(tmp_path):
    """transformers 5 writes non-finite floats as {"__float__": "Infinity"} (the embedded
    tiny hybrid's own saved config.json has time_step_limit [0.0, that]); generating a model
    from such a config must read it back as a float, not hand transformers a dict."""
    from modelgate.model_source import ConfigModelSpec

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "nemotron_h",
                                "time_step_limit": [0.0, {"__float__": "Infinity"}],
                                "nested": {"__float__": "-Infinity", "x": 1}}))
    config = ConfigModelSpec(str(path)).config()
    assert config["time_step_limit"] == [0.0, float("inf")]
    assert config["nested"] == {"__float__": "-Infinity", "x": 1}  # not the encoding: kept


def _st_file(path: Path, names: list[str], cut: int = 0) -> None:
    header = {n: {"dtype": "F32", "shape": [4], "data_offsets": [16 * i, 16 * i + 16]}
              for i, n in enumerate(names)}
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(16 * len(names))
    path.write_bytes(data[:len(data) - cut])


def test_model_files_agree_with_their_headers_and_index(tmp_path: Path) -> None:
    _st_file(tmp_path / "model-1.safetensors", ["a", "b"])
    _st_file(tmp_path / "model-2.safetensors", ["c"])
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-1.safetensors", "b": "model-1.safetensors", "c": "model-2.safetensors"}}))
    assert check_model_files(tmp_path) == ["model-1.safetensors", "model-2.safetensors"]
    _st_file(tmp_path / "model-2.safetensors", ["c"], cut=5)
    with pytest.raises(ModelGateError, match=r"model-2.safetensors is .*truncated"):
        check_model_files(tmp_path)
    _st_file(tmp_path / "model-2.safetensors", ["d"])
    with pytest.raises(ModelGateError, match="lacks 1 tensors its index maps to it"):
        check_model_files(tmp_path)
    (tmp_path / "model-2.safetensors").unlink()
    with pytest.raises(ModelGateError, match=r"the index names model-2.safetensors"):
        check_model_files(tmp_path)
    (tmp_path / "model-1.safetensors").write_bytes(b"\xff" * 4)
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelGateError, match="not a readable safetensors file"):
        check_model_files(tmp_path)
