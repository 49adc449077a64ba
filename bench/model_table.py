"""The README's table of memory plans: each test-data model on an 80 GiB GPU at 16384 tokens.

Each row is what `modelgate plan --model DIR --gpu-memory-gib 80 --max-model-len 16384` derives
(the same code path: ``derive_serving_args``), beside the model's published parameter count
and the test whose hand arithmetic checks the row. A model whose weights do not fit, or whose
family is refused, says so instead of a number.

    PYTHONPATH=python python bench/model_table.py            # print the table
    PYTHONPATH=python python bench/model_table.py --readme   # rewrite it in README.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from modelgate.errors import ModelGateError
from modelgate.geometry import ModelGeometry
from modelgate.memory_plan import (
    GiB,
    config_weight_bytes,
    kv_bytes_per_token,
    mamba_state_bytes,
    paged_layout,
    parameter_count,
)
from modelgate.serving import derive_serving_args

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
GPU_GIB = 80
MAX_MODEL_LEN = 16384
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"

# Published total parameters (model cards), and the test that does the arithmetic by hand.
# What vLLM itself logged for a model (test_model_families.py reproduces each figure).
VLLM_REPORTED: dict[str, str] = {
    "Llama-3.1-8B": "1952 blocks = 3.81 GiB KV, 1.56x at 20000 tokens (vllm#10517)",
    "nemotron_nano_9b_v2": "block 672 tokens with a bf16 state (vllm#24280)",
    "Qwen3-Next-80B-A3B": "block 544 tokens (vllm#32492)",
    "granite-4.0-h-small": "block 528 tokens with a bf16 state (vllm-gaudi#1564)",
}
REFERENCE: dict[str, tuple[str, str]] = {
    "Llama-3.1-8B": ("8.03 B", "test_llama_3_1_8b"),
    "Llama-3.2-3B": ("3.21 B", "test_llama_3_2_3b_tied_embeddings_are_counted_once"),
    "Qwen2.5-3B": ("3.09 B", ""),
    "Qwen2.5-7B": ("7.61 B", "test_qwen2_5_7b_sliding_window_is_off"),
    "Qwen2.5-14B": ("14.7 B", ""),
    "Qwen2.5-32B": ("32.5 B (card)", ""),
    "Qwen3-8B": ("8.2 B", "test_qwen3_8b"),
    "Qwen3-14B": ("14.8 B", ""),
    "Qwen3-32B": ("32.8 B", ""),
    "Qwen3-30B-A3B": ("30.5 B", "test_qwen3_30b_a3b"),
    "Mixtral-8x7B-v0.1": ("46.7 B", "test_mixtral_8x7b_counts_every_expert"),
    "gpt-oss-20b": ("21 B, 12.8 GiB MXFP4", "test_gpt_oss_20b_mxfp4_sliding_and_full_layers"),
    "nemotron_nano_9b_v2": ("8.89 B", "test_memory_plan.py (Nemotron-Nano-9B-v2)"),
    "Qwen3-Next-80B-A3B": (
        "80 B", "test_qwen3_next_80b_has_12_attention_layers_and_80b_parameters"),
    "granite-4.0-h-small": ("32 B", "test_granite_4_h_small_layers_and_state"),
    "DeepSeek-V2-Lite": ("15.7 B", "test_deepseek_v2_lite_mla_and_shared_experts"),
    "Jamba-v0.1": ("51.6 B", "test_jamba_v0_1_mamba1_layers_and_state"),
    "gemma-2-9b": (
        "9.24 B", "test_gemma_2_9b_alternates_sliding_and_full_layers_and_ties_embeddings"),
}


def model_dirs() -> list[Path]:
    """Every stored config: the published copies, then the restated figures (marked *)."""
    dirs = sorted(p for p in (DATA / "model_configs").iterdir() if p.is_dir())
    figures = sorted(p for p in (DATA / "model_figures").iterdir() if p.is_dir())
    return [*dirs, DATA / "nemotron_nano_9b_v2", *figures]


def row(model_dir: Path) -> list[str]:
    """One table row for a model directory."""
    name = model_dir.name
    if model_dir.parent.name != "model_configs":
        name += " *"  # restated published figures, not a verbatim copy
    published, test = REFERENCE.get(model_dir.name, ("", ""))
    try:
        g = ModelGeometry.from_model_dir(model_dir)
    except ModelGateError as exc:
        return [name, "refused", "", published, "", "", "", exc.message[:60], "", "", test]
    params = f"{parameter_count(g) / 1e9:.2f} B"
    try:
        args = derive_serving_args(model_dir, gpu_memory_gib=GPU_GIB,
                                   overrides={"max-model-len": MAX_MODEL_LEN})
    except ModelGateError as exc:
        # no plan: still show what the weights, the KV cache and the state take
        ssm = "float32" if g.is_hybrid else "auto"
        conv, state, __ = mamba_state_bytes(g, "auto", ssm)
        return [name, g.family, params, published, f"{config_weight_bytes(g)[0] / GiB:.2f}",
                f"{kv_bytes_per_token(g, 'auto')[0]:,}", f"{conv + state:,}",
                "does not fit: " + exc.message.split(":")[0],
                f"{paged_layout(g, mamba_ssm_cache_dtype=ssm).block_size}",
                VLLM_REPORTED.get(model_dir.name, ""), f"`{test}`" if test else ""]
    plan = args.plan
    assert plan is not None
    fixed = plan.mamba_state_bytes_per_sequence + plan.sliding_window_bytes_per_sequence
    block = int(plan.paging["block_size"])
    bf16_block = paged_layout(g, mamba_ssm_cache_dtype="auto").block_size
    return [
        name, g.family, params, published, f"{plan.weight_bytes / GiB:.2f}",
        f"{plan.kv_bytes_per_token:,}", f"{fixed:,}",
        f"{plan.max_num_seqs} (fit {plan.max_sequences_fit}, reserve "
        f"{plan.activation_reserve_bytes / GiB:.2f} GiB)",
        f"{block}" + (f" ({bf16_block} at bf16 state)" if bf16_block != block else ""),
        VLLM_REPORTED.get(model_dir.name, ""),
        f"`{test}`" if test else "",
    ]


def table() -> str:
    """The Markdown table."""
    head = ["model", "family", "parameters (geometry)", "published", "weights GiB",
            "KV B/token", "fixed B/sequence", f"--max-num-seqs @ {GPU_GIB} GiB, {MAX_MODEL_LEN}",
            "block tokens", "vLLM-reported", "hand arithmetic in tests/unit/test_model_families.py"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row(d)) + " |" for d in model_dirs()]
    return "\n".join(lines)


def main() -> int:
    """Print the table, or rewrite it between the README's markers."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", action="store_true", help="rewrite the table in README.md")
    ns = p.parse_args()
    text = table()
    if not ns.readme:
        print(text)
        return 0
    readme = ROOT / "README.md"
    body = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(body):
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
