"""The quantize stage against the real LLM Compressor, on the tiny generated hybrid model.

Environment (set by scripts/pytest.sh):
  MODELGATE_QUANTIZE_PYTHON  the quantize virtualenv's python (llmcompressor 0.14, torch CPU)
  MODELGATE_TEST_MODEL       the tiny generated Nemotron-H model directory (BF16 + tokenizer)
Each test skips with the reason when its variable is unset.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import tool_path
from modelgate.geometry import ModelGeometry
from modelgate.preflight import run_preflight
from modelgate.quantize import (
    CalibrationSpec,
    _job_env,
    model_digest,
    probe_tool_versions,
    quantization_key,
    quantize_variant,
)
from modelgate.recipes import build_recipe

pytestmark = pytest.mark.needs_tools

# Parsed by LLM Compressor's own recipe parser; prints what it understood.
PARSE_SCRIPT = """
import json, sys
from llmcompressor.recipe import Recipe
recipe = Recipe.create_instance(sys.stdin.read())
out = []
for m in recipe.modifiers:
    cfg = m.resolve_quantization_config()
    group = next(iter(cfg.config_groups.values()))
    w = group.weights
    out.append({"modifier": type(m).__name__, "ignore": list(m.ignore),
                "num_bits": w.num_bits, "type": str(w.type), "strategy": str(w.strategy),
                "group_size": w.group_size, "observer": w.observer,
                "actorder": None if w.actorder is None else str(w.actorder),
                "act_bits": group.input_activations.num_bits
                if group.input_activations else None})
print(json.dumps(out))
"""


@pytest.mark.parametrize(("name", "modifier", "expected"), [
    ("w4a16", "GPTQModifier", {"num_bits": 4, "group_size": 64, "strategy": "group",
                               "observer": "memoryless_mse", "actorder": "weight",
                               "act_bits": None}),
    ("fp8-dynamic", "QuantizationModifier", {"num_bits": 8, "strategy": "channel",
                                             "act_bits": 8}),
    ("w8a8-int8", "GPTQModifier", {"num_bits": 8, "strategy": "channel", "act_bits": 8}),
])
def test_recipe_yaml_parses_in_llmcompressor(name, modifier, expected):
    python = tool_path("MODELGATE_QUANTIZE_PYTHON")
    recipe = build_recipe(name, group_size=64 if name == "w4a16" else None)
    proc = subprocess.run([str(python), "-c", PARSE_SCRIPT], input=recipe.to_yaml(),
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **_job_env()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (parsed,) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed["modifier"] == modifier
    assert parsed["ignore"] == recipe.ignore
    for key, value in expected.items():
        got = parsed[key]
        assert (got.split(".")[-1].lower() if isinstance(got, str) else got) == value, key


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> CalibrationSpec:
    words = ["the", "scales", "of", "each", "group", "are", "chosen", "to", "minimise",
             "squared", "error", "while", "calibration", "text", "flows", "through", "every",
             "mamba", "attention", "and", "mlp", "layer"]
    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    with path.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"text": " ".join(words[(i + j) % len(words)]
                                                 for j in range(48))}) + "\n")
    return CalibrationSpec([path], num_samples=16, max_seq_length=128)


def test_quantize_tiny_model_w4a16_then_unchanged(tmp_path, calibration):
    python = str(tool_path("MODELGATE_QUANTIZE_PYTHON"))
    model = tool_path("MODELGATE_TEST_MODEL")
    recipe = build_recipe("w4a16", group_size=64)
    assert run_preflight(ModelGeometry.from_model_dir(model), recipe, "vllm-cpu").ok
    store = tmp_path / "store"
    # a leftover of an interrupted run of the same key must be cleaned, never reused
    key = quantization_key(model_digest(model), recipe, calibration.digest,
                           probe_tool_versions(python))
    stale = store / f".tmp-{key}-999999"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")

    lines: list[str] = []
    started = time.monotonic()
    first = quantize_variant(model, store, recipe, calibration, python, lines.append)
    wall = time.monotonic() - started
    print(f"\nquantize tiny model W4A16 (16 x 128 tokens): {wall:.1f} s wall, "
          f"job {first.provenance['elapsed_s']} s, peak RSS "
          f"{first.provenance['peak_rss_bytes'] / 2**20:.0f} MiB")

    out = Path(first.path)
    assert first.changed and first.key == key and out == store / key
    assert not stale.exists() and not list(store.glob(".tmp-*"))
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (4, 64, "group")
    assert "lm_head" in qc["ignore"]
    assert (out / "recipe.yaml").read_text() == recipe.to_yaml()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["recipe_digest"] == recipe.digest
    assert prov["source_model_digest"] == model_digest(model)
    assert prov["calibration_digest"] == calibration.digest
    assert prov["calibration_token_digest"].startswith("sha256:")
    assert prov["calibration_samples"] == 16
    assert set(prov["tool_versions"]) >= {"llmcompressor", "compressed-tensors",
                                          "transformers", "torch"}
    n_layers = ModelGeometry.from_model_dir(model).num_layers
    layer_lines = [x for x in lines if x.startswith("layer ")]
    assert len(layer_lines) == n_layers and layer_lines[-1].startswith(f"layer {n_layers}/")
    assert (out / "progress.log").read_text().count("layer ") == n_layers
    assert (out / "tokenizer.json").is_file()

    started = time.monotonic()
    second = quantize_variant(model, store, recipe, calibration, python, lines.append)
    assert second.changed is False and second.path == first.path
    assert second.provenance == prov
    assert time.monotonic() - started < 30  # only digests and a version probe
