"""Synthetic run directories for the gate and report tests (deterministic, numpy only).

Run as a script to regenerate the small committed fixture ``tests/data/gate/run/``:

    python tests/data/gate/make_run.py tests/data/gate/run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# Typical shape of vLLM latencies: lognormal, median grows with the offered rate.
BASE_MEDIANS = {"request_latency_s": 2.0, "ttft_ms": 120.0, "itl_ms": 8.0, "tpot_ms": 8.5}


def rate_entry(rng: np.random.Generator, rate: float, n: int, scale: float = 1.0,
               sigma: float = 0.3, errored: int = 0, with_samples: bool = True) -> dict[str, Any]:
    """One normalized rate entry with ``n`` lognormal samples per latency metric."""
    load = 1.0 + 0.08 * rate  # latency rises with load
    samples = {
        m: (med * load * scale * rng.lognormal(0.0, sigma, n)).round(6).tolist()
        for m, med in BASE_MEDIANS.items()
    }
    metrics = {
        m: {"mean": float(np.mean(v)),
            **{f"p{q}": float(np.percentile(v, q)) for q in (50, 90, 95, 99)}}
        for m, v in samples.items()
    }
    duration = max(n / rate, 1.0)
    entry: dict[str, Any] = {
        "rate": float(rate), "profile": "constant", "duration_s": round(duration, 3),
        "requests": {"successful": n, "errored": errored, "incomplete": 0},
        "metrics": metrics,
        "throughput": {"requests_per_s": n / duration,
                       "output_tokens_per_s": 256 * n / duration / scale},
    }
    if with_samples:
        entry["samples"] = samples
    return entry


def load_results(variant: str, seed: int, rates: tuple[float, ...] = (1.0, 3.0), n: int = 60,
                 scale: float = 1.0, sigma: float = 0.3, errored: int = 0,
                 with_samples: bool = True) -> dict[str, Any]:
    """Normalized guidellm/results.json content for one round."""
    rng = np.random.default_rng(seed)
    return {"variant": variant, "rates": [
        rate_entry(rng, r, n, scale, sigma, errored, with_samples) for r in rates
    ]}


def accuracy_results(seed: int, tasks: dict[str, tuple[float, int]],
                     flip_to_wrong: float = 0.0) -> dict[str, Any]:
    """Accuracy results: per task (score, n); ``flip_to_wrong`` of correct docs become wrong.

    The same ``seed`` for two variants gives the same baseline draws, so the comparison is
    paired the way two models answering the same questions are.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for task, (score, n) in tasks.items():
        correct = rng.random(n) < score
        flips = rng.random(n) < flip_to_wrong
        final = correct & ~flips
        samples = {f"{task}-{i}": float(v) for i, v in enumerate(final)}
        out[task] = {"metric": "exact_match", "score": float(final.mean()), "n": n,
                     "samples": samples}
    return {"tasks": out}


def fidelity_results(seed: int, flip_rate: float, kl: float, prompts: int = 16) -> dict[str, Any]:
    """fidelity.json content with per-prompt values scattered around the given means."""
    rng = np.random.default_rng(seed)
    per = [{"flip_rate": float(np.clip(rng.normal(flip_rate, flip_rate / 3 + 1e-4), 0, 1)),
            "kl_mean": float(abs(rng.normal(kl, kl / 3 + 1e-5))), "tokens": 64}
           for __ in range(prompts)]
    return {"baseline": "bf16", "prompts": prompts, "tokens": 64 * prompts,
            "flip_rate": float(np.mean([p["flip_rate"] for p in per])),
            "kl_mean": float(np.mean([p["kl_mean"] for p in per])), "per_prompt": per}


def write_json(path: Path, data: Any) -> None:
    """Write compact JSON, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def make_run(root: Path, n: int = 60, rounds: int = 1, w4a16_scale: float = 0.8,
             fp8_scale: float = 1.3, rates: tuple[float, ...] = (1.0, 3.0)) -> Path:
    """A run with bf16 (baseline), w4a16 (faster, same accuracy) and fp8 (slower, less accurate).

    Rounds are written interleaved in spirit: round r of every variant shares a seed offset.
    """
    tasks = {"gsm8k": (0.75, 200), "arc_easy": (0.6, 150)}
    variants = {"bf16": (1.0, 0.0), "w4a16": (w4a16_scale, 0.0), "fp8": (fp8_scale, 0.08)}
    for i, (name, (scale, acc_loss)) in enumerate(variants.items()):
        for r in range(1, rounds + 1):
            fname = "results.json" if r == 1 else f"results-r{r}.json"
            write_json(root / name / "guidellm" / fname,
                       load_results(name, 1000 * r + i, rates, n, scale))
        write_json(root / name / "accuracy" / "results.json",
                   accuracy_results(7, tasks, acc_loss))
        if name != "bf16":
            write_json(root / name / "fidelity.json",
                       fidelity_results(i, 0.02 if name == "w4a16" else 0.09,
                                        0.01 if name == "w4a16" else 0.2))
    write_json(root / "manifest.json", {
        "run_id": root.name,
        "model": {"name": "tiny-nemotron-h", "digest": "sha256:" + "0" * 64},
        "variants": [
            {"name": "bf16", "recipe": None, "baseline": True},
            {"name": "w4a16", "recipe": "w4a16-gptq", "baseline": False},
            {"name": "fp8", "recipe": "fp8-dynamic", "baseline": False},
        ],
        "tools": {"vllm": "0.32.0", "guidellm": "0.8.1", "lm_eval": "0.4.13"},
        "created": "2026-11-30T03:00:00Z",
    })
    return root


if __name__ == "__main__":
    make_run(Path(sys.argv[1] if len(sys.argv) > 1 else "run"), n=40)
