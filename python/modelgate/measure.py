"""The validate stage's two steps: measure one served variant, then judge the whole run.

Measuring runs on the serving host and writes into its work directory for the run, laid out
as the run directory is (``<variant>/guidellm/``, ``accuracy/``, ``logprobs.json``, ...); the
play fetches the files it names into the controller's run directory. Judging reads only the
run directory, so a run can be judged again, with another policy, long after its servers are
gone.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError, ToolError


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
    from modelgate import loadtest

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
    result.update(measure_quality(
        work_dir=work_dir, variant=variant, baseline=baseline, base_url=base_url,
        served_name=served_name, processor=processor, bench_bin_dir=bench_bin_dir,
        accuracy_tasks=accuracy_tasks, accuracy_limit=accuracy_limit, fidelity=fidelity))
    result.update(variant_archive(work_dir, variant))
    return result


def measure_quality(
    *,
    work_dir: Path,
    variant: str,
    baseline: str,
    base_url: str,
    served_name: str,
    processor: str,
    bench_bin_dir: Path,
    accuracy_tasks: list[str] | None = None,
    accuracy_limit: float | None = None,
    fidelity: bool = True,
) -> dict[str, Any]:
    """Accuracy (lm-eval) and logprobs of one served variant, once per run: ``accuracy`` and,
    for a candidate, ``fidelity`` against the baseline's logprobs already in ``work_dir``."""
    from modelgate import accuracy
    from modelgate import fidelity as fid

    vdir = work_dir / variant
    vdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if accuracy_tasks:
        result["accuracy"] = accuracy.run_accuracy(
            list(accuracy_tasks), base_url, served_name, processor, vdir / "accuracy",
            lm_eval_bin=str(bench_bin_dir / "lm_eval"), limit=accuracy_limit,
        )
    if fidelity:
        reference = None
        if baseline and baseline != variant:
            ref_path = work_dir / baseline / "logprobs.json"
            if not ref_path.exists():
                raise ModelGateError(
                    f"the baseline {baseline!r} has no logprobs.json in {work_dir}",
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
    return result


def warm_up(base_url: str, served_name: str, prompt_tokens: int, output_tokens: int,
            requests: int = 8) -> dict[str, Any]:
    """A few completions of the load's shape before the first measured round.

    A fresh vLLM CPU server is slow on its first requests (kernels compiled and caches
    filled on first use): measured together, that would fall on whichever variant started
    last, not on both alike.
    """
    import time

    from modelgate.serving import http_json

    started = time.monotonic()
    prompt = " ".join(["warm"] * max(1, prompt_tokens))
    for __ in range(requests):
        status, body = http_json(f"{base_url}/v1/completions", {
            "model": served_name, "prompt": prompt, "max_tokens": max(1, output_tokens),
            "ignore_eos": True, "temperature": 0}, timeout=120.0)
        if status != 200:
            raise ToolError(f"warm-up request to {base_url} answered {status}: "
                            f"{str(body)[:300]}", fix="see the server log of this variant")
    return {"requests": requests, "wall_s": round(time.monotonic() - started, 2)}


def measure_together(
    *,
    work_dir: Path,
    upstreams: dict[str, str],
    baseline: str,
    served_name: str,
    processor: str,
    bench_bin_dir: Path,
    load_profile: str = "ci",
    load_overrides: dict[str, Any] | None = None,
    accuracy_tasks: list[str] | None = None,
    accuracy_limit: float | None = None,
    fidelity: bool = True,
    round_no: int = 1,
    quality_for: list[str] | None = None,
    delays_ms: dict[str, float] | None = None,
    block_s: float = 5.0,
    cpu_affinity: list[int] | None = None,
    rotate_cores: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure variants served side by side: one GuideLLM run through the interleaving proxy.

    ``upstreams`` maps each variant to its server's root URL (baseline first). Variants in
    ``quality_for`` (those not measured yet in this run) first get their accuracy and
    logprobs, which also warms their servers; the others get a short warm-up. Each
    variant's share of the load lands where a separate run would put it
    (``<variant>/guidellm/results.json``, ``results-r<N>.json``), carrying the time blocks the
    gate pairs the variants by; the raw report and the proxy's routes stay in
    ``interleaved/r<N>/``. ``delays_ms`` adds a fixed latency to a variant's responses at the
    proxy: a known regression, to prove the gate detects one of that size on this host.
    ``rotate_cores`` (variant -> ``{"pid", "cpus"}`` of its local server) makes the servers
    swap their cores every half block during the load (:func:`rotating_cores`).
    """
    from modelgate import loadtest

    if len(upstreams) < 2:
        raise ModelGateError("measuring together needs two or more served variants",
                             field="upstreams", fix="serve the baseline and a candidate")
    profile = loadtest.get_profile(load_profile, **(load_overrides or {}))
    result: dict[str, Any] = {"round": round_no, "variants": {}}
    for variant, url in upstreams.items():
        entry: dict[str, Any] = {}
        if variant in (quality_for or []):
            entry = measure_quality(
                work_dir=work_dir, variant=variant, baseline=baseline, base_url=url,
                served_name=served_name, processor=processor, bench_bin_dir=bench_bin_dir,
                accuracy_tasks=accuracy_tasks, accuracy_limit=accuracy_limit,
                fidelity=fidelity)
        entry["warm_up"] = warm_up(url, served_name, profile.prompt_tokens,
                                   profile.output_tokens)
        result["variants"][variant] = entry
    with rotating_cores(rotate_cores or {}, block_s / 2.0) as rotation:
        load = loadtest.measure_interleaved(
            profile, upstreams, served_name, processor, work_dir, round_no=round_no,
            block_s=block_s, guidellm_bin=str(bench_bin_dir / "guidellm"),
            cpu_affinity=cpu_affinity, delays_ms=delays_ms)
    load["core_rotation"] = rotation
    result["load"] = load
    for variant in upstreams:
        result["variants"][variant].update(variant_archive(work_dir, variant))
    result["interleaved"] = variant_archive(work_dir, "interleaved")
    return result


def local_server_sessions(servers: list[dict[str, Any]],
                          state_dir: Path) -> dict[str, dict[str, Any]]:
    """``{variant: {"pid", "cpus"}}`` of the group's local vLLM CPU servers found running in
    ``state_dir`` (``servers`` as measure_plan gives them), for :func:`rotating_cores`."""
    from modelgate.process import ProcessSpec, read_state
    from modelgate.serving import server_name

    found: dict[str, dict[str, Any]] = {}
    for srv in servers:
        state = read_state(ProcessSpec(name=server_name(int(srv["port"])), argv=[],
                                       state_dir=state_dir))
        if state and srv.get("cpus"):
            found[str(srv["variant"])] = {"pid": state["pid"], "cpus": list(srv["cpus"])}
    return found


@contextlib.contextmanager
def rotating_cores(servers: dict[str, dict[str, Any]],
                   period_s: float) -> Iterator[dict[str, Any]]:
    """Move each server to the next server's cores every ``period_s`` while the load runs.

    Each local vLLM CPU server side by side has cores of its own, but cores are not equal: on
    this 2-core host the same model read 6-9% faster on core 1 than on core 0 in five of five
    rounds, a bias no resampling removes. Moving every thread of each server (its whole
    session) to the next server's cores, twice per time block, gives every variant each core
    for the same share of the run (of every block, with two servers). ``servers``: variant ->
    ``{"pid", "cpus"}``; fewer than two, or any without cores, rotates nothing. Yields what
    it did (``moves``).
    """
    import threading

    from modelgate.process import pin_session

    names = list(servers)
    info: dict[str, Any] = {"period_s": period_s, "moves": 0}
    if len(names) < 2 or not all(servers[n].get("cpus") and servers[n].get("pid")
                                 for n in names):
        info["period_s"] = None
        yield info
        return
    slots = [list(servers[n]["cpus"]) for n in names]
    stop = threading.Event()

    def place(step: int) -> None:
        for i, name in enumerate(names):
            pin_session(int(servers[name]["pid"]), slots[(i + step) % len(slots)])

    def loop() -> None:
        step = 0
        while not stop.wait(period_s):
            step += 1
            place(step)
            info["moves"] = step

    worker = threading.Thread(target=loop, name="modelgate-core-rotation", daemon=True)
    worker.start()
    try:
        yield info
    finally:
        stop.set()
        worker.join()
        place(0)  # every server back on its own cores


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
              accept_inconclusive: list[str] | None = None,
              tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Gate every candidate of the run, write gate.json + junit.xml, then the report.

    ``accept_inconclusive`` adds dimensions to the policy's own ``accept_inconclusive`` (an
    inventory's "accuracy is at chance here", without copying the whole policy);
    ``tolerances`` replaces the tolerance of every check of a dimension (an AAP survey's
    thresholds, see ``gate.with_tolerances``); the policy used is recorded in gate.json.
    Artifacts are written before the caller fails anything, so a failing gate still leaves
    the whole record.
    """
    from dataclasses import replace

    from modelgate import gate, report

    loaded = gate.with_tolerances(gate.load_policy(policy), tolerances or {})
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


# ---------------------------------------------------------------------------------------
# How the variants are measured: one after the other, or side by side

DESIGNS = ("auto", "interleaved", "sequential")


def sequential_schedule(variants: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in measuring order: the variants' order (baseline first) in odd
    rounds, reversed in even ones (A B, B A, A B ...), so a drift of the host during the run
    falls on every variant alike, not on the one measured last."""
    return [(r, v) for r in range(1, rounds + 1)
            for v in (variants if r % 2 else list(reversed(variants)))]


def plan_measurement(
    *,
    variants: list[str],
    rounds: int,
    port: int,
    design: str = "auto",
    target: str = "local",
    device: str = "cpu",
    cpus: list[int] | None = None,
    gpus: list[int] | None = None,
    keep_serving: bool = False,
) -> dict[str, Any]:
    """Decide how the validate stage measures ``variants`` (baseline first) on one host.

    Side by side (``interleaved``) when the host can give every variant measured together a
    share of its own: on the local target's vLLM CPU, whole cores (``cpus``, default the ones
    this process may use; two servers bound to one core starve each other); on a GPU target,
    whole GPUs (``gpus``: the indices the target may use); on the kserve target, always
    (each variant is an InferenceService of its own, on GPUs the cluster schedules). With more
    variants than shares, the baseline is measured together with as many candidates at a time
    as fit, group after group; the gate compares each candidate with the baseline rounds it
    shared. Otherwise ``sequential``: one variant at a time, the order flipped every round.
    ``design`` forces one (``interleaved`` the host cannot do is an error); ``auto`` picks and
    says why.
    """
    if design not in DESIGNS:
        raise ModelGateError(f"unknown validate design {design!r}",
                             field="modelgate_validate_design", fix=f"use one of {DESIGNS}")
    if rounds < 1:
        raise ModelGateError(f"rounds must be >= 1, got {rounds}",
                             field="modelgate_validate_rounds", fix="e.g. 2")
    if len(set(variants)) != len(variants) or not variants:
        raise ModelGateError(f"variants must be distinct names, got {variants}",
                             field="modelgate_variants", fix="give each variant its own name")
    k = len(variants)
    if target == "local" and device == "cpu":
        units = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        what = "core"
    elif target in ("local", "rhaiis") and device == "cuda":
        units = sorted(gpus or [])
        what = "GPU"
    elif target == "kserve":
        # each variant is its own InferenceService: the cluster gives each its own GPUs
        units, what = list(range(k)), "InferenceService"
    else:
        units, what = [], ""
    size = min(k, len(units))
    why_not = ""
    if k < 2:
        why_not = "one variant: nothing to measure it against side by side"
    elif not what:
        why_not = (f"the {target} target on {device} serves one variant at a time on this "
                   "host")
    elif size < 2:
        why_not = (f"the host has {len(units)} {what}(s) to give the servers, and side by "
                   f"side each variant needs one of its own")
    if design == "interleaved" and why_not:
        raise ModelGateError(
            f"modelgate_validate_design is interleaved, but {why_not}",
            field="modelgate_validate_design",
            fix="use auto or sequential, or give the servers more "
                f"{what or 'resources'} (one per variant measured together)")
    if design == "sequential" or why_not:
        return {
            "design": "sequential",
            "reason": "requested (modelgate_validate_design: sequential)"
                      if design == "sequential" else why_not,
            "schedule": [[r, v] for r, v in sequential_schedule(variants, rounds)],
            "groups": [], "client_cpus": [],
        }
    # units per server; on CPU one core is left to the load client (and the proxy) when the
    # servers do not need every core, otherwise the client floats over all of them alike
    spare = 1 if what == "core" and len(units) > size else 0
    share = (len(units) - spare) // size
    client = units[size * share:] if what == "core" and spare else []
    baseline, candidates = variants[0], variants[1:]
    per_group = size - 1
    chunks = [candidates[i:i + per_group] for i in range(0, len(candidates), per_group)]
    groups = []
    for gi, chunk in enumerate(chunks):
        members = [baseline, *chunk]
        servers = []
        for slot, name in enumerate(members):
            mine = units[slot * share:(slot + 1) * share]
            servers.append({"variant": name, "port": port + slot,
                            "cpus": mine if what == "core" else [],
                            "gpus": mine if what == "GPU" else []})
        groups.append({
            "variants": members, "servers": servers,
            "rounds": list(range(gi * rounds + 1, (gi + 1) * rounds + 1)),
            "quality_for": members if gi == 0 else list(chunk),
        })
    for gi, group in enumerate(groups):
        following = groups[gi + 1]["servers"] if gi + 1 < len(groups) else []
        keep = [] if gi + 1 < len(groups) or not keep_serving else group["servers"]
        group["stop_after"] = [s for s in group["servers"]
                               if s not in following and s not in keep]
    shape = (f"{len(groups)} groups of the baseline with up to {per_group} candidate(s)"
             if len(groups) > 1 else "all variants together")
    return {
        "design": "interleaved",
        "reason": (f"{'requested' if design == 'interleaved' else 'auto'}: {len(units)} "
                   f"{what}(s), {share} per server; {shape}, {rounds} round(s) each, one "
                   "GuideLLM run per round through the interleaving proxy"),
        "schedule": [], "groups": groups, "client_cpus": client,
    }


def host_gpus() -> list[int]:
    """Indices of this host's NVIDIA GPUs (``nvidia-smi``), empty without a driver."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.split() if x.strip().isdigit()]
