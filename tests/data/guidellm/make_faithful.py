"""Rebuild the faithful (not captured) GuideLLM reports of this folder; see README.md.

Each one keeps the *benchmarks* of a real report and reshapes only what the named GuideLLM
version's report schema puts elsewhere (top-level ``args`` / ``metadata`` / ``config``, the
distribution array's name), so every number in it was measured by GuideLLM.
Run: python tests/data/guidellm/make_faithful.py
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CI = json.loads((HERE / "report_ci_tiny.json").read_text())  # real, GuideLLM 0.8.1

ARGS = {  # BenchmarkGenerativeTextArgs (0.4-0.6): what `guidellm benchmark` was given
    "target": "http://127.0.0.1:8000", "data": ["prompt_tokens=64,output_tokens=32"],
    "profile": "constant", "rate": [1.0, 2.0], "backend": "openai_http", "model": None,
    "processor": "tiny-nemotron-h", "random_seed": 42, "max_seconds": 20,
}


def _with_pdf(bench: dict) -> dict:
    """0.4+ distribution summaries carry ``pdf`` (0.3: ``cumulative_distribution_function``)."""
    bench = copy.deepcopy(bench)
    for metric in bench["metrics"].values():
        if isinstance(metric, dict):
            for dist in metric.values():
                if isinstance(dist, dict) and "percentiles" in dist:
                    dist.setdefault("pdf", None)
    return bench


def main() -> None:
    benches = [_with_pdf(b) for b in CI["benchmarks"]]
    note = ("faithful {v} layout built by make_faithful.py from report_ci_tiny.json "
            "(real GuideLLM 0.8.1 benchmarks); see README.md")
    files = {
        "v0.4_args_benchmarks.json": {"args": ARGS, "benchmarks": benches},
        "v0.6_metadata_v1.json": {
            "metadata": {"version": 1, "guidellm_version": "0.6.0",
                         "python_version": "3.11.7", "platform": "Linux-x86_64"},
            "args": ARGS, "benchmarks": benches},
        "v0.7.3_metadata_v2.json": {
            "metadata": {"version": 2, "guidellm_version": "0.7.3",
                         "python_version": "3.11.7", "platform": "Linux-x86_64"},
            "config": {"spec": {"profile": {"kind": "constant", "rate": [1.0, 2.0]},
                                "backend": {"kind": "openai_http"}}},
            "benchmarks": benches},
    }
    no_samples = copy.deepcopy(CI)
    for b in no_samples["benchmarks"]:
        # GuideLLM 0.8 with sample_size=0 keeps the summaries and counts, no requests
        b["requests"] = {"successful": [], "errored": [], "incomplete": []}
    no_samples["trimmed"] = "report_ci_tiny.json without per-request samples (see README.md)"
    files["v0.8.1_no_samples.json"] = no_samples
    for name, data in files.items():
        if "trimmed" not in data:
            data = {**data, "trimmed": note.format(v=name.split("_", maxsplit=1)[0])}
        (HERE / name).write_text(json.dumps(data, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
