"""Recipe presets and user recipe files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from modelgate.errors import ModelGateError
from modelgate.recipes import PRESETS, build_recipe, load_recipe_file, recipe_with_ignore


def gptq_args(recipe):
    return recipe.stages["quant_stage"]["quant_modifiers"]["GPTQModifier"]


def test_w4a16_uses_current_llmcompressor_spelling():
    r = build_recipe("w4a16", group_size=64)
    weights = gptq_args(r)["config_groups"]["group_0"]["weights"]
    assert weights == {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                       "group_size": 64, "observer": "memoryless_mse", "actorder": "weight"}
    assert r.is_weight_only_int4 and r.needs_calibration and r.group_size == 64
    assert "lm_head" in r.ignore and "re:.*conv1d" in r.ignore


def test_yaml_round_trips_and_digest_tracks_content():
    a, b = build_recipe("w4a16", group_size=64), build_recipe("w4a16", group_size=128)
    assert yaml.safe_load(a.to_yaml()) == a.stages
    assert a.digest == build_recipe("w4a16", group_size=64).digest
    assert a.digest != b.digest
    assert a.digest != build_recipe("w4a16", group_size=64, ignore=["lm_head"]).digest


@pytest.mark.parametrize(("name", "modifier", "calib", "act_bits"), [
    ("fp8-dynamic", "QuantizationModifier", False, 8),
    ("w8a8-int8", "GPTQModifier", True, 8),
])
def test_other_presets(name, modifier, calib, act_bits):
    r = build_recipe(name)
    assert list(r.stages["quant_stage"]["quant_modifiers"]) == [modifier]
    assert r.needs_calibration is calib and r.activation_bits == act_bits
    assert not r.is_weight_only_int4


def test_none_is_the_baseline():
    r = build_recipe("none")
    assert r.is_baseline and r.to_yaml() == "" and not r.needs_calibration
    assert set(PRESETS) == {"w4a16", "fp8-dynamic", "w8a8-int8", "none"}


@pytest.mark.parametrize(("name", "kwargs", "field"), [
    ("w5a5", {}, "recipe"),
    ("fp8-dynamic", {"group_size": 64}, "group_size"),
    ("w4a16", {"group_size": 33}, "group_size"),
])
def test_bad_inputs_name_the_field(name, kwargs, field):
    with pytest.raises(ModelGateError) as err:
        build_recipe(name, **kwargs)
    assert err.value.field == field and err.value.fix


def test_user_recipe_file_is_summarised(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(build_recipe("w4a16", group_size=32, ignore=["lm_head"]).to_yaml())
    r = build_recipe(str(path))
    assert r.name == "file:my.yaml" and r.source_file == str(path.resolve())
    assert (r.group_size, r.weight_bits, r.weight_strategy) == (32, 4, "group")
    assert r.ignore == ["lm_head"] and r.is_weight_only_int4
    assert r.digest == build_recipe("w4a16", group_size=32, ignore=["lm_head"]).digest


@pytest.mark.parametrize(("modifier", "calib"), [
    ("SparseGPTModifier", True), ("WandaPruningModifier", True),
    ("SmoothQuantModifier", True), ("QuantizationModifier", False)])
def test_a_recipe_file_calibrates_unless_it_only_rounds(tmp_path, modifier, calib):
    # the negative end-to-end test's pruned candidate is a SparseGPT file with no quant scheme
    path = tmp_path / "r.yaml"
    path.write_text(f"prune_stage:\n  prune_modifiers:\n    {modifier}: {{targets: [Linear]}}\n")
    r = load_recipe_file(path)
    assert r.needs_calibration is calib and r.weight_bits is None and not r.is_baseline


def test_the_pruned_test_candidate_is_a_calibrated_sparsegpt_recipe():
    r = load_recipe_file(Path(__file__).parents[1] / "integration/data/recipes/sparsegpt-70.yaml")
    assert r.needs_calibration and r.weight_bits is None
    assert "SparseGPTModifier" in r.to_yaml()


def test_user_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: a mapping\n")
    with pytest.raises(ModelGateError, match="_stage"):
        load_recipe_file(bad)
    with pytest.raises(ModelGateError, match="does not exist"):
        load_recipe_file(tmp_path / "missing.yaml")


def test_recipe_with_ignore_adds_patterns_everywhere():
    r = recipe_with_ignore(build_recipe("w4a16", ignore=["lm_head"]), ["re:.*down_proj$"])
    assert r.ignore == ["lm_head", "re:.*down_proj$"]
    assert gptq_args(r)["ignore"] == ["lm_head", "re:.*down_proj$"]
