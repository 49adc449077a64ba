"""Recipe preflight against the published Nemotron-Nano-9B-v2 geometry (data-driven)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelgate.cli import main
from modelgate.geometry import LinearLayer, ModelGeometry
from modelgate.preflight import quantized_layers, run_preflight
from modelgate.recipes import build_recipe, default_ignore

DATA = Path(__file__).resolve().parent.parent / "data" / "nemotron_nano_9b_v2"
GEOMETRY = ModelGeometry.from_model_dir(DATA)
N_DOWN_PROJ = 25  # one per MLP block ('-') in the hybrid pattern

# (group_size, backend, extra ignore, ok, failing layer families, suggested group size)
CASES = [
    (128, None, [], False, {"down_proj"}, 64),
    (128, "vllm-cuda", [], False, {"down_proj"}, 64),
    (128, "vllm-cpu", [], False, {"down_proj"}, 64),
    (64, "vllm-cuda", [], True, set(), None),
    (64, "vllm-cpu", [], True, set(), None),
    (64, None, [], True, set(), None),
    # 32 divides 15680, but no Hopper kernel takes down_proj: Machete lacks group 32 and
    # Marlin needs in_features % 128 == 0
    (32, "vllm-cuda", [], False, {"down_proj"}, 64),
    (32, "vllm-cpu", [], True, set(), None),
    # ignoring down_proj makes group 128 work everywhere
    (128, "vllm-cuda", ["re:.*\\.down_proj$"], True, set(), None),
    (128, "vllm-cpu", ["re:.*down_proj$"], True, set(), None),
]


@pytest.mark.parametrize(("gs", "backend", "extra", "ok", "families", "suggested"), CASES)
def test_nemotron_nano_9b_cases(gs, backend, extra, ok, families, suggested):
    recipe = build_recipe("w4a16", group_size=gs, ignore=default_ignore() + extra)
    report = run_preflight(GEOMETRY, recipe, backend)
    assert report.ok is ok, report.summary
    assert {f.layer.rsplit(".", 1)[-1] for f in report.findings} == families
    assert report.suggested_group_size == suggested
    if not ok:
        assert len({f.layer for f in report.findings}) == N_DOWN_PROJ
        assert all(f.fix for f in report.findings)


def test_group_128_names_each_down_proj_and_the_fix():
    report = run_preflight(GEOMETRY, build_recipe("w4a16", group_size=128), "vllm-cuda")
    first = report.findings[0]
    assert first.layer == "model.layers.1.mixer.down_proj"
    assert "15680" in first.problem and "128" in first.problem
    assert "group size 64" in first.fix and "down_proj" in first.fix
    assert "25 of 120" in report.summary


def test_ignore_list_skips_lm_head_and_conv1d():
    quantized, ignored = quantized_layers(GEOMETRY, build_recipe("w4a16"))
    names = {q.name for q in quantized}
    assert "lm_head" in ignored and "lm_head" not in names
    assert not any(n.endswith("conv1d") for n in names)  # Conv1d is not a Linear target
    assert len(quantized) == 27 * 2 + 4 * 4 + 25 * 2


def small_geometry(out_features: int, in_features: int = 256) -> ModelGeometry:
    layer = LinearLayer("model.layers.0.mlp.up_proj", in_features, out_features, "mlp")
    return ModelGeometry("llama", "LlamaForCausalLM", 256, 1, ["attention"], [layer])


@pytest.mark.parametrize(("out_features", "backend", "ok"), [
    (96, "vllm-cpu", True),     # 96 = 3 x 32
    (80, "vllm-cpu", False),    # field notes: vLLM CPU W4A16 needs out % 32 == 0
    (80, None, True),           # quantizing alone does not care about out_features
    (192, "vllm-cuda", True),   # Marlin: out % 64 == 0, in 256 % 128 == 0
    (160, "vllm-cuda", False),  # neither Machete (out % 128) nor Marlin (out % 64)
])
def test_output_size_rules(out_features, backend, ok):
    report = run_preflight(small_geometry(out_features), build_recipe("w4a16", group_size=64),
                           backend)
    assert report.ok is ok
    if not ok:
        assert str(out_features) in report.findings[0].problem


def test_non_group_recipes_skip_group_rules():
    assert run_preflight(GEOMETRY, build_recipe("fp8-dynamic"), "vllm-cuda").ok
    assert run_preflight(GEOMETRY, build_recipe("none"), "vllm-cpu").ok


def test_tensor_parallel_shards_row_parallel_inputs():
    # over 2 GPUs the MLP's 15680 splits into 7840 = 64 x 122.5: down_proj's input shard
    # and up_proj's output shard fit neither Machete nor Marlin
    report = run_preflight(GEOMETRY, build_recipe("w4a16", group_size=64), "vllm-cuda",
                           tensor_parallel_size=2)
    assert not report.ok
    assert {f.layer.rsplit(".", 1)[-1] for f in report.findings} == {"down_proj", "up_proj"}
    assert run_preflight(GEOMETRY, build_recipe("w4a16", group_size=64), "vllm-cuda").ok


@pytest.mark.parametrize(("argv", "code"), [
    (["--group-size", "128", "--backend", "vllm-cuda"], 1),
    (["--group-size", "64", "--backend", "vllm-cuda"], 0),
    (["--group-size", "128", "--ignore", "re:.*down_proj$"], 0),
    (["--group-size", "63"], 2),
])
def test_cli_exit_codes(argv, code, capsys):
    rc = main(["preflight", "--model-config", str(DATA / "config.json"), "--recipe", "w4a16",
               *argv], modules=("modelgate.preflight",))
    assert rc == code
    out = json.loads(capsys.readouterr().out)
    assert ("error" in out) if code == 2 else (out["ok"] is (code == 0))


def test_the_serving_gpus_kernels_decide():
    # in_features 192: Machete (in % 64) takes it, Marlin (in % 128) does not. Hopper has both
    # (gpu_host reads the architecture from compute capability 9.0); Ampere has Marlin alone.
    geometry = small_geometry(256, in_features=192)
    recipe = build_recipe("w4a16", group_size=64)
    assert run_preflight(geometry, recipe, "vllm-cuda").ok
    assert run_preflight(geometry, recipe, "vllm-cuda", cuda_kernels=["machete", "marlin"]).ok
    ampere = run_preflight(geometry, recipe, "vllm-cuda", cuda_kernels=["marlin"])
    assert not ampere.ok
    assert "this GPU's W4A16 kernel" in ampere.findings[0].problem
    assert "Machete" not in ampere.findings[0].problem
