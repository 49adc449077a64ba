"""Unit tests of modelgate.report: report.html, PNGs and the Markdown summary."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("matplotlib")

from modelgate import gate, report
from modelgate.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"
from conftest import load_make_run  # noqa: E402

make_run = load_make_run()

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture
def run_dir(tmp_path):
    root = make_run.make_run(tmp_path / "run-7", n=60, rounds=2)
    gate.evaluate_run(root).write_gate_json(root / "gate.json")
    return root


def test_render_report(run_dir):
    path = report.render_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    parser = _Images()
    parser.feed(text)
    assert len(parser.srcs) == 4
    for name in ("latency_vs_rps.png", "ttft_vs_rps.png", "itl_vs_rps.png", "accuracy.png"):
        png = (run_dir / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
        # The embedded copy is the file beside the report, byte for byte.
        assert "data:image/png;base64," + base64.b64encode(png).decode() in parser.srcs
    assert "ModelGate run <code>run-7</code>" in text
    assert "w4a16 vs bf16" in text and "fp8 vs bf16" in text
    assert text.count(">FAIL<") >= 2  # the run badge and fp8's
    assert "token flip rate" in text and "fidelity.flip_rate" in text
    assert str(run_dir / "gate.json") in text  # the verdict source is named
    assert "tiny-nemotron-h" in text  # manifest metadata


def test_report_without_gate_json_computes_the_verdict(run_dir):
    (run_dir / "gate.json").unlink()
    text = report.render_report(run_dir).read_text()
    assert "computed for this report" in text
    assert not (run_dir / "gate.json").exists()  # the report never writes the verdict


def test_report_without_accuracy_or_samples(run_dir):
    for variant in ("bf16", "w4a16", "fp8"):
        shutil.rmtree(run_dir / variant / "accuracy")
        make_run.write_json(run_dir / variant / "guidellm" / "results.json",
                            make_run.load_results(variant, 3, n=30, with_samples=False))
        (run_dir / variant / "guidellm" / "results-r2.json").unlink()
    (run_dir / "accuracy.png").unlink(missing_ok=True)
    text = report.render_report(run_dir).read_text()
    assert "No accuracy results." in text
    assert not (run_dir / "accuracy.png").exists()
    assert (run_dir / "latency_vs_rps.png").is_file()  # summary percentiles still plot
    points = report.latency_points(gate.load_variant(run_dir / "bf16"), "request_latency_s")
    assert [p.ci_low for p in points] == [None, None]


def test_latency_points_ci_brackets_the_median(run_dir):
    variant = gate.load_variant(run_dir / "bf16")
    points = report.latency_points(variant, "request_latency_s")
    assert [p.rate for p in points] == [1.0, 3.0]
    for p in points:
        assert p.ci_low < p.median < p.ci_high < p.p90
        assert p.n == 120  # two rounds of 60


def test_markdown_summary(run_dir):
    text = report.markdown_summary(run_dir)
    assert text.startswith("### ModelGate run `run-7`: FAIL (baseline `bf16`)")
    assert "| w4a16 | pass |" in text
    assert re.search(r"^- fp8: accuracy:gsm8k recovery is 0\.9\d\d", text, re.M)
    assert "| median request latency (s) | 1 rps | 3 rps |" in text
    assert "| gsm8k |" in text
    assert len(text.splitlines()) < 40


def test_cli_report(run_dir, capsys):
    rc = main(["report", "--run-dir", str(run_dir)], modules=("modelgate.report",))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["report"] == str(run_dir / "report.html")
    assert sorted(Path(p).name for p in out["pngs"]) == [
        "accuracy.png", "itl_vs_rps.png", "latency_vs_rps.png", "ttft_vs_rps.png"]
    assert out["summary"].startswith("### ModelGate run")


def test_cli_report_bad_run_dir(tmp_path, capsys):
    rc = main(["report", "--run-dir", str(tmp_path)], modules=("modelgate.report",))
    assert rc == 2
    assert json.loads(capsys.readouterr().out)["field"] == "run_dir"
