"""The variant set is checked as a whole before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelgate.cpu_kernels import from_answers
from modelgate.errors import ModelGateError
from modelgate.geometry import ModelGeometry
from modelgate.preflight import run_preflight
from modelgate.recipes import build_recipe
from modelgate.variant_set import check_run_inputs, check_variant_set

DEFAULT = [  # the embedded default's list
    {"name": "bf16", "recipe": "none", "baseline": True},
    {"name": "w8a8", "recipe": "w8a8-int8"},
    {"name": "w4a16", "recipe": "w4a16", "group_size": 64, "if_servable": True},
]
DATA = Path(__file__).resolve().parents[1] / "data"


def _kernels(tmp_path: Path, avx512: bool):
    ops = ["onednn_scaled_mm", "dynamic_scaled_int8_quant"] + (["cpu_gemm_wna16"] if avx512
                                                               else [])
    stem = "_C_AVX512" if avx512 else "_C_AVX2"
    (tmp_path / f"{stem}.abi3.so").write_bytes(b"".join(o.encode() + b"(\0" for o in ops))
    return from_answers({"machine": "x86_64", "avx512": avx512, "avx512_bf16": False,
                         "vllm_dir": str(tmp_path)}, "test")


def test_avx2_leaves_w4a16_out_with_the_reason(tmp_path: Path) -> None:
    decided = check_variant_set(DEFAULT, backend="vllm-cpu", kernels=_kernels(tmp_path, False))
    assert [v["name"] for v in decided.variants] == ["bf16", "w8a8"]
    assert [d["name"] for d in decided.left_out] == ["w4a16"]
    assert "cpu_gemm_wna16" in decided.left_out[0]["reason"]
    assert "left out w4a16" in decided.summary
    assert decided.kernels and decided.kernels["isa"] == "avx2"


def test_avx512_keeps_every_candidate_without_the_flag(tmp_path: Path) -> None:
    decided = check_variant_set(DEFAULT, backend="vllm-cpu", kernels=_kernels(tmp_path, True))
    assert [v["name"] for v in decided.variants] == ["bf16", "w8a8", "w4a16"]
    assert not decided.left_out and all("if_servable" not in v for v in decided.variants)


def test_an_unservable_variant_without_the_flag_stops_the_run(tmp_path: Path) -> None:
    variants = [DEFAULT[0], {"name": "w4a16", "recipe": "w4a16"}]
    with pytest.raises(ModelGateError) as err:
        check_variant_set(variants, backend="vllm-cpu", kernels=_kernels(tmp_path, False))
    assert "w4a16" in str(err.value) and "AVX2" in str(err.value) and "Fix:" in str(err.value)


def test_nothing_left_to_compare_is_an_error(tmp_path: Path) -> None:
    variants = [DEFAULT[0], DEFAULT[2]]
    with pytest.raises(ModelGateError, match="no candidate is left"):
        check_variant_set(variants, backend="vllm-cpu", kernels=_kernels(tmp_path, False))


def test_other_backends_do_not_look_at_cpu_kernels(tmp_path: Path) -> None:
    decided = check_variant_set(DEFAULT, backend="vllm-cuda", kernels=_kernels(tmp_path, False))
    assert len(decided.variants) == 3 and decided.kernels is None


@pytest.mark.parametrize(("variants", "field", "words"), [
    ([], "modelgate_variants", "no variants"),
    ([{"name": "a", "recipe": "none", "baseline": True}, {"name": "a", "recipe": "w4a16"}],
     "modelgate_variants[1].name", "two variants are named 'a'"),
    ([{"name": "a", "recipe": "none"}, {"name": "b", "recipe": "w4a16"}],
     "modelgate_variants", "no variant is the baseline"),
    ([{"name": "a", "recipe": "none", "baseline": True},
      {"name": "b", "recipe": "none", "baseline": True}], "modelgate_variants", "2 variants"),
    ([{"name": "a", "recipe": "none", "baseline": True}, {"name": "b", "recipe": "w4a61"}],
     "modelgate_variants[1].recipe", "unknown recipe 'w4a61'"),
    ([{"name": "a", "recipe": "none", "baseline": True}, {"name": "b", "recipie": "w4a16"}],
     "modelgate_variants[1].recipie", "unknown keys"),
    ([{"name": "a", "recipe": "none", "baseline": True}, {"recipe": "w4a16"}],
     "modelgate_variants[1].name", "has no name"),
])
def test_bad_sets_name_the_field(variants, field: str, words: str) -> None:
    with pytest.raises(ModelGateError) as err:
        check_variant_set(variants)
    assert err.value.field == field and words in err.value.message and err.value.fix


def test_a_stored_baseline_needs_no_baseline_variant() -> None:
    decided = check_variant_set([{"name": "w4a16", "recipe": "w4a16"}], stored_baseline=True)
    assert [v["name"] for v in decided.variants] == ["w4a16"]


def test_preflight_refuses_what_the_kernels_lack(tmp_path: Path) -> None:
    geometry = ModelGeometry.from_model_dir(DATA / "nemotron_nano_9b_v2")
    recipe = build_recipe("w4a16", group_size=64)
    report = run_preflight(geometry, recipe, "vllm-cpu", kernels=_kernels(tmp_path, False))
    assert not report.ok and "cpu_gemm_wna16" in report.summary
    assert "w8a8-int8" in report.findings[0].fix
    avx512 = tmp_path / "avx512"
    avx512.mkdir()
    # with the kernel there, only the layer shapes decide: group 64 fits every 9B layer
    fits = run_preflight(geometry, recipe, "vllm-cpu", kernels=_kernels(avx512, True))
    assert fits.ok, fits.summary


def test_every_variant_left_out_is_an_error_even_with_a_stored_baseline(tmp_path: Path) -> None:
    with pytest.raises(ModelGateError, match="every variant was left out"):
        check_variant_set([DEFAULT[2]], backend="vllm-cpu", kernels=_kernels(tmp_path, False),
                          stored_baseline=True)


GOOD_INPUTS = {"target": "local", "quantize_runner": "local",
               "serving": {"port": 8000, "max_model_len": 1024, "overrides": {}},
               "calibration": {"num_samples": 32, "max_seq_length": 128},
               "validate_rounds": 2, "load_profile": "ci", "load_overrides": {},
               "gate_policy": "", "gate_tolerances": {}}


def test_good_inputs_pass_and_say_what_was_decided() -> None:
    decided = check_run_inputs(GOOD_INPUTS)
    assert decided["load_profile"] == "ci"
    assert decided["gate_policy"].endswith("gate_policy_default.yaml")
    assert check_run_inputs({"validate_rounds": "3"}) == {}  # an extra var's digits count


@pytest.mark.parametrize(("change", "fragment"), [
    ({"validate_rounds": 0}, "modelgate_validate_rounds must be between 1"),
    ({"validate_rounds": "two"}, "modelgate_validate_rounds must be a whole number"),
    ({"validate_rounds": True}, "modelgate_validate_rounds must be a whole number"),
    ({"serving": {"port": 65536}}, "modelgate_serving.port must be between 1 and 65535"),
    ({"serving": {"max_model_len": 0}}, "modelgate_serving.max_model_len"),
    ({"calibration": {"max_seq_length": 10**9}}, "modelgate_calibration.max_seq_length"),
    ({"target": "triton"}, "modelgate_target 'triton' is not built"),
    ({"load_profile": "heavy"}, "unknown load profile 'heavy'"),
    ({"load_overrides": {"rate": [1]}}, "modelgate_load_overrides.rate"),
    ({"gate_tolerances": {"latency": -0.5}}, "modelgate_gate_latency_tolerance"),
])
def test_a_bad_input_is_named_with_its_fix(change: dict, fragment: str) -> None:
    with pytest.raises(ModelGateError) as err:
        check_run_inputs({**GOOD_INPUTS, **change})
    assert fragment in str(err.value)
    assert err.value.fix


def test_a_gate_policy_file_is_parsed_by_the_gates_own_parser(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("checks:\n  - {metric: ttft_fast, statistic: p50, tolerance: 0.1}\n")
    with pytest.raises(ModelGateError) as err:
        check_run_inputs({"gate_policy": str(policy)})
    assert "ttft_fast" in str(err.value)
    assert err.value.field and err.value.field.startswith("modelgate_gate_policy")
