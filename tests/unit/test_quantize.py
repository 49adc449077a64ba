"""Quantize-stage logic that needs no tool: keys, calibration specs, the job's text reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.quantize import (
    CalibrationSpec,
    _complete,
    _remove_stale,
    _stream_job,
    quantization_key,
    quantize_variant,
)
from modelgate.quantize_job import read_calibration_texts
from modelgate.recipes import build_recipe

TOOLS = {"llmcompressor": "0.14.0.1", "compressed-tensors": "0.19.0",
         "transformers": "5.17.0", "torch": "2.13.0+cpu"}


def test_key_changes_with_every_input():
    r64, r128 = build_recipe("w4a16", group_size=64), build_recipe("w4a16", group_size=128)
    base = quantization_key("sha256:m", r64, "sha256:c", TOOLS)
    assert base == quantization_key("sha256:m", r64, "sha256:c", dict(reversed(TOOLS.items())))
    assert len(base) == 64 and all(c in "0123456789abcdef" for c in base)
    others = {
        quantization_key("sha256:m2", r64, "sha256:c", TOOLS),
        quantization_key("sha256:m", r128, "sha256:c", TOOLS),
        quantization_key("sha256:m", r64, "sha256:c2", TOOLS),
        quantization_key("sha256:m", r64, "sha256:c", {**TOOLS, "llmcompressor": "0.15"}),
    }
    assert base not in others and len(others) == 4


def test_calibration_does_not_matter_to_recipes_without_calibration():
    fp8 = build_recipe("fp8-dynamic")
    assert quantization_key("m", fp8, "a", TOOLS) == quantization_key("m", fp8, "b", TOOLS)


def test_calibration_digest_is_content_not_path(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello world\n\nsecond sample\n")
    b.write_text("hello world\n\nsecond sample\n")
    assert CalibrationSpec([a], 8, 64).digest == CalibrationSpec([b], 8, 64).digest
    assert CalibrationSpec([a], 8, 64).digest != CalibrationSpec([a], 16, 64).digest
    b.write_text("other text\n")
    assert CalibrationSpec([a], 8, 64).digest != CalibrationSpec([b], 8, 64).digest


@pytest.mark.parametrize(("files", "num", "match"), [
    ([], 8, "no calibration files"),
    (["missing.txt"], 8, "does not exist"),
    (["data.csv"], 8, "not .txt or .jsonl"),
    (["ok.txt"], 0, "num_samples"),
])
def test_calibration_validation(tmp_path, files, num, match):
    for name in ("data.csv", "ok.txt"):
        (tmp_path / name).write_text("x\n")
    with pytest.raises(ModelGateError, match=match) as err:
        CalibrationSpec([tmp_path / f for f in files], num, 64).validate()
    assert err.value.field == "calibration"


def test_read_calibration_texts(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n"
        + json.dumps({"other": 1}) + "\n")
    (tmp_path / "b.txt").write_text("para one\nline two\n\n\npara two\n")
    texts = read_calibration_texts([str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")])
    assert texts == ["first", "second", "para one\nline two", "para two"]


def test_recipe_none_is_the_source_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = quantize_variant(tmp_path, tmp_path / "store", build_recipe("none"), None,
                              python="/nonexistent/python")
    assert result.path == str(tmp_path.resolve()) and result.changed is False
    assert result.provenance["source_model_digest"].endswith(result.key)
    assert not (tmp_path / "store").exists()


def test_stale_tmp_dirs_are_removed_and_only_complete_dirs_count(tmp_path):
    key = "k" * 64
    stale = tmp_path / f".tmp-{key}-12345"
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # a half-written checkpoint
    other = tmp_path / f".tmp-{'o' * 64}-1"
    other.mkdir()
    assert not _complete(stale)
    assert _remove_stale(tmp_path, key) == [stale.name]
    assert not stale.exists() and other.exists()
    (stale.parent / key).mkdir()
    (tmp_path / key / "config.json").write_text("{}")
    (tmp_path / key / "provenance.json").write_text("{}")
    assert _complete(tmp_path / key)


def test_stream_job_forwards_progress_lines_even_behind_progress_bars(tmp_path):
    script = ("import sys; print('noise'); sys.stdout.write('bar 10%|#\\r progress: layer 1/2"
              " elapsed 0.1s\\n'); print('progress: done', flush=True)")
    seen: list[str] = []
    rc = _stream_job([sys.executable, "-c", script], tmp_path / "job.log",
                     tmp_path / "progress.log", seen.append)
    assert rc == 0
    assert seen == ["layer 1/2 elapsed 0.1s", "done"]
    assert "noise" in (tmp_path / "job.log").read_text()
    assert len(Path(tmp_path / "progress.log").read_text().splitlines()) == 2
