"""GuideLLM reports of every layout, lm-eval native output, and the gate's verdict rules,
on the real (and faithful) samples of tests/data (see the READMEs there)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("numpy")

from modelgate import gate
from modelgate.accuracy import read_lm_eval_native
from modelgate.cli import main
from modelgate.errors import ModelGateError
from modelgate.loadtest import normalize_guidellm_report, report_format

DATA = Path(__file__).resolve().parents[1] / "data"
GLM = DATA / "guidellm"
LM = DATA / "lm_eval"
V03 = GLM / "v0.3_benchmarks_stripped_a1fe883a.json"
V03_FIRST = GLM / "v0.3_benchmarks_stripped_379c64fd.json"
NO_SAMPLES = GLM / "v0.8.1_no_samples.json"
LOAD_ONLY = {"accept_inconclusive": ["accuracy", "fidelity"]}
# The reports here are one run per variant; these tests are about reading them, so their
# policies trust the within-run interval (the default's one-round rule: test_gate_single_round)
ONE_RUN = {"single_round_drift": 1.0}

# file, layout, token-events side, [(rate, profile, successful, request latency p50, samples)]
CI_RATES = [(1.0, "constant", 20, 0.27846813201904297, 20),
            (2.0, "constant", 40, 0.18308520317077637, 40)]
REPORTS = [
    (V03.name, "0.3", "pre-0.7.4", [(None, "synchronous", 46, 0.6424565315246582, 1)]),
    (V03_FIRST.name, "0.3", "pre-0.7.4", [(None, "synchronous", 46, 0.6424565315246582, 1)]),
    ("v0.4_args_benchmarks.json", "0.4", "pre-0.7.4", CI_RATES),
    ("v0.6_metadata_v1.json", "0.5-0.6", "pre-0.7.4", CI_RATES),
    ("v0.7.3_metadata_v2.json", "0.7+", "pre-0.7.4", CI_RATES),
    ("report_ci_tiny.json", "0.7+", "0.7.4+", CI_RATES),
    ("v0.8.1_no_samples.json", "0.7+", "0.7.4+",
     [(r, p, n, p50, 0) for r, p, n, p50, __ in CI_RATES]),
]


def _policy(**extra) -> dict:
    import yaml

    return {**yaml.safe_load(gate.default_policy_path().read_text()), **extra}


def _cli(argv, capsys):
    rc = main(argv, modules=("modelgate.gate", "modelgate.loadtest"))
    captured = capsys.readouterr()
    return rc, captured


# ---------------------------------------------------------------- GuideLLM layouts


@pytest.mark.parametrize(("name", "layout", "side", "expected"), REPORTS,
                         ids=[r[0] for r in REPORTS])
def test_every_guidellm_layout_normalizes(name, layout, side, expected):
    raw = json.loads((GLM / name).read_text())
    res = normalize_guidellm_report(raw, "v")
    assert res["guidellm"]["layout"] == layout
    assert res["guidellm"]["token_events"] == side
    got = [(r["rate"], r["profile"], r["requests"]["successful"],
            r["metrics"]["request_latency_s"]["p50"], len(r["samples"]["request_latency_s"]))
           for r in res["rates"]]
    assert got == expected
    for r in res["rates"]:
        assert r["samples_available"] is (len(r["samples"]["request_latency_s"]) > 0)
        for stats in r["metrics"].values():
            assert stats["p50"] is not None and stats["mean"] is not None
        assert r["throughput"]["requests_per_s"] > 0


def test_v03_totals_latency_and_rate_as_the_user_saw_them():
    r = normalize_guidellm_report(json.loads(V03.read_text()), "v")["rates"][0]
    # the file holds 46 successful requests, one incomplete; p50 is GuideLLM's median
    assert r["requests"] == {"successful": 46, "errored": 0, "incomplete": 1}
    assert r["metrics"]["ttft_ms"]["p50"] == pytest.approx(16.38054847717285)
    assert r["metrics"]["request_latency_s"]["p90"] == pytest.approx(0.6488735675811768)
    assert r["throughput"]["requests_per_s"] == pytest.approx(1.5481806532737452)


def test_report_format_reads_the_version():
    assert report_format({"metadata": {"version": 2, "guidellm_version": "0.7.4"},
                          "benchmarks": []})["token_events"] == "0.7.4+"
    assert report_format({"metadata": {"version": 2}, "benchmarks": []})["token_events"] is None
    assert report_format({"args": {}, "benchmarks": []})["layout"] == "0.4"


def test_cli_normalize_v03(capsys):
    rc, out = _cli(["loadtest-normalize", "--report", str(V03), "--variant", "x"], capsys)
    assert rc == 0
    r = json.loads(out.out)["rates"][0]
    assert (r["profile"], r["requests"]["successful"]) == ("synchronous", 46)
    assert r["metrics"]["request_latency_s"]["p50"] is not None


# ---------------------------------------------------------------- gating real reports


def test_v03_pair_gates_to_a_real_verdict():
    verdict = gate.evaluate(V03_FIRST, V03, _policy(**LOAD_ONLY, **ONE_RUN))
    by = {c.name: c for c in verdict.checks}
    assert {c.point for c in verdict.checks if c.dimension != "accuracy"} >= {"synchronous"}
    # one logged sample each: the p50 checks decide from the summary (46 requests)
    assert by["request-latency-p50"].status == "pass"
    assert "summary-based" in by["request-latency-p50"].reason
    assert by["error-rate"].status == "pass"
    assert by["ttft-p95"].status == "inconclusive"
    assert "ttft-p95 needs per-request samples" in by["ttft-p95"].reason
    assert verdict.status == "pass" and verdict.passed
    # the default policy also wants accuracy and fidelity, and does not judge latency from
    # one round per variant: inconclusive, saying so
    plain = gate.evaluate(V03_FIRST, V03, None)
    assert plain.status == "inconclusive"
    assert set(d for d, v in plain.dimensions.items() if v["status"] == "pass") == {"errors"}
    p50 = next(c for c in plain.checks if c.name == "request-latency-p50")
    assert p50.status == "inconclusive" and "summary-based" in p50.reason
    assert "one round per variant" in p50.reason and "single_round_drift" in p50.reason
    assert "modelgate accuracy" in plain.failure_message()


def test_no_samples_report_decides_from_the_summary_and_names_what_needs_samples():
    policy = {**ONE_RUN, "checks": [
        {"name": "p50-wide", "metric": "request_latency_s", "tolerance": 0.5, "min_samples": 20},
        {"name": "p50-10pct", "metric": "request_latency_s", "tolerance": 0.1, "min_samples": 20},
        {"name": "ttft-p95", "metric": "ttft_ms", "statistic": "p95", "tolerance": 0.15}]}
    verdict = gate.evaluate(NO_SAMPLES, NO_SAMPLES, policy)
    by = {n: [c for c in verdict.checks if c.name == n]
          for n in ("p50-wide", "p50-10pct", "ttft-p95")}
    # 20 and 40 requests of a noisy CPU run: a 50% tolerance is decided from the summary, a
    # 10% one honestly is not (the samples' bootstrap says the same: CI 0.83-1.22 at 1 rps)
    assert [c.status for c in by["p50-wide"]] == ["pass", "pass"]
    assert all(c.ci_low < 1.0 < c.ci_high and "summary-based" in c.reason
               for c in by["p50-wide"] + by["p50-10pct"])
    assert {c.status for c in by["p50-10pct"]} == {"inconclusive"}
    assert {c.status for c in by["ttft-p95"]} == {"inconclusive"}
    assert all("ttft-p95 needs per-request samples" in c.reason and "sample_size" in c.reason
               for c in by["ttft-p95"])
    assert verdict.dimensions["latency"]["status"] == "pass" and verdict.passed


def test_mixed_guidellm_versions_are_refused_unless_allowed(tmp_path, capsys):
    old, new = GLM / "v0.7.3_metadata_v2.json", GLM / "report_ci_tiny.json"
    with pytest.raises(ModelGateError, match=r"0\.7\.4"):
        gate.evaluate(old, new, _policy(**LOAD_ONLY))
    rc, out = _cli(["gate", "--baseline", str(old), "--candidate", str(new)], capsys)
    assert rc == 2 and "Traceback" not in out.err
    err = json.loads(out.out)
    assert "0.7.4" in err["error"] and "--allow-mixed-guidellm-versions" in err["fix"]
    allowed = gate.evaluate(old, new, _policy(allow_mixed_guidellm_versions=True, **LOAD_ONLY))
    assert any("0.7.4" in n for n in allowed.notes)
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps(_policy(**LOAD_ONLY)))
    rc, __ = _cli(["gate", "--baseline", str(old), "--candidate", str(new), "--policy",
                  str(policy), "--allow-mixed-guidellm-versions"], capsys)
    assert rc in (0, 1, 3)
    # the same side (0.4 and 0.6 layouts, both before 0.7.4) is fine
    gate.evaluate(GLM / "v0.4_args_benchmarks.json", GLM / "v0.6_metadata_v1.json",
                  _policy(**LOAD_ONLY))


# ---------------------------------------------------------------- lm-eval native output


def test_lm_eval_native_acc_loads_as_accuracy_and_gates():
    acc = read_lm_eval_native(LM / "asdiv_acc")
    task = acc["tasks"]["asdiv"]
    assert (task["metric"], task["filter"], task["n"]) == ("acc", "none", 50)
    assert task["score"] == pytest.approx(0.92) == task["lm_eval_score"]
    policy = {"checks": [{"metric": "accuracy:*", "tolerance": 0.99, "min_samples": 20}]}
    # a model-name folder of lm-eval's output is a valid (stored) baseline and candidate
    verdict = gate.evaluate(LM / "asdiv_acc", LM / "asdiv_acc", policy)
    [check] = verdict.checks
    assert check.status == "pass" and check.n_baseline == 50
    assert verdict.passed


def test_lm_eval_native_f1_task_loads_without_a_traceback(capsys):
    acc = read_lm_eval_native(LM / "masakhaner_f1")
    task = acc["tasks"]["masakhaner_luo_prompt_1"]
    assert task["metric"] == "f1" and task["samples"] == {}
    assert task["score"] == pytest.approx(0.0656270305392884)
    assert "aggregate" in task["note"]
    policy = {"checks": [{"metric": "accuracy:*", "tolerance": 0.99}]}
    results = next((LM / "masakhaner_f1").rglob("results_*.json"))
    verdict = gate.evaluate(results, LM / "masakhaner_f1", policy)  # a file or its folder
    [check] = verdict.checks
    assert check.status == "inconclusive" and check.ratio == pytest.approx(1.0)
    assert "paired comparison impossible" in check.reason and "aggregate" in check.reason
    assert verdict.status == "inconclusive"
    rc, out = _cli(["gate", "--baseline", str(LM / "masakhaner_f1"), "--candidate",
                    str(LM / "masakhaner_f1")], capsys)
    assert rc == 3 and "Traceback" not in out.err


def test_parse_samples_of_list_valued_metric_is_empty_not_an_error():
    from modelgate.accuracy import binary_f1, parse_samples

    lines = [{"doc_id": 0, "filter": "none", "f1": [1, 1]},
             {"doc_id": 1, "filter": "none", "f1": [0, 1]}]
    assert parse_samples(lines, "f1", "none") == {}
    assert binary_f1([(1, 1), (0, 1), (1, 0), (0, 0)]) == pytest.approx(0.5)


def test_variant_folder_with_lm_eval_output_under_accuracy(tmp_path):
    folder = tmp_path / "bf16"
    shutil.copytree(LM / "asdiv_acc", folder / "accuracy")
    variant = gate.load_variant(folder)
    assert "asdiv" in variant.accuracy["tasks"]


# ---------------------------------------------------------------- unreadable input: exit 2


GARBAGE = [
    ("binary.json", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"),
    ("truncated.json", b'{"benchmarks": [{"metrics": '),
    ("list.json", b"[1, 2, 3]"),
    ("bad_benchmarks.json", b'{"benchmarks": ["not an object"]}'),
    ("bad_rates.json", b'{"rates": [{"rate": "fast"}]}'),
    ("bad_accuracy.json", b'{"tasks": {"gsm8k": {"samples": {"0": "yes"}}}}'),
]


@pytest.mark.parametrize(("name", "content"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_unreadable_file_exits_2_with_a_json_error_naming_it(tmp_path, capsys, name, content):
    bad = tmp_path / name
    bad.write_bytes(content)
    rc, out = _cli(["gate", "--baseline", str(bad), "--candidate", str(V03)], capsys)
    assert rc == 2
    assert "Traceback" not in out.err
    err = json.loads(out.out)
    assert str(bad) in err["error"] and err["fix"]


def test_unreadable_report_for_normalize_exits_2(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_bytes(b"\xff\xfe garbage")
    rc, out = _cli(["loadtest-normalize", "--report", str(bad), "--variant", "x"], capsys)
    assert rc == 2 and str(bad) in json.loads(out.out)["error"]


# ---------------------------------------------------------------- verdict rules


def test_all_inconclusive_is_inconclusive_exit_3(tmp_path, capsys):
    # latency p95 only, and no samples: nothing can decide
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps({"checks": [{"metric": "ttft_ms", "statistic": "p95",
                                              "tolerance": 0.1}]}))
    out_json = tmp_path / "gate.json"
    junit = tmp_path / "junit.xml"
    rc, out = _cli(["gate", "--baseline", str(NO_SAMPLES), "--candidate", str(NO_SAMPLES),
                    "--policy", str(policy), "--out", str(out_json), "--junit", str(junit)],
                   capsys)
    assert rc == 3
    data = json.loads(out.out)
    assert data["status"] == "inconclusive" and data["passed"] is False
    assert data["dimensions"]["latency"]["status"] == "inconclusive"
    assert "latency: no check decided" in data["message"] and "to get it" in data["message"]
    assert json.loads(out_json.read_text())["status"] == "inconclusive"
    assert 'type="inconclusive"' in junit.read_text()


def test_policy_accepting_an_inconclusive_dimension_passes(capsys, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps({
        "accept_inconclusive": ["accuracy"], **ONE_RUN,
        "checks": [{"metric": "request_latency_s", "tolerance": 0.1, "min_samples": 20},
                   {"metric": "accuracy:*", "tolerance": 0.99}]}))
    rc, out = _cli(["gate", "--baseline", str(V03_FIRST), "--candidate", str(V03),
                    "--policy", str(policy)], capsys)
    data = json.loads(out.out)
    assert rc == 0 and data["status"] == "pass" and data["passed"] is True
    assert data["dimensions"]["accuracy"] == {**data["dimensions"]["accuracy"],
                                              "status": "inconclusive",
                                              "accepted_inconclusive": True}


def test_a_failed_check_still_fails_with_exit_1(tmp_path, capsys):
    slow = json.loads(NO_SAMPLES.read_text())
    for b in slow["benchmarks"]:
        lat = b["metrics"]["request_latency"]["successful"]
        lat["median"] *= 2
        lat["percentiles"] = {k: v * 2 for k, v in lat["percentiles"].items()}
    cand = tmp_path / "slow.json"
    cand.write_text(json.dumps(slow))
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps({**ONE_RUN, "checks": [
        {"metric": "request_latency_s", "tolerance": 0.1, "min_samples": 20}]}))
    rc, out = _cli(["gate", "--baseline", str(NO_SAMPLES), "--candidate", str(cand),
                    "--policy", str(policy)], capsys)
    assert rc == 1 and json.loads(out.out)["status"] == "fail"


@pytest.mark.parametrize("bad", [["speed"], "nonsense", [1]])
def test_accept_inconclusive_is_validated(bad):
    with pytest.raises(ModelGateError) as err:
        gate.parse_policy({"accept_inconclusive": bad, "checks": [
            {"metric": "error_rate", "tolerance": 0.01}]})
    assert err.value.field == "accept_inconclusive"


def test_run_without_candidates_is_inconclusive():
    verdict = gate.RunVerdict(run_id="r", baseline="bf16", verdicts=[])
    assert verdict.status == "inconclusive" and not verdict.passed
