"""GuideLLM command building and report normalization (no GuideLLM needed).

The report under tests/data/guidellm/ is a real GuideLLM 0.8.1 report (ci profile, the tiny
hybrid model on vLLM CPU 0.32), trimmed to the fields ModelGate reads.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.loadtest import (
    PRESETS,
    get_profile,
    guidellm_command,
    guidellm_env,
    normalize_guidellm_report,
    split_interleaved,
)

REPORT = Path(__file__).resolve().parent.parent / "data" / "guidellm" / "report_ci_tiny.json"


def _opts(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (GuideLLM options are repeatable)."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def _kv(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in value.split(","))


@pytest.fixture(scope="module")
def raw_report() -> dict:
    return json.loads(REPORT.read_text())


def test_seed_profile_matches_the_seed_workflow():
    argv = guidellm_command(PRESETS["seed"], "http://gpu:8000/v1", "nemotron", "/models/w4a16",
                            "/run/w4a16/guidellm/report.json", "/venv/bin/guidellm")
    assert argv[:2] == ["/venv/bin/guidellm", "run"]
    backend = _kv(_opts(argv, "--backend")[0])
    # GuideLLM appends the API paths itself: the target is the server root
    assert backend == {"kind": "openai_http", "target": "http://gpu:8000", "model": "nemotron",
                       "request_format": "/v1/completions"}
    profile = _kv(_opts(argv, "--profile")[0])
    assert profile["kind"] == "constant"
    assert [profile[f"rate[{i}]"] for i in range(9)] == [str(r) for r in range(1, 10)]
    data = _kv(_opts(argv, "--data")[0])
    assert data == {
        "kind": "synthetic_text",
        "prompt_tokens": "512", "prompt_tokens_stdev": "51",
        "prompt_tokens_min": "410", "prompt_tokens_max": "614",
        "output_tokens": "256", "output_tokens_stdev": "26",
        "output_tokens_min": "205", "output_tokens_max": "307",
    }
    assert _kv(_opts(argv, "--data-loader")[0]) == {"kind": "pytorch", "samples": "1000"}
    assert _kv(_opts(argv, "--tokenizer")[0]) == {"kind": "huggingface_auto",
                                                  "model": "/models/w4a16"}
    constraints = {c["kind"]: c for c in map(_kv, _opts(argv, "--constraint"))}
    assert constraints["max_duration"]["seconds"] == "900"
    assert constraints["over_saturation"]["stopping_scope"] == "all"
    assert constraints["max_error_rate"]["rate"] == "0.5"
    assert "max_requests" not in constraints
    assert _kv(_opts(argv, "--output")[0]) == {"kind": "json",
                                               "path": "/run/w4a16/guidellm/report.json"}
    assert "--disable-console-interactive" in argv


def test_ci_profile_is_short_and_skips_saturation_detection():
    argv = guidellm_command(PRESETS["ci"], "http://127.0.0.1:18300", "tiny", "/m", "/o.json")
    profile = _kv(_opts(argv, "--profile")[0])
    assert profile == {"kind": "constant", "rate[0]": "1", "rate[1]": "2"}
    kinds = [_kv(c)["kind"] for c in _opts(argv, "--constraint")]
    assert kinds == ["max_duration", "max_error_rate"]
    data = _kv(_opts(argv, "--data")[0])
    assert (data["prompt_tokens"], data["output_tokens"]) == ("64", "32")
    # few client processes: they start much faster on a 2-core host
    assert guidellm_env(PRESETS["ci"]) == {"GUIDELLM__MAX_WORKER_PROCESSES": "2"}
    assert guidellm_env(PRESETS["seed"]) == {}


def test_overrides_and_passthrough_args():
    prof = get_profile("ci", rates=[0.5, 3], max_seconds=5, max_requests=10,
                       extra_args=["--metrics", "kind=generative,sample_size=50"])
    argv = guidellm_command(prof, "http://h:1", "m", "/m", "/o.json")
    assert _kv(_opts(argv, "--profile")[0]) == {"kind": "constant", "rate[0]": "0.5",
                                                "rate[1]": "3"}
    constraints = {c["kind"]: c for c in map(_kv, _opts(argv, "--constraint"))}
    assert constraints["max_duration"]["seconds"] == "5"
    assert constraints["max_requests"]["count"] == "10"
    assert argv[-2:] == ["--metrics", "kind=generative,sample_size=50"]
    assert prof.to_dict()["rates"] == [0.5, 3.0]


@pytest.mark.parametrize("bad", [
    {"name": "nope"},
])
def test_unknown_profile_names_the_choices(bad):
    with pytest.raises(ModelGateError) as err:
        get_profile(bad["name"])
    assert "ci" in (err.value.fix or "") and "seed" in (err.value.fix or "")


def test_comma_in_a_value_is_refused():
    with pytest.raises(ModelGateError, match="comma"):
        guidellm_command(PRESETS["ci"], "http://h:1", "m", "/models/a,b", "/o.json")


def test_no_rates_is_refused():
    with pytest.raises(ModelGateError):
        guidellm_command(get_profile("ci", rates=[]), "http://h:1", "m", "/m", "/o.json")


def test_normalize_real_report(raw_report):
    res = normalize_guidellm_report(raw_report, "bf16")
    assert res["variant"] == "bf16"
    assert [r["rate"] for r in res["rates"]] == [1.0, 2.0]
    for r, bench in zip(res["rates"], raw_report["benchmarks"], strict=True):
        assert r["profile"] == "constant"
        assert r["stopped_by"] == ["max_duration"] and r["over_saturated"] is False
        assert r["duration_s"] == pytest.approx(20.0)
        totals = bench["metrics"]["request_totals"]
        assert r["requests"] == {"successful": totals["successful"], "errored": 0,
                                 "incomplete": 0}
        # percentiles are GuideLLM's own, for successful requests
        lat = bench["metrics"]["request_latency"]["successful"]
        assert r["metrics"]["request_latency_s"]["p50"] == lat["percentiles"]["p50"]
        assert r["metrics"]["request_latency_s"]["p99"] == lat["percentiles"]["p99"]
        assert set(r["metrics"]) == {"request_latency_s", "ttft_ms", "itl_ms", "tpot_ms"}
        for name, stats in r["metrics"].items():
            # the gate's statistics, plus what a summary-based decision needs
            assert set(stats) == {"mean", "p50", "p90", "p95", "p99", "p25", "p75", "std_dev",
                                  "count"}, name
            assert stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"]
            # one sample per successful request; they reproduce GuideLLM's mean exactly for
            # per-request metrics, closely for ITL/TPOT (which GuideLLM weights by tokens)
            samples = r["samples"][name]
            assert len(samples) == totals["successful"]
            rel = 1e-9 if name in ("request_latency_s", "ttft_ms") else 0.03
            assert statistics.mean(samples) == pytest.approx(stats["mean"], rel=rel)
        # constant rate: achieved throughput is the target rate
        assert r["throughput"]["requests_per_s"] == pytest.approx(r["rate"], rel=0.05)
        assert r["throughput"]["output_tokens_per_s"] > 0
    # milliseconds vs seconds are not mixed up
    first = res["rates"][0]
    assert first["metrics"]["ttft_ms"]["p50"] > 1.0
    assert first["metrics"]["request_latency_s"]["p50"] < 10.0


def test_normalize_is_json_serializable_and_pure(raw_report):
    before = json.dumps(raw_report, sort_keys=True)
    res = normalize_guidellm_report(raw_report, "x")
    json.dumps(res)
    assert json.dumps(raw_report, sort_keys=True) == before


def test_normalize_falls_back_to_timings_for_latency():
    raw = {"benchmarks": [{
        "config": {"strategy": {"type_": "constant", "rate": 3.0}},
        "start_time": 10.0, "end_time": 40.0,
        "metrics": {"request_totals": {"successful": 1, "errored": 2, "incomplete": 1}},
        "requests": {"successful": [{"info": {"timings": {"request_start": 1.0,
                                                          "request_end": 1.5}}}]},
    }]}
    r = normalize_guidellm_report(raw, "v")["rates"][0]
    assert r["duration_s"] == 30.0
    assert r["requests"] == {"successful": 1, "errored": 2, "incomplete": 1}
    assert r["samples"]["request_latency_s"] == [0.5]
    assert r["samples"]["ttft_ms"] == []
    assert r["metrics"]["ttft_ms"]["p50"] is None


def test_normalize_rejects_what_is_not_a_report():
    with pytest.raises(ModelGateError, match="benchmarks"):
        normalize_guidellm_report({"results": []}, "v")


def test_cli_normalize_prints_and_writes_results(tmp_path, capsys):
    from modelgate import cli

    out = tmp_path / "results.json"
    rc = cli.main(["loadtest-normalize", "--report", str(REPORT), "--variant", "w4a16",
                   "--write", str(out)], modules=("modelgate.loadtest",))
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == {"results": str(out), "rates": 2}
    assert json.loads(out.read_text())["variant"] == "w4a16"


def test_cli_loadtest_reports_a_missing_guidellm_as_json(tmp_path, capsys):
    from modelgate import cli

    rc = cli.main(["loadtest", "--target", "http://127.0.0.1:1", "--model", "m",
                   "--processor", "/m", "--out", str(tmp_path), "--variant", "bf16",
                   "--guidellm", str(tmp_path / "no-such-guidellm")],
                  modules=("modelgate.loadtest",))
    assert rc == 2
    err = json.loads(capsys.readouterr().out)
    assert err["field"] == "guidellm" and "guidellm==0.8.1" in err["fix"]


# ---------------------------------------------------------------- interleaved runs


def _interleaved(raw_report: dict) -> tuple[dict, list[dict]]:
    """The stored report as if measured through an interleaving proxy: requests in order of
    start went to a, b, a, b, ...; the proxy's records carry the same response ids."""
    raw = json.loads(json.dumps(raw_report))
    routes = []
    for b, bench in enumerate(raw["benchmarks"]):
        reqs = [r for kind in ("successful", "errored", "incomplete")
                for r in bench["requests"][kind]]
        reqs.sort(key=lambda r: r.get("request_start_time") or 0)
        for i, req in enumerate(reqs):
            req["response_id"] = f"cmpl-{b}-{i}"
            routes.append({"seq": len(routes), "upstream": "ab"[i % 2],
                           "sent": req.get("request_start_time") or 0,
                           "status": 200, "response_id": req["response_id"],
                           "complete": True})
    return raw, routes


def test_split_interleaved_gives_each_variant_its_own_requests(raw_report):
    raw, routes = _interleaved(raw_report)
    # one request of the last rate was refused by b's server and GuideLLM kept no id for it
    last = raw["benchmarks"][-1]
    routes.append({"seq": len(routes), "upstream": "b", "sent": last["start_time"] + 1,
                   "status": 503, "response_id": None, "complete": True})
    split = split_interleaved(raw, routes, ["a", "b"], block_s=5.0)
    whole = normalize_guidellm_report(raw, "x")["rates"]
    for i, entry in enumerate(whole):
        a, b = split["a"]["rates"][i], split["b"]["rates"][i]
        # each variant received half of the load GuideLLM generated
        assert a["rate"] == b["rate"] == entry["rate"] / 2
        assert a["requests"]["successful"] + b["requests"]["successful"] == \
            entry["requests"]["successful"]
        assert abs(a["requests"]["successful"] - b["requests"]["successful"]) <= 1
        for metric, values in entry["samples"].items():
            assert sorted(a["samples"][metric] + b["samples"][metric]) == sorted(values)
            assert len(a["blocks"][metric]) == len(a["samples"][metric])
            # both variants' blocks tile the same run from its start
            assert min(a["blocks"][metric]) == 0 and min(b["blocks"][metric]) == 0
            assert max(a["blocks"][metric]) <= entry["duration_s"] // 5
        lat = sorted(a["samples"]["request_latency_s"])
        assert a["metrics"]["request_latency_s"]["p50"] == pytest.approx(statistics.median(lat))
        assert a["interleaved"] == {"variants": ["a", "b"], "block_s": 5.0,
                                    "load_rate": entry["rate"], "unattributed": 0}
    assert split["b"]["rates"][-1]["requests"]["errored"] == 1
    assert split["a"]["rates"][-1]["requests"]["errored"] == 0


def test_split_interleaved_counts_what_it_cannot_attribute(raw_report):
    raw, routes = _interleaved(raw_report)
    split = split_interleaved(raw, routes[: len(routes) // 2], ["a", "b"])
    assert split["a"]["rates"][-1]["interleaved"]["unattributed"] > 0
    with pytest.raises(ModelGateError, match="block_s"):
        split_interleaved(raw, routes, ["a", "b"], block_s=0)
    with pytest.raises(ModelGateError, match="benchmarks"):
        split_interleaved({}, routes, ["a", "b"])
