"""The VALIDATE stage's measurements, for real: GuideLLM load, lm-eval accuracy, fidelity.

Starts one vLLM CPU server on the tiny model and drives the real tools against it.
Environment (each test skips with the reason when its variable is unset):

- ``MODELGATE_BENCH_BIN_DIR``: bin/ of a virtualenv with guidellm 0.8.1 and lm-eval[api]
  0.4.13 (e.g. /tmp/probe/bench/bin)
- ``MODELGATE_SERVE_PYTHON``: python of a virtualenv with vLLM (e.g. /tmp/probe/serve/bin/python)
- ``MODELGATE_TEST_MODEL``: a model directory vLLM serves here (the tiny hybrid model)
- ``MODELGATE_VALIDATE_TEST_PORT``: optional, default 18301

Measured on the 2-core development machine: vLLM start-up 26-35 s, the ci load profile
55 s, both local accuracy tasks 34-37 s, fidelity A vs A 4-7 s (about 2 minutes in all).
Run it under ``flock /tmp/modelgate-heavy.lock`` where several people share the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from modelgate import cli
from modelgate.accuracy import PRESETS as ACCURACY_PRESETS
from modelgate.accuracy import run_accuracy
from modelgate.fidelity import collect_logprobs, compare, load_prompts
from modelgate.gate import evaluate
from modelgate.loadtest import PRESETS as LOAD_PRESETS
from modelgate.loadtest import guidellm_command, run_load
from modelgate.process import ProcessSpec, start, stop, wait_http

pytestmark = pytest.mark.needs_tools

PORT = int(os.environ.get("MODELGATE_VALIDATE_TEST_PORT", "18301"))
SERVED = "tiny"
TIMINGS: dict[str, float] = {}


def _env_path(name: str) -> Path:
    value = os.environ.get(name, "")
    if not value or not Path(value).exists():
        pytest.skip(f"{name} is not set to an existing path (see this module's docstring)")
    return Path(value)


@pytest.fixture(scope="module")
def bench_bin() -> Path:
    return _env_path("MODELGATE_BENCH_BIN_DIR")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return _env_path("MODELGATE_TEST_MODEL")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    serve_python = _env_path("MODELGATE_SERVE_PYTHON")
    spec = ProcessSpec(
        name=f"vllm-validate-{PORT}",
        argv=[str(serve_python), "-m", "vllm.entrypoints.openai.api_server",
              "--model", str(model_dir), "--served-model-name", SERVED,
              "--host", "127.0.0.1", "--port", str(PORT),
              "--enforce-eager", "--max-model-len", "1024", "--dtype", "bfloat16"],
        state_dir=tmp_path_factory.mktemp("vllm"),
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    t0 = time.monotonic()
    start(spec)
    try:
        wait_http(f"http://127.0.0.1:{PORT}/v1/models", timeout=300, spec=spec)
        TIMINGS["vllm_startup_s"] = round(time.monotonic() - t0, 1)
        yield f"http://127.0.0.1:{PORT}"
    finally:
        stop(spec)
        print(f"\nvalidate-tools timings: {json.dumps(TIMINGS)}")


def test_guidellm_parses_the_seed_command(bench_bin, model_dir, tmp_path):
    """GuideLLM's own CLI parser and schemas accept the seed sweep we build (no run)."""
    argv = guidellm_command(LOAD_PRESETS["seed"], "http://gpu:8000", "nemotron",
                            str(model_dir), str(tmp_path / "report.json"))
    script = (
        "import json, sys\n"
        "from guidellm.cli.run import run\n"
        "from guidellm.schemas.benchmark import BenchmarkArgs\n"
        "ctx = run.make_context('run', json.loads(sys.argv[1]))\n"
        "spec = {k: v for k, v in ctx.params.items()\n"
        "        if k in BenchmarkArgs.model_fields and v not in (None, [], ())}\n"
        "print(BenchmarkArgs.model_validate(spec).model_dump_json())\n"
    )
    out = subprocess.run([str(bench_bin / "python"), "-c", script, json.dumps(argv[2:])],
                         capture_output=True, text=True, check=True, timeout=120)
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed["profile"]["kind"] == "constant"
    assert parsed["profile"]["rate"] == [float(r) for r in range(1, 10)]
    constraints = {c["kind"]: c for c in parsed["constraints"]}
    assert constraints["max_duration"]["seconds"] == 900
    assert constraints["over_saturation"]["mode"] == "enforce"
    assert constraints["max_error_rate"]["rate"] == 0.5
    assert parsed["data"][0]["prompt_tokens_max"] == 614
    assert parsed["data_loader"]["samples"] == 1000


def test_reasoning_presets_name_tasks_lm_eval_ships(bench_bin):
    """The hub-backed presets can't run offline, but their task names must exist."""
    out = subprocess.run([str(bench_bin / "python"), "-c",
                          "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
                         capture_output=True, text=True, check=True, timeout=60)
    tasks_dir = Path(out.stdout.strip()) / "tasks"
    declared = set()
    for yml in tasks_dir.rglob("*.yaml"):
        for line in yml.read_text(errors="replace").splitlines():
            if line.startswith("task:"):
                declared.add(line.split(":", 1)[1].strip().strip("'\""))
    for preset in ACCURACY_PRESETS.values():
        if not preset.local:
            assert preset.lm_eval_task in declared, preset.name


def test_load_ci_profile(server, bench_bin, model_dir, tmp_path):
    t0 = time.monotonic()
    summary = run_load(LOAD_PRESETS["ci"], server, SERVED, str(model_dir),
                       tmp_path / "bf16" / "guidellm", str(bench_bin / "guidellm"),
                       cpu_affinity=[os.cpu_count() - 1] if os.cpu_count() else None)
    TIMINGS["guidellm_ci_s"] = round(time.monotonic() - t0, 1)
    assert summary["variant"] == "bf16"
    out = tmp_path / "bf16" / "guidellm"
    assert (out / "report.json").exists()
    results = json.loads((out / "results.json").read_text())
    assert [r["rate"] for r in results["rates"]] == [1.0, 2.0]
    for r in results["rates"]:
        ok = r["requests"]["successful"]
        # 20 s at a constant rate: about rate x 20 requests, none failing
        assert ok >= 0.7 * r["rate"] * 20, r
        assert r["requests"]["errored"] == 0
        assert len(r["samples"]["request_latency_s"]) == ok
        assert all(v > 0 for v in r["samples"]["ttft_ms"])
        assert 0 < r["metrics"]["ttft_ms"]["p50"] <= r["metrics"]["ttft_ms"]["p99"]
        assert r["throughput"]["output_tokens_per_s"] > 0


def test_load_interleaved_a_vs_a_through_the_cli(server, bench_bin, model_dir, tmp_path,
                                                 capsys):
    # the same server under two names: GuideLLM drives both through the interleaving proxy
    t0 = time.monotonic()
    rc = cli.main(["loadtest", "--interleave", f"bf16={server}", "--interleave",
                   f"again={server}", "--model", SERVED, "--processor", str(model_dir),
                   "--profile", "ci", "--rates", "2", "--max-seconds", "20",
                   "--out", str(tmp_path), "--guidellm", str(bench_bin / "guidellm"),
                   "--cpu-affinity", str(os.cpu_count() - 1)],
                  modules=("modelgate.loadtest",))
    TIMINGS["guidellm_interleaved_s"] = round(time.monotonic() - t0, 1)
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["proxy"]["by_upstream"]["bf16"] >= 30
    raw = json.loads((tmp_path / "interleaved" / "r1" / "report.json").read_text())
    # GuideLLM ran at twice the rate: each variant got the 2 requests/s asked for
    assert raw["benchmarks"][0]["config"]["strategy"]["rate"] == 4.0
    # only a request GuideLLM cancelled at the end, before any answer, has no response id
    unanswered = sum(1 for kind in ("successful", "errored", "incomplete")
                     for r in raw["benchmarks"][0]["requests"][kind] if not r.get("response_id"))
    assert unanswered <= len(raw["benchmarks"][0]["requests"]["incomplete"])
    counts = {}
    for variant in ("bf16", "again"):
        [entry] = json.loads((tmp_path / variant / "guidellm" / "results.json").read_text())[
            "rates"]
        assert entry["rate"] == 2.0 and entry["interleaved"]["unattributed"] == unanswered
        assert entry["requests"]["errored"] == 0
        counts[variant] = entry["requests"]["successful"]
        assert len(entry["blocks"]["request_latency_s"]) == counts[variant]
        assert set(entry["blocks"]["request_latency_s"]) == set(range(4))  # 20 s / 5 s
    assert counts["bf16"] >= 0.7 * 2 * 20 and abs(counts["bf16"] - counts["again"]) <= 2
    # the gate pairs the two block by block; the same server must not fail against itself
    verdict = evaluate(tmp_path / "bf16", tmp_path / "again", {"min_rounds": 3, "checks": [
        {"name": "p50", "metric": "request_latency_s", "statistic": "p50", "tolerance": 0.10,
         "min_samples": 20}]})
    [check] = verdict.checks
    assert check.status != "fail", check.reason
    assert "4 paired interleaved blocks" in check.reason
    print(f"interleaved A vs A: {check.reason}", file=sys.stderr)


def test_accuracy_local_tasks(server, bench_bin, model_dir, tmp_path):
    t0 = time.monotonic()
    res = run_accuracy(["modelgate_arith", "modelgate_choice"], server, SERVED,
                       str(model_dir), tmp_path / "bf16" / "accuracy",
                       str(bench_bin / "lm-eval"), max_length=1024)
    TIMINGS["lm_eval_local_s"] = round(time.monotonic() - t0, 1)
    written = json.loads((tmp_path / "bf16" / "accuracy" / "results.json").read_text())
    assert written == {"tasks": res["tasks"]}
    for name, n, metric in (("modelgate_arith", 50, "exact_match"),
                            ("modelgate_choice", 200, "acc")):
        t = written["tasks"][name]
        assert (t["metric"], t["n"]) == (metric, n)
        assert set(t["samples"]) == {str(i) for i in range(n)}
        assert set(t["samples"].values()) <= {0.0, 1.0}
        # our per-sample mean is lm-eval's own aggregate
        assert t["score"] == pytest.approx(t["lm_eval_score"])
        logs = list((tmp_path / "bf16" / "accuracy" / "lm_eval" / name).rglob("samples_*.jsonl"))
        assert logs, "lm-eval's per-sample log is kept"


def test_fidelity_a_vs_a(server, tmp_path, capsys):
    t0 = time.monotonic()
    prompts = load_prompts()
    base = collect_logprobs(server, SERVED, prompts, max_tokens=16, top_k=10)
    cand = collect_logprobs(server, SERVED, [], reference=base, top_k=10)
    TIMINGS["fidelity_collect_s"] = round(time.monotonic() - t0, 1)
    assert len(base["prompts"]) == 32
    for p in base["prompts"]:
        assert len(p["continuation_token_ids"]) == len(p["positions"]) == 16
        assert all(1 <= len(pos["top"]) <= 11 for pos in p["positions"])
    # the teacher-forced scores agree with the server's own greedy choices
    agreement = sum(p["greedy_agreement"] for p in base["prompts"]) / 32
    assert agreement >= 0.9
    res = compare(base, cand, baseline_name="bf16")
    assert res["tokens"] == 32 * 16
    assert res["flip_rate"] == 0.0
    assert res["kl_mean"] == pytest.approx(0.0, abs=1e-6)

    # and through the CLI, which prints JSON
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "cand.json").write_text(json.dumps(cand))
    rc = cli.main(["fidelity", "compare", "--baseline", str(tmp_path / "base.json"),
                   "--candidate", str(tmp_path / "cand.json"), "--baseline-name", "bf16",
                   "--out", str(tmp_path / "w" / "fidelity.json")],
                  modules=("modelgate.fidelity",))
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["flip_rate"] == 0.0 and printed["prompts"] == 32
    written = json.loads((tmp_path / "w" / "fidelity.json").read_text())
    assert set(written) >= {"baseline", "prompts", "tokens", "flip_rate", "kl_mean",
                            "per_prompt"}
    assert written["baseline"] == "bf16"
    print(f"fidelity A vs A: {printed}", file=sys.stderr)
