"""Bad input stops the play before expensive work, with a message naming the input and the fix.

Each case runs the real playbooks through ansible-runner on the local inventory; nothing a
previous run produced is deleted by the failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import struct
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import play_failures, require_tools, run_playbook, runner_text

pytestmark = [pytest.mark.needs_tools]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools()


def _fails_with(runner: object, *needles: str) -> str:
    text = runner_text(runner)
    assert runner.rc != 0, text[-3000:]  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in text, f"{needle!r} not in output:\n{text[-3000:]}"
    return text


def test_misspelled_recipe_fails_in_preflight_before_quantizing(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "recipe", tags="quantize", extravars={
        "modelgate_variants": [{"name": "bf16", "recipe": "none", "baseline": True},
                               {"name": "w4", "recipe": "w4a61"}]})
    text = _fails_with(runner, "unknown recipe 'w4a61'", "Fix:", "w4a16")
    assert "Quantize each variant" not in text  # stopped before any quantization


def test_misspelled_variant_key_is_refused_by_the_argument_spec(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "variant", tags="quantize", extravars={
        "modelgate_variants": [{"name": "bf16", "recipie": "none", "baseline": True}]})
    # the variant set is checked as a whole at the start of the run
    _fails_with(runner, "recipie", "modelgate_variants[0].recipie", "Fix:")


def test_missing_model_directory_names_the_input(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "model", tags="model", extravars={
        "modelgate_model": {"source": "local", "name": "x", "path": str(tmp_path / "nope")}})
    _fails_with(runner, "does not exist", "modelgate_model.path", "Fix:")


def test_unreachable_registry_fails_before_building(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = run_playbook(tmp_path, "registry", tags="quantize,modelcar", extravars={
        "modelgate_registry": {"address": f"127.0.0.1:{port}", "repository": "x/y",
                               "tls_verify": False}})
    _fails_with(runner, f"no registry answers at 127.0.0.1:{port}",
                "modelgate_registry.address")
    assert not list((tmp_path / "runs").glob("*/*/modelcar.json"))


def test_port_in_use_fails_before_starting_vllm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        runner = run_playbook(tmp_path, "port", tags="quantize,modelcar,deploy", extravars={
            "modelgate_serving": {"port": port, "max_model_len": 1024}})
        _fails_with(runner, f"port {port}", "already in use", "Fix:")
    # what the earlier stages produced is kept
    run_dir = (tmp_path / "runs" / "latest").resolve()
    assert (run_dir / "w8a8" / "quantize.json").is_file()
    assert (run_dir / "w8a8" / "modelcar.json").is_file()


def test_inputs_of_the_wrong_kind_stop_the_first_play(tmp_path: Path) -> None:
    # every play includes the modelgate role, whose argument specs check the pipeline's inputs:
    # a target with no serve role, a count that is not a number
    runner = run_playbook(tmp_path, "inputs", extravars={
        "modelgate_target": "triton", "modelgate_validate_rounds": "two"})
    text = _fails_with(runner, "modelgate_target", "triton", "modelgate_validate_rounds")
    assert "Create the tool virtualenvs" not in text  # stopped before provisioning anything


def test_a_variant_name_the_inventory_lacks_is_refused_before_the_run_opens(
        tmp_path: Path) -> None:
    # a survey's multiple-select answer (modelgate_variant_names) naming no variant
    runner = run_playbook(tmp_path, "names", tags="quantize",
                          extravars={"modelgate_variant_names": ["bf16", "fp9"]})
    _fails_with(runner, "modelgate_variant_names: fp9 not among modelgate_variants",
                "bf16, w8a8, w4a16")
    assert not (tmp_path / "runs").exists()  # no run was opened for it


# ------------------------------------------------------------------ the table of bad input

CASES_FILE = Path(__file__).parent / "data" / "bad_input" / "play_cases.yml"
PLAY_CASES = yaml.safe_load(CASES_FILE.read_text())["cases"]
SEEDED_RUN = "20260101T000000Z-0a0a"
# The plays of playbooks/run_dir.yml: a case caught there stopped before any stage's work.
CHECK_PLAYS = ("Check the variant set against what the serving host can serve",
               "Open the run directory")
ARG_SPEC_TASK = "Validating arguments against arg spec"
# The stages a case asks for: if a check let the input through, the play would go on to quantize.
CASE_TAGS = "quantize,modelcar,deploy,validate"


def _safetensors(path: Path, tensors: dict[str, int], cut: int = 0) -> None:
    """A small safetensors file of float32 tensors (name: element count), ``cut`` bytes short."""
    header: dict[str, object] = {}
    offset = 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count],
                        "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(offset)
    path.write_bytes(data[:len(data) - cut] if cut else data)


def _bad_files(folder: Path) -> None:
    """The files the table's cases name under ``{files}``."""
    folder.mkdir(parents=True, exist_ok=True)
    binary = bytes(range(256)) * 4
    (folder / "recipe.yaml").write_bytes(binary)
    (folder / "policy-binary.yaml").write_bytes(binary)
    (folder / "policy-not-yaml.yaml").write_text("checks: [\n  - {metric: ttft_ms\n")
    (folder / "policy-unknown-metric.yaml").write_text(
        "checks:\n  - {metric: ttft_fast, statistic: p50, tolerance: 0.1}\n")
    (folder / "policy-negative-tolerance.yaml").write_text(
        "checks:\n  - {metric: ttft_ms, statistic: p50, tolerance: -0.2}\n")
    config = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    truncated = folder / "model-truncated"
    truncated.mkdir(exist_ok=True)
    (truncated / "config.json").write_text(config)
    _safetensors(truncated / "model.safetensors", {"w": 64}, cut=100)
    sharded = folder / "model-missing-shard"
    sharded.mkdir(exist_ok=True)
    (sharded / "config.json").write_text(config)
    _safetensors(sharded / "model-00001-of-00002.safetensors", {"a": 8})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}))


def _seed_run(runs: Path) -> None:
    """A finished run, with ``latest`` pointing at it, that no failing case may touch."""
    run = runs / SEEDED_RUN
    (run / "w8a8").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({
        "run_id": SEEDED_RUN, "inputs": {"load_profile": "ci"}, "tools": {},
        "variants": [{"name": "bf16", "recipe": "none", "baseline": True},
                     {"name": "w8a8", "recipe": "w8a8-int8"}],
        "artifacts": {"w8a8": {"quantize": {"digest": "sha256:0"}}}, "stages": {}}, indent=2))
    (run / "w8a8" / "quantize.json").write_text('{"digest": "sha256:0"}\n')
    (run / "gate.json").write_text('{"passed": true}\n')
    (runs / "latest").symlink_to(SEEDED_RUN)


def _snapshot(runs: Path) -> dict[str, str]:
    """Every file's bytes and every link's target under ``runs``."""
    out = {}
    for p in sorted(runs.rglob("*")):
        rel = str(p.relative_to(runs))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _substitute(value: object, files: Path) -> object:
    if isinstance(value, str):
        return value.replace("{files}", str(files)).replace("{run_id}", SEEDED_RUN)
    if isinstance(value, list):
        return [_substitute(v, files) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, files) for k, v in value.items()}
    return value


def _event_time(ev: dict) -> float:
    return datetime.fromisoformat(ev["created"]).timestamp()


@pytest.fixture(scope="module")
def bad_input_summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """Collects each case's figures; writes them, summed up, to bad_input_play.json."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    seconds = sorted(r["seconds_to_error"] for r in rows if r["seconds_to_error"] is not None)
    summary = {
        "cases": len(rows),
        "caught_before_expensive_step": sum(r["caught_early"] for r in rows),
        "seconds_to_error_median": statistics.median(seconds) if seconds else None,
        "seconds_to_error_max": max(seconds) if seconds else None,
        "wall_seconds_total": round(sum(r["wall_seconds"] for r in rows), 1),
        "tracebacks": sum(r["tracebacks"] for r in rows),
        "rows": rows,
    }
    out = tmp_path_factory.getbasetemp() / "bad_input_play.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"\nbad input (play): {json.dumps({k: v for k, v in summary.items() if k != 'rows'})}"
          f" -> {out}")


@pytest.mark.parametrize("case", PLAY_CASES, ids=[c["id"] for c in PLAY_CASES])
def test_bad_input_table(case: dict, tmp_path: Path, bad_input_summary: list[dict]) -> None:
    files = tmp_path / "files"
    _bad_files(files)
    runs = tmp_path / "runs"
    _seed_run(runs)
    before = _snapshot(runs)
    started = time.monotonic()
    runner = run_playbook(tmp_path, case["id"], tags=CASE_TAGS,
                          extravars=_substitute(case["extravars"], files))  # type: ignore[arg-type]
    wall = time.monotonic() - started
    text = runner_text(runner)
    failed = [ev for ev in runner.events if ev.get("event") == "runner_on_failed"
              and not ev.get("event_data", {}).get("ignore_errors")]
    # the tasks of other plays than the checks' that started (each play's first task, the
    # role's argument spec check, does no work)
    work = sorted({f"{ev['event_data'].get('play')}: {ev['event_data'].get('task')}"
                   for ev in runner.events if ev.get("event") == "playbook_on_task_start"
                   and ev["event_data"].get("play") not in CHECK_PLAYS
                   and not str(ev["event_data"].get("task", "")).startswith(ARG_SPEC_TASK)})
    first = next((ev for ev in runner.events if ev.get("created")), None)
    row = {"id": case["id"], "wall_seconds": round(wall, 2),
           "seconds_to_error": (round(_event_time(failed[0]) - _event_time(first), 2)
                                if failed and first else None),
           "failed_task": failed[0]["event_data"].get("task") if failed else None,
           "caught_early": bool(failed) and not work,
           "tracebacks": text.count("Traceback (most recent call last)")}
    bad_input_summary.append(row)
    assert runner.rc != 0, text[-3000:]
    assert failed, play_failures(runner)
    assert case["stage"] in row["failed_task"], play_failures(runner)
    for needle in case["message"]:
        assert _substitute(needle, files) in text, f"{needle!r} not in:\n{play_failures(runner)}"
    assert row["tracebacks"] == 0, text[-3000:]
    assert row["caught_early"], f"tasks that started before the failure: {work}"
    # nothing recorded: the finished run is byte-identical, latest unmoved, no run added
    assert _snapshot(runs) == before
