"""Geometry and memory plan by architecture family, on published config.json files.

Every expected number is written as the arithmetic that produces it from the config, so a
reviewer can check it against the model card without running anything. The configs are under
tests/data/model_configs/ (their sources in that folder's README.md); families whose published
config could not be found as a copy (Qwen3-Next, Granite-4.0-H, DeepSeek-V2, Jamba) are
checked on the published figures of their config.json, restated in tests/data/model_figures/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.geometry import ModelGeometry, UnsupportedModelError
from modelgate.memory_plan import (
    GiB,
    config_weight_bytes,
    kv_bytes_per_token,
    mamba_state_bytes,
    paged_layout,
    parameter_count,
    plan_memory,
)
from modelgate.serving import derive_serving_args

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "model_configs"
FIGURES = CONFIGS.parent / "model_figures"
BUDGET_80 = int(80 * GiB * 0.9)  # 80 GiB GPU x gpu_memory_utilization 0.9
RESERVE = 3  # GiB of activation reserve in every plan below (a round, stated figure)


def _figures(name: str) -> dict:
    """A restated published config (tests/data/model_figures), without its _comment."""
    cfg = json.loads((FIGURES / name / "config.json").read_text())
    cfg.pop("_comment")
    return cfg


def load(name: str) -> ModelGeometry:
    return ModelGeometry.from_model_dir(CONFIGS / name)


def plan80(g: ModelGeometry, **kw: object) -> object:
    ssm = "float32" if g.is_hybrid else "auto"
    return plan_memory(g, gpu_memory_gib=80, max_model_len=16384, activation_reserve_gib=RESERVE,
                       mamba_ssm_cache_dtype=ssm, gpu_memory_utilization=0.9, **kw)


def fit80(weights: int, per_seq: int) -> int:
    return (BUDGET_80 - weights - RESERVE * GiB) // per_seq


def test_every_stored_config_is_modelled_or_refused_never_guessed():
    for d in sorted(p for p in CONFIGS.iterdir() if p.is_dir()):
        g = ModelGeometry.from_model_dir(d)
        assert g.family in ("dense", "moe", "nemotron_h", "granite_hybrid",
                            "linear_attention_hybrid"), d.name
        assert g.num_layers == json.loads((d / "config.json").read_text())["num_hidden_layers"]


# ------------------------------------------------------------------ dense decoders

def test_llama_3_1_8b():
    g = load("Llama-3.1-8B")
    # per layer: q 4096x4096, k and v 4096x(8x128), o 4096x4096, MLP 3 x 4096x14336
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    params = 32 * per_layer + 2 * 128256 * 4096  # + embedding and untied lm_head
    assert parameter_count(g) == params == 8_029_995_008  # published: 8.03 B
    assert kv_bytes_per_token(g, "auto")[0] == 2 * 32 * 8 * 128 * 2 == 131072
    plan = plan80(g)
    assert plan.weight_bytes == params * 2
    assert plan.bytes_per_sequence == 16384 * 131072  # 1024 blocks of 16 tokens, 2 GiB
    assert plan.max_sequences_fit == fit80(params * 2, 16384 * 131072) == 27
    assert plan.max_num_seqs == 24  # rounded down to a multiple of 8


def test_llama_3_2_3b_tied_embeddings_are_counted_once():
    g = load("Llama-3.2-3B")
    per_layer = 3072 * 3072 + 2 * 3072 * 1024 + 3072 * 3072 + 3 * 3072 * 8192
    assert parameter_count(g) == 28 * per_layer + 128256 * 3072  # published: 3.21 B


def test_qwen2_5_7b_sliding_window_is_off():
    g = load("Qwen2.5-7B")  # sliding_window 131072 with use_sliding_window false
    assert set(g.block_kinds) == {"attention"}
    per_layer = 2 * 3584 * 3584 + 2 * 3584 * (4 * 128) + 3 * 3584 * 18944
    assert parameter_count(g) == 28 * per_layer + 2 * 152064 * 3584  # published: 7.61 B
    assert kv_bytes_per_token(g, "auto")[0] == 2 * 28 * 4 * 128 * 2 == 57344


def test_qwen3_8b():
    g = load("Qwen3-8B")
    per_layer = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 12288
    params = 36 * per_layer + 2 * 151936 * 4096
    assert parameter_count(g) == params  # published: 8.2 B
    plan = plan80(g)
    assert plan.kv_bytes_per_token == 2 * 36 * 8 * 128 * 2 == 147456
    assert plan.max_sequences_fit == fit80(params * 2, 16384 * 147456) == 23


def test_model_wide_sliding_window_makes_every_layer_sliding():
    cfg = json.loads((CONFIGS / "Qwen3-8B" / "config.json").read_text())
    cfg.update(model_type="mistral", sliding_window=4096)  # as Mistral-7B-v0.1 publishes it
    cfg.pop("use_sliding_window")
    g = ModelGeometry.from_config(cfg)
    assert set(g.block_kinds) == {"sliding_attention"}
    layout = paged_layout(g)
    # a 131072-token sequence holds cdiv(4096 - 1 + 2 x 8192, 16) + 1 = 1281 blocks per layer
    assert layout.blocks_per_sequence(131072) == -(-(4095 + 16384) // 16) + 1 == 1281
    assert kv_bytes_per_token(g, "auto")[0] == 0  # nothing grows with the whole sequence


def test_gemma_2_9b_alternates_sliding_and_full_layers_and_ties_embeddings():
    g = ModelGeometry.from_config(_figures("gemma-2-9b"))  # no layer_types, no tie key
    assert g.block_kinds[:2] == ["sliding_attention", "attention"]  # (i + 1) % 2
    per_layer = 3584 * 4096 + 2 * 3584 * 2048 + 4096 * 3584 + 3 * 3584 * 14336
    assert parameter_count(g) == 42 * per_layer + 256000 * 3584  # tied: published 9.24 B
    assert round(parameter_count(g) / 1e9, 2) == 9.24
    # 21 full layers x 2 x 8 x 256 x 4 B (the published checkpoint is float32)
    assert kv_bytes_per_token(g, "auto")[0] == 21 * 2 * 8 * 256 * 4


def test_gemma_3_derives_its_five_to_one_pattern():
    cfg = {**_figures("gemma-2-9b"), "model_type": "gemma3_text", "num_hidden_layers": 12}
    g = ModelGeometry.from_config(cfg)  # sliding_window_pattern defaults to 6
    assert [i for i, k in enumerate(g.block_kinds) if k == "attention"] == [5, 11]


# ------------------------------------------------------------------ MoE

def test_mixtral_8x7b_counts_every_expert():
    g = load("Mixtral-8x7B-v0.1")
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    experts = 8 * 3 * 4096 * 14336  # 8 experts of w1, w3 (4096->14336) and w2
    router = 4096 * 8
    params = 32 * (attention + experts + router) + 2 * 32000 * 4096
    assert parameter_count(g) == params == 46_702_526_464  # published: 46.7 B
    # 93.4 GB of BF16 weights do not fit 72 GiB: refused with both numbers, not "27 fit"
    with pytest.raises(ModelGateError, match=r"weights \(86.99 GiB\).*72.00 GiB"):
        plan80(g)
    # on a 192 GiB device: 2 (K,V) x 32 layers x 8 heads x 128 x 2 B = 128 KiB per token
    plan = plan_memory(g, gpu_memory_gib=192, max_model_len=16384, activation_reserve_gib=3,
                       gpu_memory_utilization=0.9)
    per_seq = 16384 * 2 * 32 * 8 * 128 * 2
    assert plan.max_sequences_fit == (int(192 * GiB * 0.9) - params * 2 - 3 * GiB) // per_seq


def test_qwen3_30b_a3b():
    g = load("Qwen3-30B-A3B")
    attention = 2048 * (32 * 128) + 2 * 2048 * (4 * 128) + (32 * 128) * 2048
    moe = 2048 * 128 + 128 * 3 * 2048 * 768  # router + 128 experts of width 768
    params = 48 * (attention + moe) + 2 * 151936 * 2048
    assert parameter_count(g) == params  # published: 30.5 B
    assert round(params / 1e9, 1) == 30.5
    plan = plan80(g)
    assert plan.kv_bytes_per_token == 2 * 48 * 4 * 128 * 2 == 98304
    assert plan.max_sequences_fit == fit80(params * 2, 16384 * 98304) == 8


def test_qwen_moe_dense_layers_follow_mlp_only_layers_and_sparse_step():
    cfg = json.loads((CONFIGS / "Qwen3-30B-A3B" / "config.json").read_text())
    cfg.update(mlp_only_layers=[0], decoder_sparse_step=2, num_hidden_layers=4)
    g = ModelGeometry.from_config(cfg)
    experts = {int(x.name.split(".")[2]) for x in g.linear_layers if x.kind == "moe_expert"}
    # layer 0: mlp_only; layer 2: (2+1) % 2 != 0 -> dense; layers 1 and 3 sparse
    assert experts == {1, 3}
    assert g.layer("model.layers.0.mlp.down_proj").in_features == 6144


def test_gpt_oss_20b_mxfp4_sliding_and_full_layers():
    g = load("gpt-oss-20b")
    assert g.block_kinds[:2] == ["sliding_attention", "attention"]
    attention = 2880 * 4096 + 2 * 2880 * 512 + 4096 * 2880  # 64 heads x 64, 8 KV heads
    experts = 32 * (2880 * 2 * 2880 + 2880 * 2880)  # fused gate_up (2 x 2880) + down
    router = 2880 * 32
    params = 24 * (attention + experts + router) + 2 * 201088 * 2880
    assert parameter_count(g) == params  # published: 21 B (20.9 B)
    # MXFP4: experts at 4 bits + one E8M0 scale byte per 32; the rest BF16
    # (modules_to_not_convert: self_attn, router, embed_tokens, lm_head)
    n_exp = 24 * experts
    expected = (params - n_exp) * 2 + n_exp // 2 + n_exp // 32
    assert config_weight_bytes(g)[0] == expected
    assert 12.7 < expected / GiB < 12.9  # the published checkpoint: 13.8 GB = 12.8 GiB
    plan = plan80(g)
    # 12 full-attention layers grow with the sequence: 12 x 2 x 8 x 64 x 2 B per token
    assert plan.kv_bytes_per_token == 12 * 2 * 8 * 64 * 2 == 24576
    # 12 sliding layers (window 128) hold min(128 - 1 + 2 x 8192 in flight, 16384) tokens
    # = 16384 -> cdiv(16384, 16) + 1 = 1025 blocks of 16 tokens each
    assert plan.sliding_window_bytes_per_sequence == 12 * 1025 * 16 * 2 * 8 * 64 * 2
    per_seq = (1024 + 1025) * 16 * 2 * 8 * 64 * 2 * 12  # 1 full + 1 sliding group of 12
    assert plan.bytes_per_sequence == per_seq
    assert plan.max_sequences_fit == fit80(expected, per_seq)


def test_gpt_oss_sliding_window_is_bounded_at_long_context():
    g = load("gpt-oss-20b")
    layout = paged_layout(g)
    # at 131072 tokens a sliding layer still holds only cdiv(127 + 16384, 16) + 1 = 1033 blocks
    assert layout.sliding_blocks(131072) == -(-(127 + 16384) // 16) + 1 == 1033
    assert layout.blocks_per_sequence(131072) == 131072 // 16 + 1033


DEEPSEEK_V2_LITE = _figures("DeepSeek-V2-Lite")


def test_deepseek_v2_lite_mla_and_shared_experts():
    g = ModelGeometry.from_config(DEEPSEEK_V2_LITE)
    mla = (2048 * 16 * (128 + 64)  # q_proj (no q_lora_rank)
           + 2048 * (512 + 64)  # kv_a_proj_with_mqa
           + 512 * 16 * (128 + 128)  # kv_b_proj
           + 16 * 128 * 2048)  # o_proj
    dense_mlp = 3 * 2048 * 10944  # layer 0 (first_k_dense_replace 1)
    moe = 2048 * 64 + 64 * 3 * 2048 * 1408 + 3 * 2048 * (2 * 1408)  # router, routed, shared
    params = 27 * mla + dense_mlp + 26 * moe + 2 * 102400 * 2048
    assert parameter_count(g) == params  # published: 15.7 B
    assert round(params / 1e9, 1) == 15.7
    # MLA caches one latent per token and layer: (512 + 64) x 2 B, no separate K and V
    assert kv_bytes_per_token(g, "auto")[0] == 27 * (512 + 64) * 2 == 31104


# ------------------------------------------------------------------ Mamba-2 hybrids

GRANITE_4_H_SMALL = _figures("granite-4.0-h-small")


def test_granite_4_h_small_layers_and_state():
    g = ModelGeometry.from_config(GRANITE_4_H_SMALL)
    assert g.block_kinds.count("mamba") == 36 and g.block_kinds.count("attention") == 4
    conv_dim = 2 * 4096 + 2 * 1 * 128  # mamba_expand x hidden + 2 x n_groups x d_state
    mamba = 4096 * (8192 + conv_dim + 128) + 4 * conv_dim + 8192 * 4096  # in_proj, conv, out
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    ffn = 4096 * 72 + 72 * (4096 * 2 * 768 + 768 * 4096) + 4096 * 2 * 1536 + 1536 * 4096
    params = 36 * mamba + 4 * attention + 40 * ffn + 100352 * 4096  # tied lm_head
    assert parameter_count(g) == params  # published: 32 B
    assert round(params / 1e9) == 32
    conv, ssm, __ = mamba_state_bytes(g, "auto", "float32")
    assert conv == 36 * (4 - 1) * conv_dim * 2  # bf16 conv state
    assert ssm == 36 * 128 * 64 * 128 * 4  # float32 SSM state
    layout = paged_layout(g)
    # one Mamba layer: 3 x 8448 x 2 + 128 x 64 x 128 x 4 = 4,244,992 B; one attention layer
    # per token 2 x 8 x 128 x 2 = 4096 B -> block 16 x cdiv(4244992, 16 x 4096) = 1040
    assert layout.block_size == 16 * -(-4244992 // (16 * 4096)) == 1040
    assert layout.group_size == 4 and layout.attention_groups == 1 and layout.mamba_groups == 9


def test_granite_hybrid_without_experts_is_dense_shared_mlp():
    cfg = {**GRANITE_4_H_SMALL, "num_local_experts": 0}
    g = ModelGeometry.from_config(cfg)
    assert not [x for x in g.linear_layers if x.kind in ("moe_expert", "router")]
    assert g.layer("model.layers.0.shared_mlp.input_linear").out_features == 2 * 1536


def test_jamba_v0_1_mamba1_layers_and_state():
    g = ModelGeometry.from_config(_figures("Jamba-v0.1"))
    assert [i for i, k in enumerate(g.block_kinds) if k == "attention"] == [4, 12, 20, 28]
    inner = 2 * 4096  # mamba_expand x hidden
    mamba = (4096 * 2 * inner + 4 * inner  # in_proj, conv1d
             + inner * (256 + 2 * 16) + 256 * inner + inner * 4096)  # x_proj, dt_proj, out
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    moe = 4096 * 16 + 16 * 3 * 4096 * 14336  # router + 16 experts, on the odd layers
    mlp = 3 * 4096 * 14336  # the even layers
    params = 28 * mamba + 4 * attention + 16 * moe + 16 * mlp + 2 * 65536 * 4096
    assert parameter_count(g) == params  # published: 52 B (51.6 B)
    assert round(params / 1e9, 1) == 51.6
    # Mamba-1 state (MambaStateShapeCalculator.mamba1_state_shape): conv (4 - 1) x inner,
    # SSM inner x d_state
    conv, ssm, __ = mamba_state_bytes(g, "auto", "auto")
    assert conv == 28 * 3 * inner * 2 and ssm == 28 * inner * 16 * 2
    assert kv_bytes_per_token(g, "auto")[0] == 4 * 2 * 8 * 128 * 2


# ------------------------------------------------------------------ linear-attention hybrid

QWEN3_NEXT_80B = _figures("Qwen3-Next-80B-A3B")


def test_qwen3_next_80b_has_12_attention_layers_and_80b_parameters():
    g = ModelGeometry.from_config(QWEN3_NEXT_80B)
    assert g.block_kinds.count("attention") == 12  # layers 3, 7, ..., 47
    assert g.block_kinds[3] == "attention" and g.block_kinds[0] == "gated_delta_net"
    key_dim, value_dim = 16 * 128, 32 * 128
    gdn = (2048 * (2 * key_dim + 2 * value_dim) + 2048 * 2 * 32  # in_proj_qkvz, in_proj_ba
           + 4 * (2 * key_dim + value_dim) + value_dim * 2048)  # conv1d, out_proj
    attention = 2048 * 2 * 16 * 256 + 2 * 2048 * 2 * 256 + 16 * 256 * 2048  # gated q_proj
    moe = (2048 * 512 + 512 * 3 * 2048 * 512  # router + 512 experts
           + 3 * 2048 * 512 + 2048)  # shared expert + its gate
    params = 36 * gdn + 12 * attention + 48 * moe + 2 * 151936 * 2048
    assert parameter_count(g) == params  # published: 80 B (multi-token prediction aside)
    assert round(params / 1e9) == 80
    # KV cache: 12 layers x 2 x 2 KV heads x 256 x 2 B per token
    assert kv_bytes_per_token(g, "auto")[0] == 12 * 2 * 2 * 256 * 2 == 24576
    # gated delta net state per layer (MambaStateShapeCalculator.gated_delta_net_state_shape):
    # conv (4 - 1) x (2 x 16 x 128 + 32 x 128), temporal 32 x 128 x 128, bf16 ("auto")
    conv, ssm, __ = mamba_state_bytes(g, "auto", "auto")
    assert conv == 36 * 3 * (2 * 16 * 128 + 32 * 128) * 2
    assert ssm == 36 * 32 * 128 * 128 * 2
    # BF16 weights (148 GiB) do not fit an 80 GiB GPU: refused with the numbers
    with pytest.raises(ModelGateError, match="exceed the budget"):
        plan80(g)


def test_qwen3_next_layer_types_win_over_the_interval():
    types = ["linear_attention", "full_attention"] * 24
    g = ModelGeometry.from_config({**QWEN3_NEXT_80B, "layer_types": types})
    assert g.block_kinds.count("attention") == 24


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("model_type", ["falcon_h1", "zamba2", "gemma3", "mystery"])
def test_unmodelled_families_are_refused_naming_the_way_forward(model_type):
    cfg = {"model_type": model_type, "architectures": ["X"], "hidden_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
           "vocab_size": 100}
    with pytest.raises(UnsupportedModelError) as err:
        ModelGeometry.from_config(cfg)
    assert model_type in err.value.message
    assert "--max-num-seqs" in err.value.fix and "issue" in err.value.fix
    assert "intermediate_size" not in err.value.fix  # never "add a key to the config"


def test_refused_family_exits_2_from_the_cli(tmp_path, capsys):
    from modelgate.cli import main
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon_h1"}))
    assert main(["plan", "--model", str(tmp_path), "--gpu-memory-gib", "80"]) == 2
    assert "falcon_h1" in capsys.readouterr().out


def test_explicit_max_num_seqs_skips_the_plan_for_a_refused_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "falcon_h1", "architectures": ["FalconH1ForCausalLM"],
         "torch_dtype": "bfloat16", "max_position_embeddings": 16384}))
    args = derive_serving_args(tmp_path, gpu_memory_gib=80, overrides={"max_num_seqs": 16})
    assert args.plan is None
    assert args.args["max-num-seqs"] == 16
    assert "no memory plan" in args.reasons["max-num-seqs"]
    with pytest.raises(UnsupportedModelError):
        derive_serving_args(tmp_path, gpu_memory_gib=80)


def test_unknown_layer_type_is_refused_not_skipped():
    cfg = {**GRANITE_4_H_SMALL, "layer_types": ["mamba", "retention"] * 20}
    with pytest.raises(UnsupportedModelError, match="retention"):
        ModelGeometry.from_config(cfg)


def test_plan_refuses_a_tensor_list_only_geometry(tmp_path):
    header = json.dumps({"a.proj.weight": {"dtype": "BF16", "shape": [8, 8],
                                           "data_offsets": [0, 128]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + bytes(128))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    g = ModelGeometry.from_model_dir(tmp_path)  # the preflight may still read shapes
    with pytest.raises(UnsupportedModelError, match="mystery"):
        plan_memory(g, gpu_memory_gib=80, max_model_len=1024, activation_reserve_gib=1)


# ------------------------------------------------------------------ quantized checkpoints

def _with_quant(name: str, qc: dict) -> ModelGeometry:
    cfg = json.loads((CONFIGS / name / "config.json").read_text())
    return ModelGeometry.from_config({**cfg, "quantization_config": qc})


def test_fp8_block_checkpoint_sized_by_what_it_holds():
    g = _with_quant("Qwen3-8B", {"quant_method": "fp8", "weight_block_size": [128, 128]})
    linear = 36 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 12288)
    # 1 byte per weight + a 4-byte scale per 128 x 128 block; embedding and lm_head BF16
    expected = linear + linear // (128 * 128) * 4 + 2 * 151936 * 4096 * 2
    assert config_weight_bytes(g)[0] == expected


def test_gptq_w4_group_128():
    g = _with_quant("Llama-3.1-8B", {"quant_method": "gptq", "bits": 4, "group_size": 128})
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    # 4 bits per weight + per 128 weights an FP16 scale (2 B) and a 4-bit zero point (0.5 B)
    expected = linear // 2 + linear // 128 * 2.5 + 2 * 128256 * 4096 * 2
    assert config_weight_bytes(g)[0] == int(expected)


def test_compressed_tensors_w8a8_channel_with_ignore_list():
    qc = {"quant_method": "compressed-tensors", "ignore": ["lm_head", "re:.*mlp.gate$"],
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
              "num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True}}}}
    g = _with_quant("Qwen3-30B-A3B", qc)
    total, formula = config_weight_bytes(g)
    routers = 48 * 2048 * 128  # the ignored mlp.gate stays BF16
    assert "compressed-tensors" in formula
    bf16 = 2 * parameter_count(g)
    assert bf16 * 0.5 < total < bf16 * 0.52 + routers  # ~1 byte per weight


def test_unknown_quant_method_is_refused():
    g = _with_quant("Qwen3-8B", {"quant_method": "bitsandbytes", "load_in_4bit": True})
    with pytest.raises(UnsupportedModelError, match="bitsandbytes") as err:
        config_weight_bytes(g)
    assert "safetensors" in err.value.fix and "--max-num-seqs" in err.value.fix


# ------------------------------------------------------------------ safetensors index

def _index_dir(tmp_path: Path, name: str, total: int, names: list[str]) -> Path:
    (tmp_path / "config.json").write_text((CONFIGS / name / "config.json").read_text())
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict.fromkeys(names, "x")}))
    return tmp_path


def _llama_names(layers: int) -> list[str]:
    names = ["model.embed_tokens.weight", "lm_head.weight"]
    for i in range(layers):
        names += [f"model.layers.{i}.self_attn.q_proj.weight",
                  f"model.layers.{i}.mlp.down_proj.weight"]
    return names


def test_index_that_agrees_is_noted_on_the_plan(tmp_path):
    d = _index_dir(tmp_path, "Llama-3.1-8B", 16_060_522_496, _llama_names(32))
    plan = plan80(ModelGeometry.from_model_dir(d))
    term = next(t for t in plan.terms if t.name == "checkpoint_index")
    assert "tensor names match" in term.formula


def test_index_total_size_beyond_2_percent_stops_with_both_numbers(tmp_path):
    d = _index_dir(tmp_path, "Llama-3.1-8B", 8_030_000_000, _llama_names(32))  # an FP8 copy
    with pytest.raises(ModelGateError, match=r"8,030,000,000 B .* 16,059,990,016 B"):
        plan80(ModelGeometry.from_model_dir(d))


def test_index_with_missing_layers_stops(tmp_path):
    d = _index_dir(tmp_path, "Llama-3.1-8B", 16_060_522_496, _llama_names(30))
    with pytest.raises(ModelGateError, match="layer 30"):
        plan80(ModelGeometry.from_model_dir(d))


def test_index_whose_layer_kinds_disagree_stops(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_NEXT_80B))
    names = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(48)]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": dict.fromkeys(names, "x")}))
    with pytest.raises(ModelGateError, match="layer 0 is gated_delta_net"):
        plan_memory(ModelGeometry.from_model_dir(tmp_path), gpu_memory_gib=400,
                    max_model_len=1024, activation_reserve_gib=1)


def test_unmodelled_quantization_with_explicit_max_num_seqs_skips_the_plan(tmp_path):
    cfg = json.loads((CONFIGS / "Qwen3-8B" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="bitsandbytes"):
        derive_serving_args(tmp_path, gpu_memory_gib=80)
    args = derive_serving_args(tmp_path, gpu_memory_gib=80, overrides={"max-num-seqs": 8})
    assert args.plan is None and args.args["max-num-seqs"] == 8
    assert "bitsandbytes" in args.reasons["max-num-seqs"]


# ------------------------------------------------------------------ figures vLLM itself logged

def test_llama_3_1_8b_matches_vllm_logged_kv_cache_and_concurrency():
    # vllm-project/vllm issue 10517 (RTX 3090, Llama-3.1-8B-Instruct, max_model_len 20000):
    # "kv_cache_size=3.81GiB", "# GPU blocks: 1952", "Maximum concurrency for 20000 tokens
    # per request: 1.56x". With 131072 B per token and 16-token blocks:
    g = load("Llama-3.1-8B")
    per_block = 16 * kv_bytes_per_token(g, "auto")[0]
    assert round(1952 * per_block / GiB, 2) == 3.81
    layout = paged_layout(g)
    assert round(1952 / layout.blocks_per_sequence(20000), 2) == 1.56  # 1952 / 1250


@pytest.mark.parametrize(("geometry", "ssm_dtype", "vllm_block", "where"), [
    # vllm-project/vllm issue 24280: "672 tokens for nvidia/NVIDIA-Nemotron-Nano-9B-v2", when
    # its SSM state was bf16; vLLM 0.32 defaults Nemotron-H to float32 (1312, as planned)
    ("nemotron", "auto", 672, "vllm#24280"),
    # vllm-project/vllm PR 32492: "qwen3-next ... uses non-standard block size (544)"
    ("qwen3_next", "auto", 544, "vllm#32492"),
    # vllm-project/vllm-gaudi PR 1564 (granite-4.0-h-small): "inflates cache_config.block_size
    # to 528 (no prefix caching) for mamba page alignment"
    ("granite", "auto", 528, "vllm-gaudi#1564"),
])
def test_hybrid_block_sizes_match_what_vllm_logged(geometry, ssm_dtype, vllm_block, where):
    g = {"nemotron": lambda: ModelGeometry.from_model_dir(CONFIGS.parent / "nemotron_nano_9b_v2"),
         "qwen3_next": lambda: ModelGeometry.from_config(QWEN3_NEXT_80B),
         "granite": lambda: ModelGeometry.from_config(GRANITE_4_H_SMALL)}[geometry]()
    # the SSM / temporal state in the model dtype (bf16, "auto"), as in those logs
    assert paged_layout(g, mamba_ssm_cache_dtype=ssm_dtype).block_size == vllm_block, where


def test_max_num_batched_tokens_override_reaches_the_sliding_window_term():
    args = derive_serving_args(CONFIGS / "gpt-oss-20b", gpu_memory_gib=80, overrides={
        "max-model-len": 131072, "max-num-batched-tokens": 2048})
    # 12 sliding layers x (cdiv(127 + 2 x 2048, 16) + 1) blocks x 16 tokens x 2048 B
    blocks = -(-(127 + 2 * 2048) // 16) + 1
    assert args.plan.sliding_window_bytes_per_sequence == 12 * blocks * 16 * 2048
