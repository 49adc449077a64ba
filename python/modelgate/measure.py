"""The validate stage's two steps: measure one served variant, then judge the whole run.

Measuring runs on the serving host and writes into its work directory for the run, laid out
as the run directory is (``<variant>/guidellm/``, ``accuracy/``, ``logprobs.json``, ...); the
play fetches the files it names into the controller's run directory. Judging reads only the
run directory, so a run can be judged again, with another policy, long after its servers are
gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError


def measure_variant(
    *,
    work_dir: Path,
    variant: str,
    baseline: str,
    base_url: str,
    served_name: str,
    processor: str,
    bench_bin_dir: Path,
    load_profile: str = "ci",
    load_overrides: dict[str, Any] | None = None,
    accuracy_tasks: list[str] | None = None,
    accuracy_limit: float | None = None,
    fidelity: bool = True,
    round_no: int = 1,
    cpu_affinity: list[int] | None = None,
) -> dict[str, Any]:
    """Run the load sweep (and, in round 1, accuracy and logprobs) for one served variant.

    A candidate's logprobs score the baseline's exact token sequences, so the baseline must be
    measured first, into the same ``work_dir``; its ``fidelity.json`` is written here.
    ``files`` in the result lists every file under ``work_dir/<variant>/`` (relative paths),
    which the caller copies into the run directory.
    """
    from modelgate import accuracy, loadtest
    from modelgate import fidelity as fid

    run_path = work_dir
    vdir = work_dir / variant
    vdir.mkdir(parents=True, exist_ok=True)
    profile = loadtest.get_profile(load_profile, **(load_overrides or {}))
    guidellm_dir = vdir / "guidellm"
    # Round 1 writes guidellm/results.json; round N writes guidellm/rN/ and its results are
    # moved beside the first as results-rN.json, the name the gate pools rounds by.
    out_dir = guidellm_dir if round_no == 1 else guidellm_dir / f"r{round_no}"
    load = loadtest.run_load(
        profile, base_url, served_name, processor, out_dir,
        guidellm_bin=str(bench_bin_dir / "guidellm"), cpu_affinity=cpu_affinity,
        variant=variant,
    )
    if round_no > 1:
        for name in ("results", "report"):
            src = out_dir / f"{name}.json"
            if src.exists():
                src.replace(guidellm_dir / loadtest.round_file_name(name, round_no))
        return {"variant": variant, "round": round_no, "load": load,
                **variant_archive(work_dir, variant)}
    result: dict[str, Any] = {"variant": variant, "round": round_no, "load": load}
    if accuracy_tasks:
        result["accuracy"] = accuracy.run_accuracy(
            list(accuracy_tasks), base_url, served_name, processor, vdir / "accuracy",
            lm_eval_bin=str(bench_bin_dir / "lm_eval"), limit=accuracy_limit,
        )
    if fidelity:
        reference = None
        if baseline and baseline != variant:
            ref_path = run_path / baseline / "logprobs.json"
            if not ref_path.exists():
                raise ModelGateError(
                    f"the baseline {baseline!r} has no logprobs.json in {run_path}",
                    field="modelgate_variants",
                    fix="measure the baseline variant before its candidates",
                )
            reference = json.loads(ref_path.read_text())
        prompts = fid.load_prompts()
        logprobs = fid.collect_logprobs(base_url, served_name, prompts, reference=reference)
        (vdir / "logprobs.json").write_text(json.dumps(logprobs))
        if reference is not None:
            comparison = fid.compare(reference, logprobs, baseline_name=baseline)
            (vdir / "fidelity.json").write_text(json.dumps(comparison, indent=2))
            result["fidelity"] = {k: comparison[k] for k in ("flip_rate", "kl_mean", "prompts")}
    result.update(variant_archive(work_dir, variant))
    return result


def variant_files(vdir: Path) -> list[str]:
    """Every file under a variant's measurement directory, relative, sorted."""
    # not digest.tree_files: this is what the load and accuracy tools wrote, not a model; a
    # stray link in it is passed over rather than failing a measurement that succeeded
    return sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file())


def variant_archive(work_dir: Path, variant: str) -> dict[str, Any]:
    """The variant's measurements as one tar (``archive``) and their names (``files``).

    One file to fetch instead of one per file: the controller's run_dir module unpacks it
    into ``<run>/<variant>/``.
    """
    import tarfile

    vdir = work_dir / variant
    files = variant_files(vdir)
    archive = work_dir / ".archives" / f"{variant}.tar"
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.tmp")
    with tarfile.open(tmp, "w") as tar:
        for rel in files:
            tar.add(vdir / rel, arcname=rel, recursive=False)
    tmp.replace(archive)
    return {"files": files, "archive": str(archive)}


def judge_run(run_path: Path, policy: str | None = None,
              baseline: str | None = None,
              accept_inconclusive: list[str] | None = None) -> dict[str, Any]:
    """Gate every candidate of the run, write gate.json + junit.xml, then the report.

    ``accept_inconclusive`` adds dimensions to the policy's own ``accept_inconclusive`` (an
    inventory's "accuracy is at chance here", without copying the whole policy). Artifacts are
    written before the caller fails anything, so a failing gate still leaves the whole record.
    """
    from dataclasses import replace

    from modelgate import gate, report

    loaded = gate.load_policy(policy)
    extra = list(accept_inconclusive or [])
    unknown = [d for d in extra if d not in gate.DIMENSIONS]
    if unknown:
        raise ModelGateError(f"unknown gate dimensions {unknown}", field="accept_inconclusive",
                             fix=f"use some of {', '.join(gate.DIMENSIONS)}")
    if extra:
        merged = set(loaded.accept_inconclusive) | set(extra)
        loaded = replace(loaded, accept_inconclusive=tuple(
            d for d in gate.DIMENSIONS if d in merged))

    if baseline:
        manifest = gate.read_manifest(run_path)
        verdicts = [gate.evaluate(baseline, run_path / v["name"], loaded)
                    for v in manifest["variants"] if not v.get("baseline")]
        verdict: Any = gate.RunVerdict(run_id=run_path.name, baseline=str(baseline),
                                       verdicts=verdicts,
                                       notes=[f"stored baseline: {baseline}"],
                                       policy=loaded.to_dict())
    else:
        verdict = gate.evaluate_run(run_path, loaded)
    verdict.write_gate_json(run_path / "gate.json")
    verdict.write_junit(run_path / "junit.xml")
    rendered = report.render_report(run_path)
    summary = report.markdown_summary(run_path)
    return {
        "passed": verdict.passed,
        "status": verdict.status,  # pass | fail | inconclusive (inconclusive: not passed)
        "message": verdict.message,
        "gate": str(run_path / "gate.json"),
        "junit": str(run_path / "junit.xml"),
        "report": str(rendered),
        "summary": summary,
    }
