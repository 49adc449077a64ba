"""Memory plan: every term checked by hand against the published Nemotron-Nano-9B-v2 geometry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.geometry import ModelGeometry
from modelgate.memory_plan import (
    GiB,
    choose_max_num_seqs,
    default_activation_reserve_gib,
    engine_defaults,
    kv_bytes_per_token,
    mamba_state_bytes,
    paged_layout,
    parameter_count,
    plan_memory,
)

# Published config facts of nvidia/NVIDIA-Nemotron-Nano-9B-v2 (no weights needed).
NEMOTRON_NANO_9B_V2 = {
    "architectures": ["NemotronHForCausalLM"],
    "model_type": "nemotron_h",
    "auto_map": {"AutoConfig": "configuration_nemotron_h.NemotronHConfig",
                 "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM"},
    "hidden_size": 4480,
    "num_hidden_layers": 56,
    "intermediate_size": 15680,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 131072,
    "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
    "ssm_state_size": 128,
    "conv_kernel": 4,
    "n_groups": 8,
    "mamba_num_heads": 128,
    "mamba_head_dim": 80,
    "torch_dtype": "bfloat16",
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
}
# The W4A16 (GPTQ, group 64) checkpoint of that geometry measured 6.0 GiB (DESIGN field notes).
W4A16_BYTES = int(6.0 * GiB)
MAMBA_LAYERS, ATTENTION_LAYERS = 27, 4


@pytest.fixture
def nano9b() -> ModelGeometry:
    return ModelGeometry.from_config(dict(NEMOTRON_NANO_9B_V2))


def test_kv_cache_counts_attention_layers_only(nano9b):
    value, formula = kv_bytes_per_token(nano9b, "auto")
    # 2 (K,V) x 4 attention layers x 8 KV heads x 128 head_dim x 2 B (bf16)
    assert value == 2 * ATTENTION_LAYERS * 8 * 128 * 2 == 16384
    assert "4 attention layers" in formula
    assert kv_bytes_per_token(nano9b, "fp8")[0] == 8192


def test_mamba_state_per_sequence(nano9b):
    conv, ssm, __ = mamba_state_bytes(nano9b, "auto", "float32")
    inner = 128 * 80
    assert conv == MAMBA_LAYERS * 3 * (inner + 2 * 8 * 128) * 2  # bf16 conv state
    assert ssm == MAMBA_LAYERS * 128 * 80 * 128 * 4  # float32 SSM state
    assert round((conv + ssm) / 2**20, 1) == 136.9
    # a bf16 SSM state is half the size: the reason the dtype must be stated
    assert mamba_state_bytes(nano9b, "auto", "bfloat16")[1] == ssm // 2


def test_parameter_count_matches_published_size(nano9b):
    assert 8.85e9 < parameter_count(nano9b) < 8.95e9  # "9B": 8.89 B parameters


def test_paged_layout_matches_vllm_hybrid_manager(nano9b):
    layout = paged_layout(nano9b, block_alignment=16)
    mamba_page = (MAMBA_LAYERS * 3 * 12288 * 2 + MAMBA_LAYERS * 128 * 80 * 128 * 4) // 27
    assert layout.mamba_page_bytes == mamba_page == 5316608
    # smallest multiple of 16 tokens whose attention page (4096 B/token/layer) holds it
    assert layout.block_size == 1312 and layout.page_bytes == 1312 * 4096
    # 4 attention vs 27 Mamba layers: groups of 4 -> 1 attention group, 7 Mamba groups
    assert (layout.group_size, layout.attention_groups, layout.mamba_groups) == (4, 1, 7)
    assert layout.blocks_per_sequence(32768) == 25 + 7 * 3
    assert paged_layout(nano9b, prefix_caching=False).blocks_per_sequence(32768) == 25 + 7


def test_paged_layout_reproduces_vllm_cpu_log():
    # The tiny hybrid served here: vLLM CPU logged "block size 256", "Padding mamba page
    # size by 88.93%" and "Maximum concurrency for 1,024 tokens per request: 157.54x"
    # with a 0.25 GiB KV cache.
    tiny = ModelGeometry.from_config({
        "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"],
        "hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 768,
        "hybrid_override_pattern": "M-M*M-", "ssm_state_size": 32, "conv_kernel": 4,
        "n_groups": 2, "mamba_num_heads": 32, "mamba_head_dim": 16, "dtype": "bfloat16",
    })
    layout = paged_layout(tiny, block_alignment=128)
    assert layout.block_size == 256
    assert round(100 * (layout.page_bytes / layout.mamba_page_bytes - 1), 2) == 88.93
    blocks = (GiB // 4) // layout.bytes_per_block
    assert round(blocks / layout.blocks_per_sequence(1024), 2) == 157.54


@pytest.mark.parametrize(
    ("gpu_gib", "weights", "fit", "chosen"),
    [
        (80, None, 56, 56),  # H100, BF16 (parameters x 2 B = 16.55 GiB)
        (141, None, 116, 112),  # H200, BF16
        (80, W4A16_BYTES, 68, 64),  # H100, W4A16
        (141, W4A16_BYTES, 128, 128),  # H200, W4A16
    ],
)
def test_plan_h100_h200_bf16_w4a16(nano9b, gpu_gib, weights, fit, chosen):
    reserve = default_activation_reserve_gib(nano9b, device="cuda")
    plan = plan_memory(nano9b, gpu_memory_gib=gpu_gib, max_model_len=32768,
                       activation_reserve_gib=reserve, weight_bytes=weights,
                       gpu_memory_utilization=0.9)
    expected_weights = weights if weights is not None else parameter_count(nano9b) * 2
    assert plan.weight_bytes == expected_weights
    cache = int(gpu_gib * GiB * 0.9) - expected_weights - int(reserve * GiB)
    assert plan.cache_bytes == cache
    per_seq = (25 + 7 * 3) * 4 * 1312 * 4096
    assert plan.bytes_per_sequence == per_seq
    assert plan.max_sequences_fit == cache // per_seq == fit
    assert plan.max_num_seqs == chosen
    names = [t.name for t in plan.terms]
    for term in ("budget", "weights", "activation_reserve", "kv_cache_per_token",
                 "mamba_conv_state_per_sequence", "mamba_ssm_state_per_sequence",
                 "per_sequence"):
        assert term in names
    assert plan.to_dict()["terms"][0]["formula"]


def test_quantized_weights_leave_room_for_more_sequences(nano9b):
    common = {"gpu_memory_gib": 80, "max_model_len": 32768, "activation_reserve_gib": 3}
    bf16 = plan_memory(nano9b, **common)
    w4 = plan_memory(nano9b, weight_bytes=W4A16_BYTES, **common)
    assert bf16.weight_source == "parameters x dtype"
    assert w4.weight_source.startswith("checkpoint tensors")
    assert w4.max_sequences_fit > bf16.max_sequences_fit


def test_override_that_cannot_fit_names_the_numbers(nano9b):
    with pytest.raises(ModelGateError) as err:
        plan_memory(nano9b, gpu_memory_gib=80, max_model_len=32768, gpu_memory_utilization=0.9,
                    activation_reserve_gib=3, max_num_seqs=200)
    message = str(err.value)
    assert err.value.field == "max_num_seqs"
    assert "max_num_seqs 200" in message and "at most 56 fit" in message
    assert "GiB" in message


def test_override_that_fits_is_kept_exactly(nano9b):
    plan = plan_memory(nano9b, gpu_memory_gib=80, max_model_len=32768,
                       activation_reserve_gib=3, max_num_seqs=13)
    assert plan.max_num_seqs == 13 and plan.requested_max_num_seqs == 13


def test_weights_larger_than_gpu(nano9b):
    with pytest.raises(ModelGateError) as err:
        plan_memory(nano9b, gpu_memory_gib=16, max_model_len=4096, activation_reserve_gib=2)
    assert err.value.field == "gpu_memory_gib"
    assert "16.55 GiB" in str(err.value)


def test_context_too_long_for_one_sequence(nano9b):
    with pytest.raises(ModelGateError) as err:
        plan_memory(nano9b, gpu_memory_gib=12, max_model_len=131072,
                    activation_reserve_gib=3, weight_bytes=W4A16_BYTES)
    assert err.value.field == "max_model_len"
    assert "max_model_len <=" in str(err.value)


@pytest.mark.parametrize(("fit", "cap", "chosen"),
                         [(1000, 256, 256), (57, 256, 56), (8, 256, 8), (7, 256, 7),
                          (1, 256, 1), (100, 32, 32)])
def test_choose_max_num_seqs(fit, cap, chosen):
    assert choose_max_num_seqs(fit, cap) == chosen


def test_llama_like_model_pages_like_plain_attention():
    llama = ModelGeometry.from_config({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16",
    })
    layout = paged_layout(llama)
    assert layout.block_size == 16 and layout.mamba_groups == 0
    plan = plan_memory(llama, gpu_memory_gib=80, max_model_len=8192, activation_reserve_gib=3)
    assert plan.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB per token
    assert plan.bytes_per_sequence == plan.kv_bytes_per_token * 8192  # 8192 = 512 blocks
    assert plan.mamba_state_bytes_per_sequence == 0


@pytest.mark.parametrize(("version", "on"), [
    ("0.25.0", False), ("0.25.0+cu130", False), ("0.26.0", False),
    ("0.27.0", True), ("0.32.0", True), (None, True), ("nightly", True)])
def test_engine_defaults_for_hybrids_follow_the_vllm_version(nano9b, version, on):
    engine = engine_defaults(version, nano9b)
    assert engine.prefix_caching is on
    assert engine.gpu_memory_utilization == 0.92
    assert ("unknown" in engine.reason or "'nightly'" in engine.reason) is (
        version in (None, "nightly"))
    states = paged_layout(nano9b, prefix_caching=engine.prefix_caching).mamba_states
    assert states == (3 if on else 1)


def test_engine_defaults_do_not_touch_attention_only_models():
    g = ModelGeometry.from_model_dir(Path(__file__).resolve().parents[1] / "data"
                                     / "model_configs" / "Qwen3-8B")
    assert engine_defaults("0.25.0", g).prefix_caching is True


H200_RUN = Path(__file__).resolve().parents[2] / "bench" / "results" / "h200-2026-12-02"
NANO9B_CONFIG = Path(__file__).resolve().parents[2] / "bench" / "configs" / \
    "nvidia-nemotron-nano-9b-v2.config.json"


@pytest.mark.parametrize("variant", ["bf16", "w4a16", "fp8"])
def test_plan_agrees_with_vllm_025_on_the_h200_within_5_percent(variant):
    """vLLM 0.25.0's own logged figures on one H200 (bench/results/h200-2026-12-02): its
    "Maximum concurrency for 16,384 tokens per request" against the plan's sequence count,
    planned for that engine version with the inputs that run used."""
    from modelgate.serving import derive_serving_args

    record = json.loads((H200_RUN / variant / "vllm_memory.json").read_text())
    vllm, used = record["vllm"], record["plan"]
    assert vllm["prefix_caching"] == "False"
    args = derive_serving_args(
        json.loads(NANO9B_CONFIG.read_text()), gpu_memory_gib=used["gpu_memory_gib"],
        weight_bytes=used["weight_bytes"], engine_version="0.25.0",
        activation_reserve_gib=used["activation_reserve_bytes"] / GiB,
        overrides={"max-model-len": vllm["concurrency_tokens"],
                   "gpu-memory-utilization": used["gpu_memory_utilization"]})
    plan = args.plan
    assert plan is not None and plan.paging["mamba_states"] == 1
    assert plan.paging["block_size"] == int(vllm["attention_block_size"]) == 1312
    assert abs(plan.cache_bytes / GiB - vllm["available_kv_cache_gib"]) \
        / vllm["available_kv_cache_gib"] < 0.01
    assert abs(plan.max_sequences_fit - vllm["max_concurrency"]) / vllm["max_concurrency"] < 0.05
    assert "vLLM 0.25.0: prefix caching off" in args.reasons["enable-prefix-caching"]
