"""The model stage's ``generated`` source built from a published config.json (exact geometry,
random weights), on a small config shaped like NVIDIA-Nemotron-Nano-9B-v2's, on a CPU.

Environment (set by scripts/pytest.sh):
  MODELGATE_QUANTIZE_PYTHON  a Python with torch, transformers and tokenizers
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tool_path
from modelgate.model_source import ConfigModelSpec, probe_generator_versions, resolve_model

pytestmark = pytest.mark.needs_tools

NINE_B = (Path(__file__).resolve().parents[2] / "bench" / "configs"
          / "nvidia-nemotron-nano-9b-v2.config.json")

# The 9B config with every size shrunk, its layer kinds (M, -, *) and their order kept
SMALL = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024,
         "hybrid_override_pattern": "M-M*-", "num_hidden_layers": 5, "mamba_num_heads": 8,
         "mamba_head_dim": 32, "n_groups": 2, "ssm_state_size": 16,
         "max_position_embeddings": 2048}


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header (8-byte length, then JSON)."""
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def small_config(tmp: Path) -> Path:
    cfg = {**json.loads(NINE_B.read_text()), **SMALL}
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def test_generated_from_config_has_its_exact_geometry(tmp_path: Path) -> None:
    python = str(tool_path("MODELGATE_QUANTIZE_PYTHON"))
    config = small_config(tmp_path)
    store = tmp_path / "store"
    model = resolve_model("generated", store_dir=store, generator_python=python,
                          config=str(config), seed=3)
    assert model.changed
    out = Path(model.path)
    written = json.loads((out / "config.json").read_text())
    for key, value in SMALL.items():
        assert written[key] == value, key
    built = json.loads((out / "modelgate-generated.json").read_text())
    assert built["seed"] == 3 and built["config_digest"].endswith(
        ConfigModelSpec(str(config), 3).config_digest().removeprefix("sha256:"))
    # the tokenizer covers the whole embedding: every id is a token
    tok = json.loads((out / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == SMALL["vocab_size"]
    assert sorted(tok["model"]["vocab"].values()) == list(range(SMALL["vocab_size"]))
    # the weights have the config's shapes (embedding, MLP, Mamba in_proj)
    shapes = {}
    for f in out.glob("*.safetensors"):
        shapes.update(safetensors_shapes(f))
    assert shapes["backbone.embeddings.weight"] == (1024, 256)
    assert shapes["backbone.layers.1.mixer.up_proj.weight"] == (512, 256)
    # Mamba-2 in_proj: 2 * (heads*head_dim) + 2 * groups*state + heads
    assert shapes["backbone.layers.0.mixer.in_proj.weight"] == (2 * 256 + 2 * 2 * 16 + 8, 256)

    # content-addressed: the same config, seed and tools find the same directory
    again = resolve_model("generated", store_dir=store, generator_python=python,
                          config=str(config), seed=3)
    assert not again.changed and again.path == model.path and again.digest == model.digest
    # another seed is another model
    key3 = ConfigModelSpec(str(config), 3).key(probe_generator_versions(python))
    key4 = ConfigModelSpec(str(config), 4).key(probe_generator_versions(python))
    assert key3 != key4 and out.name == f"generated-{key3}"


def test_config_key_follows_the_file_the_seed_and_the_tools(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    tools = {"torch": "2.11.0", "transformers": "5.17.0"}
    base = ConfigModelSpec(str(config), 0).key(tools)
    assert ConfigModelSpec(str(config), 0).key(dict(reversed(tools.items()))) == base
    assert ConfigModelSpec(str(config), 1).key(tools) != base
    assert ConfigModelSpec(str(config), 0).key({**tools, "torch": "2.12.0"}) != base
    config.write_text(config.read_text().replace('"hidden_size": 256', '"hidden_size": 512'))
    assert ConfigModelSpec(str(config), 0).key(tools) != base
