"""bench/pipeline: what the play costs, stage by stage, and what it adds over the tools alone.

Three measurements in one run, each in its own fresh store (so the first run really builds
everything) and the project's own virtualenvs and local registry:

1. ``site.yml`` through ansible-runner, a first time: wall time per stage (play).
2. ``site.yml`` again with the same store: quantize and modelcar must find their outputs
   (goal: their second run takes under 5% of the first).
3. What the play adds over the tools: the time inside modelgate's modules (where the tools
   run) against each stage's wall time, from the same run's task events; and, with
   ``--by-hand``, the same work done by calling the same functions and tools directly from
   Python, without Ansible, in another fresh store (goal: the play adds under 10%).

Figures are printed as ratios within this run, since this machine's speed drifts between runs.
Usage: ``make bench`` (or ``python bench/pipeline.py [--by-hand]``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "tests"))

STAGES = ("provision", "model", "quantize", "modelcar", "deploy", "validate")
HOME = REPO / ".modelgate"


def _play_stage(play: str) -> str | None:
    """Map a play name of the stage playbooks to its stage."""
    names = {
        "Provision the hosts that quantize, serve and measure": "provision",
        "Run the local registry": "provision",
        "Resolve the source model": "model",
        "Quantize the variants": "quantize",
        "Package each variant as a modelcar image": "modelcar",
        "Deploy and prove each variant": "deploy",
        "Measure the variants": "validate",
        "Judge the run": "validate",
    }
    return names.get(play)


def stage_times(runner: Any) -> dict[str, float]:
    """Wall time per stage from the runner's event timestamps (play start to next play start)."""
    marks: list[tuple[float, str | None]] = []
    end = None
    for ev in runner.events:
        created = ev.get("created")
        if not created:
            continue
        t = datetime.fromisoformat(created).timestamp()
        if ev.get("event") == "playbook_on_play_start":
            marks.append((t, _play_stage(ev["event_data"].get("play", ""))))
        end = t
    times: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    for (t0, stage), (t1, __) in zip(marks, [*marks[1:], (end or 0.0, None)], strict=True):
        if stage:
            times[stage] += t1 - t0
    return times


def module_time(runner: Any) -> float:
    """Seconds spent inside modelgate's own modules (where the tools run), over the run.

    An async job's time is counted through the task that waited for it (job_progress)."""
    total = 0.0
    for ev in runner.events:
        data = ev.get("event_data", {})
        ours = data.get("task_action", "").startswith("modelgate.pipeline.")
        task_end = ev.get("event") in ("runner_on_ok", "runner_on_failed")
        loop_summary = "results" in data.get("res", {})  # its items are counted one by one
        if ours and ((task_end and not loop_summary) or ev.get("event") == "runner_item_on_ok"):
            total += float(data.get("duration") or 0.0)
    return total


def run_play(tmp: Path, name: str, store: Path,
             repository: str) -> tuple[dict[str, float], float, float]:
    """One site.yml run; returns per-stage times, the total and the time inside modules."""
    from conftest import run_playbook

    t0 = time.monotonic()
    runner = run_playbook(tmp, name, extravars={
        "modelgate_store_dir": str(store),
        "modelgate_registry": {"address": "127.0.0.1:5000", "repository": repository,
                               "tls_verify": False},
        # the by-hand path below measures one variant at a time: the play does the same here
        "modelgate_validate_design": "sequential",
    })
    total = time.monotonic() - t0
    if runner.rc != 0:
        gate = (tmp / "runs" / "latest" / "gate.json")
        if not gate.exists():  # a gate verdict is a result; anything else is a broken bench
            raise SystemExit(f"site.yml failed in {name}; see {tmp}/runner-{name}")
    return stage_times(runner), total, module_time(runner)


def variant_figures(run_dir: Path, store: Path) -> dict[str, Any]:
    """What the first run measured: the generated model's training (seconds, held-out accuracy)
    and, per variant, its accuracy on each task and its flip rate / KL against the baseline."""
    out: dict[str, Any] = {"training": None, "variants": {}}
    trained = sorted((store / "models").glob("generated-*/modelgate-generated.json"))
    if trained:
        out["training"] = json.loads(trained[-1].read_text()).get("training")
    for vdir in sorted(p for p in run_dir.iterdir() if (p / "accuracy").is_dir()):
        acc = json.loads((vdir / "accuracy" / "results.json").read_text())
        row: dict[str, Any] = {t: round(r["score"], 4) for t, r in acc["tasks"].items()}
        if (vdir / "fidelity.json").is_file():
            fid = json.loads((vdir / "fidelity.json").read_text())
            row["flip_rate"] = round(fid["flip_rate"], 4)
            row["kl_mean"] = round(fid["kl_mean"], 4)
        out["variants"][vdir.name] = row
    return out


def by_hand(tmp: Path, store: Path, repository: str) -> dict[str, float]:
    """The same stages, called directly (no Ansible): the stage functions the modules call."""
    from modelgate import measure, modelcar
    from modelgate.model_source import resolve_model
    from modelgate.process import ProcessSpec
    from modelgate.quantize import quantize_stage
    from modelgate.recipes import build_recipe
    from modelgate.rundir import RunDir, store_records
    from modelgate.serving import serve_local, server_name, stop_local_server

    times: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        out = fn()
        times[stage] += time.monotonic() - t0
        return out

    venvs = HOME / "venvs"
    variants = [{"name": "bf16", "recipe": "none", "baseline": True},
                {"name": "w4a16", "recipe": "w4a16", "group_size": 64}]
    run, __ = RunDir.open(tmp / "runs-by-hand")
    run.update(variants=variants)
    work = tmp / "work-by-hand"
    model = timed("model", lambda: resolve_model(
        "generated", store_dir=store, generator_python=str(venvs / "quantize/bin/python")))
    ckpts = {}
    for v in variants:
        out = timed("quantize", lambda v=v: quantize_stage(
            model=model.path, variant=v["name"],
            recipe=build_recipe(v["recipe"], group_size=v.get("group_size")),
            store_dir=store / "checkpoints", calibration_files=[], num_samples=32,
            max_seq_length=128, python=str(venvs / "quantize/bin/python"),
            model_digest=model.digest))
        store_records(run, [out["record"]])
        ckpts[v["name"]] = Path(out["path"])
    refs = {}
    for name, ckpt in ckpts.items():
        out = timed("modelcar", lambda name=name, ckpt=ckpt: modelcar.publish_modelcar(
            checkpoint=ckpt, variant=name, layout_dir=store / "oci", base="busybox",
            registry="127.0.0.1:5000", repository=repository, tls_verify=False))
        store_records(run, [out["record"]])
        refs[name] = str(out["ref_by_digest"])

    def serve(name: str) -> tuple[ProcessSpec, str]:
        path = str(modelcar.extract_stage(ref=refs[name], dest=store / "served" / name,
                                          tls_verify=False)["path"])
        serve_local(model=path, served_name="tiny-nemotron-h", port=8000,
                    python=str(venvs / "serve/bin/python"), state_dir=HOME / "state",
                    memory_gib=4, overrides={"max-model-len": 1024}, cpu_threads=1)
        return ProcessSpec(name=server_name(8000), argv=[], state_dir=HOME / "state"), path

    for v in variants:  # deploy: start, prove, stop
        spec, __ = timed("deploy", lambda v=v: serve(v["name"]))
        timed("deploy", lambda spec=spec: stop_local_server(spec))
    for v in variants:  # validate: start, measure, stop
        spec, path = timed("validate", lambda v=v: serve(v["name"]))
        try:
            timed("validate", lambda v=v, path=path: measure.measure_variant(
                work_dir=work, variant=v["name"],
                baseline="" if v.get("baseline") else "bf16",
                base_url="http://127.0.0.1:8000", served_name="tiny-nemotron-h",
                processor=path, bench_bin_dir=venvs / "bench/bin",
                accuracy_tasks=["modelgate_choice"], cpu_affinity=[1]))
        finally:
            timed("validate", lambda spec=spec: stop_local_server(spec))
        timed("validate", lambda v=v: shutil.copytree(
            work / v["name"], run.path / v["name"], dirs_exist_ok=True))
    timed("validate", lambda: measure.judge_run(run.path))
    return times


def main() -> int:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by-hand", action="store_true",
                        help="also do the same work without Ansible (one more full pipeline)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    args = parser.parse_args()
    os.environ.setdefault("MODELGATE_BENCH", "1")
    tmp = Path(tempfile.mkdtemp(prefix="modelgate-bench-"))
    stamp = time.strftime("%Y%m%d%H%M%S")
    try:
        store = tmp / "store-play"
        first, first_total, first_modules = run_play(tmp / "first", "first", store,
                                                     f"bench/play-{stamp}")
        second, second_total, __ = run_play(tmp / "second", "second", store,
                                            f"bench/play-{stamp}")
        hand = None if not args.by_hand else by_hand(
            tmp, tmp / "store-hand", f"bench/hand-{stamp}")
        rows = []
        for s in STAGES:
            row = {"stage": s, "first_s": round(first[s], 1), "second_s": round(second[s], 1)}
            if hand is not None:
                row["by_hand_s"] = round(hand[s], 1)
            rows.append(row)
        print(f"{'stage':10} {'first s':>9} {'second s':>9}" + (
            f" {'by hand s':>10}" if hand else ""))
        for r in rows:
            print(f"{r['stage']:10} {r['first_s']:9.1f} {r['second_s']:9.1f}" + (
                f" {r['by_hand_s']:10.1f}" if hand else ""))
        qm_first = first["quantize"] + first["modelcar"]
        qm_second = second["quantize"] + second["modelcar"]
        summary: dict[str, Any] = {
            "rows": rows, "first_total_s": round(first_total, 1),
            "second_total_s": round(second_total, 1),
            "quantize_modelcar_second_over_first": round(qm_second / qm_first, 4),
        }
        summary["first_inside_modules_s"] = round(first_modules, 1)
        figures = variant_figures((tmp / "first" / "runs" / "latest").resolve(), store)
        summary["model"] = figures
        if figures["training"]:
            tr = figures["training"]
            print(f"\nmodel: trained in {tr['seconds']:.1f} s, held-out {tr['task']} accuracy "
                  f"{tr['heldout_accuracy']:.3f} (chance {tr['chance']})")
        for variant, row in figures["variants"].items():
            print(f"{variant:14} " + " ".join(f"{k} {v}" for k, v in row.items()))
        summary["play_over_modules"] = round(first_total / first_modules, 3)
        print(f"\nfirst run: {first_total:.1f} s in all, {first_modules:.1f} s inside modelgate's "
              f"modules: the play adds {100 * (first_total / first_modules - 1):.1f}% "
              f"(goal < 10%)")
        print(f"quantize+modelcar, second run / first run: "
              f"{summary['quantize_modelcar_second_over_first']:.3f} (goal < 0.05)")
        if hand is not None:
            work = [s for s in STAGES if s != "provision"]
            play_work = sum(first[s] for s in work)
            hand_work = sum(hand[s] for s in work)
            summary["play_over_by_hand"] = round(play_work / hand_work, 3)
            print(f"play / by hand (model..validate, first run): "
                  f"{summary['play_over_by_hand']:.3f} (goal < 1.10)")
        print(json.dumps(summary))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
