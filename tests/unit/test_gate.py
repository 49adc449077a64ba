"""Unit tests of modelgate.gate on synthetic run directories (tests/data/gate/make_run.py)."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

from modelgate import gate  # noqa: E402
from modelgate.cli import main  # noqa: E402
from modelgate.errors import ModelGateError  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"
from conftest import load_make_run  # noqa: E402

make_run = load_make_run()


def default_policy(**extra) -> dict:
    """The packaged default policy as a dict, with ``extra`` fields."""
    import yaml

    return {**yaml.safe_load(gate.default_policy_path().read_text()), **extra}


# load-only data under the default policy: accuracy and fidelity explicitly accepted as missing
LOAD_ONLY_DEFAULT = default_policy(accept_inconclusive=["accuracy", "fidelity"])

# The tests of one round per variant below are about the statistics of one run, so their
# policies trust the within-run interval (single_round_drift: 1); what the default makes of
# one round per variant is tested in test_gate_single_round.py.
ONE_RUN = {"single_round_drift": 1.0}

LATENCY_ONLY = {**ONE_RUN, "checks": [
    {"name": "p50", "metric": "request_latency_s", "statistic": "p50", "tolerance": 0.10,
     "min_samples": 20},
]}


def write_variant(root: Path, name: str, rounds: list[dict], accuracy: dict | None = None,
                  fidelity: dict | None = None) -> Path:
    folder = root / name
    for i, data in enumerate(rounds, start=1):
        make_run.write_json(folder / "guidellm" / ("results.json" if i == 1
                                                   else f"results-r{i}.json"), data)
    if accuracy is not None:
        make_run.write_json(folder / "accuracy" / "results.json", accuracy)
    if fidelity is not None:
        make_run.write_json(folder / "fidelity.json", fidelity)
    return folder


def statuses(verdict: gate.GateVerdict, metric: str) -> list[str]:
    return [c.status for c in verdict.checks if c.metric == metric]


# ---------------------------------------------------------------- A/A and regression


def test_aa_same_data_twice_passes(tmp_path):
    folder = write_variant(tmp_path, "bf16",
                           [make_run.load_results("bf16", 1, n=200, sigma=0.15)])
    verdict = gate.evaluate(folder, folder, LATENCY_ONLY)
    assert verdict.passed
    assert statuses(verdict, "request_latency_s") == ["pass", "pass"]
    for c in verdict.checks:
        assert c.ratio == pytest.approx(1.0)
        assert c.ci_low < 1.0 < c.ci_high


def test_aa_two_runs_of_the_same_variant_pass(tmp_path):
    base = write_variant(tmp_path, "a", [make_run.load_results("a", 11, n=200, sigma=0.15)])
    cand = write_variant(tmp_path, "b", [make_run.load_results("a", 12, n=200, sigma=0.15)])
    verdict = gate.evaluate(base, cand, {**LOAD_ONLY_DEFAULT, **ONE_RUN})
    assert verdict.passed, verdict.failure_message()
    assert statuses(verdict, "request_latency_s") == ["pass", "pass"]
    assert "fail" not in {c.status for c in verdict.checks}
    # under the plain default policy accuracy and fidelity lack evidence: inconclusive
    plain = gate.evaluate(base, cand, None)
    assert plain.status == "inconclusive" and not plain.passed
    assert "accuracy: no check decided" in plain.failure_message()


@pytest.mark.parametrize("n", [100, 200])
def test_real_regression_of_25_percent_fails(tmp_path, n):
    base = write_variant(tmp_path, "bf16", [make_run.load_results("bf16", 21, n=n, sigma=0.15)])
    cand = write_variant(tmp_path, "w4a16",
                         [make_run.load_results("w4a16", 22, n=n, sigma=0.15, scale=1.25)])
    verdict = gate.evaluate(base, cand, LATENCY_ONLY)
    assert not verdict.passed
    assert statuses(verdict, "request_latency_s") == ["fail", "fail"]
    for c in verdict.checks:
        assert c.ci_low > 1.10
        assert 1.1 < c.ratio < 1.45
    line = verdict.failure_message().splitlines()[0]
    assert re.fullmatch(
        r"w4a16: request_latency_s p50 @ 1\.0 rps is 1\.\d\dx baseline "
        r"\(95% CI 1\.\d\d-1\.\d\d\), limit 1\.10x", line), line


def test_small_samples_never_fail_an_aa_comparison(tmp_path):
    # n=40 with wide spread: the gate may say inconclusive, but must never claim a regression.
    for seed in range(8):
        base = write_variant(tmp_path / str(seed), "a",
                             [make_run.load_results("a", 100 + seed, n=40, sigma=0.3)])
        cand = write_variant(tmp_path / str(seed), "b",
                             [make_run.load_results("a", 200 + seed, n=40, sigma=0.3)])
        verdict = gate.evaluate(base, cand, LOAD_ONLY_DEFAULT)
        assert "fail" not in {c.status for c in verdict.checks}, verdict.failure_message()
        assert verdict.status in ("pass", "inconclusive")  # never a fail


def test_verdict_is_deterministic(tmp_path):
    base = write_variant(tmp_path, "a", [make_run.load_results("a", 1, n=60)])
    cand = write_variant(tmp_path, "b", [make_run.load_results("b", 2, n=60, scale=1.1)])
    first = gate.evaluate(base, cand, None).to_dict()
    second = gate.evaluate(base, cand, None).to_dict()
    assert first == second


def test_between_run_noise_makes_the_result_inconclusive(tmp_path):
    # Round 2 of the baseline and round 1 of the candidate ran on a host 30% slower: pooled,
    # the medians agree, but resampling rounds shows the spread, so no PASS is claimed.
    base = write_variant(tmp_path, "a", [
        make_run.load_results("a", 1, rates=(1.0,), n=150, sigma=0.1),
        make_run.load_results("a", 2, rates=(1.0,), n=150, sigma=0.1, scale=1.3)])
    cand = write_variant(tmp_path, "b", [
        make_run.load_results("b", 3, rates=(1.0,), n=150, sigma=0.1, scale=1.3),
        make_run.load_results("b", 4, rates=(1.0,), n=150, sigma=0.1)])
    [check] = gate.evaluate(base, cand, LATENCY_ONLY).checks
    assert check.status == "inconclusive"
    assert check.ci_low < 0.85 and check.ci_high > 1.15
    assert "2 paired rounds" in check.reason


def test_repeated_rounds_of_a_real_regression_still_fail(tmp_path):
    base = write_variant(tmp_path, "a", [
        make_run.load_results("a", s, rates=(1.0,), n=100, sigma=0.15) for s in (1, 2, 3)])
    cand = write_variant(tmp_path, "b", [
        make_run.load_results("b", s, rates=(1.0,), n=100, sigma=0.15, scale=1.4)
        for s in (4, 5, 6)])
    [check] = gate.evaluate(base, cand, LATENCY_ONLY).checks
    assert check.status == "fail"
    assert check.n_baseline == check.n_candidate == 300


def _interleaved_round(seed: int, host: list[float], scale: float = 1.0,
                       n_per_block: int = 25) -> dict:
    """One variant's half of an interleaved round: block k of the run ran on a host
    ``host[k]`` times slower, for both variants alike (they shared those seconds)."""
    rng = np.random.default_rng(seed)
    samples, blocks = [], []
    for k, slow in enumerate(host):
        samples += list(0.15 * scale * slow * rng.lognormal(0.0, 0.15, n_per_block))
        blocks += [k] * n_per_block
    return {"variant": "x", "rates": [{
        "rate": 2.5, "requests": {"successful": len(samples), "errored": 0, "incomplete": 0},
        "samples": {"request_latency_s": samples}, "blocks": {"request_latency_s": blocks},
        "interleaved": {"variants": ["a", "b"], "block_s": 5.0}}]}


# the host is 1.1-1.3x slower for some blocks of the run (as this CI host is): separate runs
# of each variant would see that as a difference between the variants
HOST = [1.0, 1.0, 1.3, 1.2, 1.0, 1.1, 1.0, 1.0]


def test_interleaved_blocks_pair_and_cancel_host_noise(tmp_path):
    base = write_variant(tmp_path, "a", [_interleaved_round(1, HOST)])
    same = write_variant(tmp_path, "b", [_interleaved_round(2, HOST)])
    [check] = gate.evaluate(base, same, LATENCY_ONLY).checks
    assert check.status == "pass", check.reason
    assert "8 paired interleaved blocks" in check.reason
    slower = write_variant(tmp_path, "c", [_interleaved_round(3, HOST, scale=1.25)])
    [check] = gate.evaluate(base, slower, LATENCY_ONLY).checks
    assert check.status == "fail", check.reason
    assert 1.15 < check.ratio < 1.35


def test_interleaved_blocks_only_one_variant_has_are_left_out_of_the_pairs(tmp_path):
    base = write_variant(tmp_path, "a", [_interleaved_round(1, HOST)])
    partial = _interleaved_round(2, HOST)
    entry = partial["rates"][0]
    keep = [i for i, b in enumerate(entry["blocks"]["request_latency_s"]) if b != 7]
    entry["samples"]["request_latency_s"] = [
        entry["samples"]["request_latency_s"][i] for i in keep]
    entry["blocks"]["request_latency_s"] = [
        entry["blocks"]["request_latency_s"][i] for i in keep]
    cand = write_variant(tmp_path, "b", [partial])
    [check] = gate.evaluate(base, cand, LATENCY_ONLY).checks
    assert check.status == "pass"
    assert "7 paired interleaved blocks" in check.reason
    assert (check.n_baseline, check.n_candidate) == (200, 175)


def _measured_with(data: dict, variants: list[str]) -> dict:
    for entry in data["rates"]:
        entry["interleaved"]["variants"] = variants
    return data


def test_a_candidate_is_compared_with_the_baseline_rounds_it_shared(tmp_path):
    # more variants than the host serves side by side: the baseline was measured with w8a8
    # in round 1 (on a slow host) and with w4a16 in round 2; w4a16 is as fast as the baseline
    # it ran beside, and must not be judged against the slow round it was not part of
    slow = [1.6] * len(HOST)
    base = tmp_path / "bf16" / "guidellm"
    make_run.write_json(base / "results.json",
                        _measured_with(_interleaved_round(1, slow), ["bf16", "w8a8"]))
    make_run.write_json(base / "results-r2.json",
                        _measured_with(_interleaved_round(2, HOST), ["bf16", "w4a16"]))
    cand = tmp_path / "w4a16" / "guidellm"
    make_run.write_json(cand / "results-r2.json",
                        _measured_with(_interleaved_round(3, HOST), ["bf16", "w4a16"]))
    verdict = gate.evaluate(tmp_path / "bf16", tmp_path / "w4a16", LATENCY_ONLY)
    [check] = verdict.checks
    assert check.status == "pass", check.reason
    assert check.n_baseline == check.n_candidate == 200
    assert any("measured together with w4a16: r2 of 2" in n for n in verdict.notes)


def test_min_rounds_policy(tmp_path):
    base = write_variant(tmp_path, "a", [make_run.load_results("a", 1, n=100)])
    cand = write_variant(tmp_path, "b", [make_run.load_results("b", 2, n=100)])
    verdict = gate.evaluate(base, cand, {**LATENCY_ONLY, "min_rounds": 2})
    assert statuses(verdict, "request_latency_s") == ["inconclusive", "inconclusive"]
    assert "too few rounds" in verdict.checks[0].reason
    assert any("within-run noise only" in n for n in verdict.notes)


def test_missing_samples_and_rates_are_inconclusive_not_pass(tmp_path):
    base = write_variant(tmp_path, "a", [make_run.load_results("a", 1, n=100)])
    cand = write_variant(tmp_path, "b", [
        make_run.load_results("b", 2, rates=(1.0,), n=100, with_samples=False)])
    verdict = gate.evaluate(base, cand, LATENCY_ONLY)
    at1, at3 = verdict.checks
    assert at1.status == at3.status == "inconclusive"
    assert "no per-request request_latency_s samples for the candidate" in at1.reason
    assert at1.ratio is not None  # the summary ratio is still reported
    assert "no load-test results at 3.0 rps for the candidate" in at3.reason
    # no latency check decided: the verdict is inconclusive, never a pass
    assert verdict.status == "inconclusive" and not verdict.passed
    assert verdict.dimensions["latency"]["status"] == "inconclusive"
    strict = gate.evaluate(base, cand, {**LATENCY_ONLY, "inconclusive": "fail"})
    assert not strict.passed
    assert "no per-request" in strict.failure_message()


def test_too_few_samples(tmp_path):
    base = write_variant(tmp_path, "a", [make_run.load_results("a", 1, rates=(1.0,), n=10)])
    cand = write_variant(tmp_path, "b", [make_run.load_results("b", 2, rates=(1.0,), n=10)])
    [check] = gate.evaluate(base, cand, LATENCY_ONLY).checks
    assert check.status == "inconclusive"
    assert "too few samples" in check.reason


# ---------------------------------------------------------------- error rate


@pytest.mark.parametrize(("base_err", "cand_err", "n", "expected"), [
    (0, 0, 40, "pass"),       # zero vs zero passes at any n
    (0, 20, 200, "fail"),     # 9% errors: proven beyond the 1-point slack
    (0, 3, 100, "inconclusive"),  # 3% vs 0%: more, but not proven at n=100
    (5, 5, 200, "pass"),
])
def test_error_rate(tmp_path, base_err, cand_err, n, expected):
    base = write_variant(tmp_path, "a",
                         [make_run.load_results("a", 1, rates=(2.0,), n=n, errored=base_err)])
    cand = write_variant(tmp_path, "b",
                         [make_run.load_results("b", 2, rates=(2.0,), n=n, errored=cand_err)])
    policy = {"checks": [{"metric": "error_rate", "tolerance": 0.01, "min_samples": 20}]}
    [check] = gate.evaluate(base, cand, policy).checks
    assert check.status == expected, check.reason
    assert check.candidate == pytest.approx(cand_err / (n + cand_err))
    if expected == "fail":
        assert "error_rate @ 2.0 rps is 0.091 vs baseline 0.000" in check.describe("b")


# ---------------------------------------------------------------- accuracy


TASKS = {"gsm8k": (0.75, 400)}
ACC_POLICY = {"checks": [{"metric": "accuracy:*", "tolerance": 0.99, "min_samples": 50}]}


def test_accuracy_identical_passes_and_loss_fails(tmp_path):
    base = write_variant(tmp_path, "a", [], make_run.accuracy_results(5, TASKS))
    same = write_variant(tmp_path, "b", [], make_run.accuracy_results(5, TASKS))
    worse = write_variant(tmp_path, "c", [], make_run.accuracy_results(5, TASKS, 0.08))
    [ok] = gate.evaluate(base, same, ACC_POLICY).checks
    assert (ok.status, ok.ratio, ok.metric) == ("pass", 1.0, "accuracy:gsm8k")
    [bad] = gate.evaluate(base, worse, ACC_POLICY).checks
    assert bad.status == "fail"
    assert bad.ci_high < 0.99 and bad.ratio < 0.95
    assert "exact sign test p=" in bad.reason
    assert bad.describe("c").startswith("c: accuracy:gsm8k recovery is 0.9")


def test_accuracy_small_loss_is_inconclusive(tmp_path):
    base = write_variant(tmp_path, "a", [], make_run.accuracy_results(5, TASKS))
    cand = write_variant(tmp_path, "b", [], make_run.accuracy_results(5, TASKS, 0.01))
    [check] = gate.evaluate(base, cand, ACC_POLICY).checks
    assert check.status == "inconclusive"
    assert check.ci_low < 0.99 < check.ci_high


def test_accuracy_random_weights_baseline_is_inconclusive(tmp_path):
    zero = {"gsm8k": (0.0, 200)}
    base = write_variant(tmp_path, "a", [], make_run.accuracy_results(5, zero))
    cand = write_variant(tmp_path, "b", [], make_run.accuracy_results(6, zero))
    [check] = gate.evaluate(base, cand, ACC_POLICY).checks
    assert check.status == "inconclusive"
    assert "recovery undefined" in check.reason


def test_accuracy_needs_common_doc_ids(tmp_path):
    base_acc = make_run.accuracy_results(5, TASKS)
    cand_acc = json.loads(json.dumps(base_acc))
    cand_acc["tasks"]["gsm8k"]["samples"] = {
        f"other-{k}": v for k, v in cand_acc["tasks"]["gsm8k"]["samples"].items()}
    base = write_variant(tmp_path, "a", [], base_acc)
    cand = write_variant(tmp_path, "b", [], cand_acc)
    [check] = gate.evaluate(base, cand, ACC_POLICY).checks
    assert check.status == "inconclusive"
    assert "no per-sample results on common doc ids" in check.reason


def test_sign_test():
    assert gate.sign_test_p(0, 9) == pytest.approx(2 / 512)
    assert gate.sign_test_p(5, 5) == 1.0
    assert gate.sign_test_p(0, 0) == 1.0


# ---------------------------------------------------------------- fidelity


def test_fidelity_limits(tmp_path):
    base = write_variant(tmp_path, "a", [], make_run.accuracy_results(5, TASKS))
    good = write_variant(tmp_path, "b", [], fidelity=make_run.fidelity_results(1, 0.02, 0.01))
    bad = write_variant(tmp_path, "c", [], fidelity=make_run.fidelity_results(2, 0.12, 0.3))
    none = write_variant(tmp_path, "d", [], make_run.accuracy_results(5, TASKS))
    policy = {"checks": [
        {"metric": "fidelity.flip_rate", "tolerance": 0.05, "min_samples": 5},
        {"metric": "fidelity.kl_mean", "tolerance": 0.1, "min_samples": 5}]}
    assert [c.status for c in gate.evaluate(base, good, policy).checks] == ["pass", "pass"]
    failed = gate.evaluate(base, bad, policy)
    assert [c.status for c in failed.checks] == ["fail", "fail"]
    assert re.match(r"c: fidelity\.flip_rate is 0\.1\d+ \(95% CI .*\), limit 0\.0500",
                    failed.failure_message())
    missing = gate.evaluate(base, none, policy)
    assert [c.reason for c in missing.checks] == ["no fidelity.json for the candidate"] * 2


# ---------------------------------------------------------------- policy


def test_default_policy():
    policy = gate.load_policy()
    by_metric = {c.metric: c for c in policy.checks}
    assert by_metric["request_latency_s"].tolerance == 0.10
    assert by_metric["request_latency_s"].statistic == "p50"
    assert by_metric["ttft_ms"].statistic == "p95"
    assert by_metric["ttft_ms"].tolerance == 0.15
    assert by_metric["accuracy:*"].tolerance == 0.99
    assert by_metric["fidelity.flip_rate"].tolerance == 0.05
    assert policy.inconclusive == "warn"


@pytest.mark.parametrize(("mutation", "field"), [
    ({"metric": "latency"}, "checks[0].metric"),
    ({"metric": "accuracy:"}, "checks[0].metric"),
    ({"statistic": "p42"}, "checks[0].statistic"),
    ({"tolerance": "ten"}, "checks[0].tolerance"),
    ({"rates": "some"}, "checks[0].rates"),
    ({"min_samples": 0}, "checks[0].min_samples"),
    ({"tolerence": 0.1}, "checks[0].tolerence"),
    ({"metric": "accuracy:gsm8k", "direction": "lower_is_better"}, "checks[0].direction"),
])
def test_policy_errors_name_the_field(mutation, field):
    check = {"metric": "request_latency_s", "tolerance": 0.1, **mutation}
    with pytest.raises(ModelGateError) as err:
        gate.parse_policy({"checks": [check]})
    assert err.value.field == field


def test_policy_level_errors(tmp_path):
    check = {"metric": "request_latency_s", "tolerance": 0.1}
    with pytest.raises(ModelGateError) as err:
        gate.parse_policy({"checks": [check], "inconclusive": "ignore"})
    assert err.value.field == "inconclusive"
    with pytest.raises(ModelGateError) as err:
        gate.load_policy(tmp_path / "absent.yaml")
    assert err.value.field == "policy"


def test_unreadable_inputs(tmp_path):
    with pytest.raises(ModelGateError) as err:
        gate.evaluate(tmp_path / "nope", tmp_path / "nope")
    assert err.value.field == "baseline"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    ok = write_variant(tmp_path, "a", [make_run.load_results("a", 1)])
    with pytest.raises(ModelGateError) as err:
        gate.evaluate(ok, broken)
    assert err.value.field == "candidate"


def test_single_result_files_are_accepted(tmp_path):
    base = write_variant(tmp_path, "a", [make_run.load_results("bf16", 1, n=200, sigma=0.15)])
    cand = write_variant(tmp_path, "b", [make_run.load_results("w4a16", 2, n=200, sigma=0.15)])
    verdict = gate.evaluate(base / "guidellm" / "results.json",
                            cand / "guidellm" / "results.json", LATENCY_ONLY)
    assert (verdict.baseline, verdict.candidate) == ("bf16", "w4a16")
    assert verdict.passed


# ---------------------------------------------------------------- run directory, outputs, CLI


@pytest.fixture
def run_dir(tmp_path):
    # two rounds per variant, as the play measures them (modelgate_validate_rounds: 2)
    return make_run.make_run(tmp_path / "run-1", n=60, rounds=2)


def test_evaluate_run(run_dir):
    verdict = gate.evaluate_run(run_dir)
    assert verdict.baseline == "bf16"
    by_name = {v.candidate: v for v in verdict.verdicts}
    assert by_name["w4a16"].passed and by_name["w4a16"].status == "pass"
    assert not by_name["fp8"].passed
    assert not verdict.passed
    lines = verdict.message.splitlines()
    assert lines[0].startswith("gate failed for run run-1")
    assert all(line.startswith("fp8: ") for line in lines[1:])
    assert any("accuracy:gsm8k recovery" in line for line in lines)
    assert any("fidelity.flip_rate" in line for line in lines)


def test_evaluate_run_with_a_missing_candidate_folder(run_dir):
    shutil.rmtree(run_dir / "w4a16")
    verdict = gate.evaluate_run(run_dir)
    w4 = next(v for v in verdict.verdicts if v.candidate == "w4a16")
    assert w4.checks and {c.status for c in w4.checks} == {"inconclusive"}


def test_manifest_needs_one_baseline(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for v in manifest["variants"]:
        v["baseline"] = False
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelGateError) as err:
        gate.evaluate_run(run_dir)
    assert err.value.field == "manifest.variants[].baseline"


def test_gate_json_and_junit(run_dir, tmp_path):
    verdict = gate.evaluate_run(run_dir)
    data = json.loads(verdict.write_gate_json(tmp_path / "gate.json").read_text())
    assert data["passed"] is False and data["status"] == "fail"
    assert {v["candidate"] for v in data["verdicts"]} == {"w4a16", "fp8"}
    root = ET.parse(verdict.write_junit(tmp_path / "junit.xml")).getroot()
    checks = [c for v in verdict.verdicts for c in v.checks]
    assert root.tag == "testsuites"
    dims = [(v, d) for v in verdict.verdicts for d in v.dimensions.values()]
    # one testcase per check, and one per dimension the policy names
    assert len(root.findall("./testsuite/testcase")) == len(checks) + len(dims)
    bad_dims = sum(d["status"] == "fail" or (d["status"] == "inconclusive"
                                             and not d["accepted_inconclusive"]) for __, d in dims)
    n_fail = sum(c.status == "fail" for c in checks)
    assert len(root.findall(".//failure")) == n_fail + bad_dims
    assert len(root.findall(".//skipped")) == sum(c.status == "inconclusive" for c in checks)
    assert int(root.get("failures")) == n_fail + bad_dims and n_fail > 0
    assert all("dimensions" in v for v in data["verdicts"])


def _cli(argv, capsys):
    rc = main(argv, modules=("modelgate.gate",))
    return rc, json.loads(capsys.readouterr().out)


def test_cli_run_dir(run_dir, capsys):
    rc, out = _cli(["gate", "--run-dir", str(run_dir)], capsys)
    assert rc == 1
    assert out["passed"] is False
    assert (run_dir / "gate.json").is_file() and (run_dir / "junit.xml").is_file()


def test_cli_baseline_candidate(run_dir, tmp_path, capsys):
    junit = tmp_path / "j.xml"
    rc, out = _cli(["gate", "--baseline", str(run_dir / "bf16"), "--candidate",
                    str(run_dir / "w4a16"), "--junit", str(junit), "--out",
                    str(tmp_path / "g.json")], capsys)
    assert rc == 0 and out["passed"] is True and out["candidate"] == "w4a16"
    ET.parse(junit)
    assert json.loads((tmp_path / "g.json").read_text())["status"] == "pass"


def test_cli_bad_input(run_dir, tmp_path, capsys):
    rc, out = _cli(["gate", "--baseline", str(tmp_path / "missing"), "--candidate",
                    str(run_dir / "w4a16")], capsys)
    assert rc == 2 and out["field"] == "baseline"
    policy = tmp_path / "policy.yaml"
    policy.write_text("checks:\n  - metric: latency_p50\n    tolerance: 0.1\n")
    rc, out = _cli(["gate", "--run-dir", str(run_dir), "--policy", str(policy)], capsys)
    assert rc == 2 and out["field"] == "checks[0].metric"
    rc, out = _cli(["gate", "--baseline", str(run_dir / "bf16")], capsys)
    assert rc == 2 and out["field"] == "candidate"


def test_rates_without_a_fixed_rate_are_skipped_and_saturation_is_reported(tmp_path):
    base_data = make_run.load_results("a", 1, rates=(1.0,), n=100)
    cand_data = make_run.load_results("b", 2, rates=(1.0,), n=100)
    cand_data["rates"][0]["over_saturated"] = True
    for data in (base_data, cand_data):
        data["rates"].append({**data["rates"][0], "rate": None, "profile": "synchronous"})
    base = write_variant(tmp_path, "a", [base_data])
    cand = write_variant(tmp_path, "b", [cand_data])
    # the synchronous benchmark has no offered rate: it is gated as its own load point
    check, sync = gate.evaluate(base, cand, LATENCY_ONLY).checks
    assert check.rate == 1.0
    assert check.reason.endswith("over-saturated: candidate")
    assert sync.rate is None and sync.point == "synchronous"
    assert sync.label.endswith("@ synchronous")


def test_tolerances_by_dimension_replace_every_check_of_it_and_are_validated() -> None:
    policy = gate.load_policy()
    changed = gate.with_tolerances(policy, {"latency": 0.25, "accuracy": 0.98})
    for before, after in zip(policy.checks, changed.checks, strict=True):
        expected = {"latency": 0.25, "accuracy": 0.98}.get(before.dimension, before.tolerance)
        assert after.tolerance == expected
        assert (after.name, after.metric, after.statistic) == (
            before.name, before.metric, before.statistic)
    assert changed.source == f"{policy.source} (tolerances latency=0.25, accuracy=0.98)"
    assert gate.with_tolerances(policy, {}) is policy
    with pytest.raises(ModelGateError, match="unknown gate dimension 'latncy'"):
        gate.with_tolerances(policy, {"latncy": 0.2})
    with pytest.raises(ModelGateError, match="minimum recovery") as bad:
        gate.with_tolerances(policy, {"accuracy": 5})
    assert bad.value.field == "tolerances.accuracy"
    only_latency = gate.parse_policy({"checks": [{"metric": "ttft_ms", "tolerance": 0.1}]})
    with pytest.raises(ModelGateError, match="has no accuracy check"):
        gate.with_tolerances(only_latency, {"accuracy": 0.99})
