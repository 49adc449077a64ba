"""The verdict in words, as ``make demo`` ends: one sentence per candidate, then the bottom line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelgate import gate
from modelgate.cli import main
from modelgate.errors import ModelGateError
from modelgate.verdict_text import explain_run

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"
from conftest import load_make_run  # noqa: E402

make_run = load_make_run()


@pytest.fixture
def judged(tmp_path: Path) -> Path:
    """A synthetic run: w4a16 faster and as accurate as bf16, fp8 slower and less accurate."""
    root = make_run.make_run(tmp_path / "run-1", n=80, rounds=3)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["inputs"] = {"left_out": [{"name": "w4a16-cpu", "recipe": "w4a16",
                                        "reason": "recipe w4a16: no cpu_gemm_wna16"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    gate.evaluate_run(root).write_gate_json(root / "gate.json")
    return root


def test_one_sentence_per_candidate_and_the_bottom_line(judged: Path) -> None:
    said = explain_run(judged)
    verdicts = {v["candidate"]: v for v in json.loads((judged / "gate.json").read_text())[
        "verdicts"]}
    assert len(said["sentences"]) == len(verdicts) + 1  # + the one left out
    for sentence, (name, verdict) in zip(said["sentences"], verdicts.items(), strict=False):
        assert sentence.startswith(f"{name}: ") and sentence.count(". ") == 0
        if verdict["status"] == "fail":
            assert "refused by the gate" in sentence and "limit" in sentence
        elif verdict["status"] == "pass":
            assert "passed" in sentence
        else:
            assert "inconclusive" in sentence
        assert "by dimension:" in sentence
    assert verdicts["fp8"]["status"] == "fail"
    assert said["sentences"][-1].startswith("w4a16-cpu: left out before the run")
    assert not said["passed"]
    assert "pipeline doing its job" in said["bottom_line"]
    assert "not a breakage" in said["bottom_line"]


def test_cli_text_and_exit_status(judged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verdict", str(judged), "--text"]) == 1  # the gate refused fp8
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Verdict:"
    assert not any(line.startswith("Report:") for line in out)  # no report.html in this run
    assert any(line.startswith("  fp8: refused by the gate") for line in out)


def test_a_run_not_judged_yet_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ModelGateError, match=r"gate\.json does not exist"):
        explain_run(tmp_path)
    assert main(["verdict", str(tmp_path)]) == 2


def test_an_undecided_dimension_says_why(tmp_path: Path) -> None:
    # one round per variant, measured one after the other: the default policy does not judge
    # latency from it, and the sentence says so with the fix
    root = make_run.make_run(tmp_path / "run-1", n=80, rounds=1)
    gate.evaluate_run(root).write_gate_json(root / "gate.json")
    said = explain_run(root)
    [w4a16] = [s for s in said["sentences"] if s.startswith("w4a16: ")]
    assert "not shipped: inconclusive against bf16" in w4a16
    assert ("no check decided latency (one round per variant, measured one after the other: "
            "a within-run interval cannot see the drift between runs; to get it: measure 2+ "
            "rounds per variant (inventory: modelgate_validate_rounds: 2)") in w4a16
    assert "single_round_drift" in w4a16
    assert w4a16.count(". ") == 0 and "latency inconclusive" in w4a16
