"""Preflight rules on MoE and hybrid families: routers stay in full precision, expert layers
follow vLLM's fused-MoE rules, FP8 block shapes are checked, slow kernel paths are noted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelgate.geometry import ModelGeometry
from modelgate.preflight import quantized_layers, run_preflight
from modelgate.recipes import build_recipe

DATA = Path(__file__).resolve().parents[1] / "data"


def geometry(folder: str) -> ModelGeometry:
    for base in ("model_configs", "model_figures"):
        if (DATA / base / folder).is_dir():
            cfg = json.loads((DATA / base / folder / "config.json").read_text())
            cfg.pop("_comment", None)
            return ModelGeometry.from_config(cfg)
    raise FileNotFoundError(folder)


@pytest.mark.parametrize(("folder", "routers"), [
    ("Mixtral-8x7B-v0.1", 32),  # block_sparse_moe.gate
    ("Qwen3-30B-A3B", 48),  # mlp.gate
    ("gpt-oss-20b", 24),  # mlp.router
    ("granite-4.0-h-small", 40),  # block_sparse_moe.router.layer
    ("Qwen3-Next-80B-A3B", 96),  # mlp.gate and mlp.shared_expert_gate in 48 layers
    ("DeepSeek-V2-Lite", 26),  # mlp.gate of the 26 MoE layers
    ("Jamba-v0.1", 16),  # feed_forward.router of the 16 MoE layers
])
def test_default_ignore_keeps_every_router_in_full_precision(folder, routers):
    g = geometry(folder)
    quantized, ignored = quantized_layers(g, build_recipe("w4a16"))
    names = {x.name for x in g.linear_layers if x.kind == "router"}
    assert len(names) == routers
    assert names <= set(ignored)
    assert not [x for x in quantized if x.kind in ("router", "conv1d", "lm_head")]


def test_the_mamba_and_delta_net_convs_are_never_quantized():
    for folder in ("granite-4.0-h-small", "Qwen3-Next-80B-A3B"):
        g = geometry(folder)
        # Conv1d is not a Linear target, and re:.*conv1d also ignores it by name
        recipe = build_recipe("w4a16")
        convs = [x for x in g.linear_layers if x.kind == "conv1d"]
        assert convs and "re:.*conv1d" in recipe.ignore
        assert not set(convs) & set(quantized_layers(g, recipe)[0])


def test_w4a16_experts_at_tp8_fall_back_to_triton_moe_with_a_note():
    # Qwen3-30B-A3B experts: intermediate 768 / TP 8 = 96, not a multiple of group 128
    report = run_preflight(geometry("Qwen3-30B-A3B"), build_recipe("w4a16"), "vllm-cuda", 8)
    assert report.ok, report.summary  # vLLM still serves it (Triton WNA16 MoE)
    assert any("96 per TP shard not a multiple of 128" in n and "Triton" in n
               for n in report.notes)
    assert not [f for f in report.findings if ".experts." in f.layer]


def test_w4a16_experts_that_fit_fused_marlin_give_no_note():
    report = run_preflight(geometry("Mixtral-8x7B-v0.1"), build_recipe("w4a16"), "vllm-cuda", 8)
    assert report.ok and not [n for n in report.notes if "Marlin MoE" in n]  # 14336 / 8 = 1792


def _fp8_block_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "fp8_block.yaml"
    path.write_text("""
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      ignore: [lm_head, 're:.*mlp\\.gate$']
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 8, type: float, symmetric: true, strategy: block,
                    block_structure: [128, 128], dynamic: false}
          input_activations: {num_bits: 8, type: float, symmetric: true, strategy: group,
                              group_size: 128, dynamic: true}
""")
    return path


def test_fp8_block_experts_that_do_not_divide_stop_at_tp4(tmp_path):
    recipe = build_recipe(str(_fp8_block_recipe(tmp_path)))
    assert recipe.block_structure == [128, 128]
    g = geometry("Qwen3-30B-A3B")
    assert run_preflight(g, recipe, "vllm-cuda", 2).ok  # 768 / 2 = 384 = 3 x 128
    report = run_preflight(g, recipe, "vllm-cuda", 4)  # 768 / 4 = 192: vLLM raises at load
    assert not report.ok
    assert any("192 per TP shard not divisible by FP8 block_n 128" in f.problem
               for f in report.findings)


def test_fp8_block_dense_merged_projections(tmp_path):
    recipe = build_recipe(str(_fp8_block_recipe(tmp_path)))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1,
           "head_dim": 48, "intermediate_size": 512, "vocab_size": 1000}
    report = run_preflight(ModelGeometry.from_config(cfg), recipe, "vllm-cuda")
    # q_proj (4 x 48 = 192) and k_proj (1 x 48) are not the last of the merged q/k/v GEMM,
    # so vLLM checks them against block_n 128; v_proj (last) and o_proj are not checked
    assert [f.layer for f in report.findings] == ["model.layers.0.self_attn.q_proj",
                                                  "model.layers.0.self_attn.k_proj"]


@pytest.mark.parametrize("preset", ["fp8-dynamic", "w8a8-int8"])
def test_channel_fp8_and_int8_note_the_triton_fallback(preset):
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
           "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 200,
           "vocab_size": 1000}
    report = run_preflight(ModelGeometry.from_config(cfg), build_recipe(preset), "vllm-cuda")
    assert report.ok
    assert any("Triton scaled-mm fallback" in n for n in report.notes)
