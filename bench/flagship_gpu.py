"""The seed's comparison on one GPU host, through ModelGate's own stage functions.

Runs on a GPU host where the play cannot (no podman, no registry: the modelcar stage has
nowhere to push): the same functions the collection's modules call, in the play's order, into
one run directory. The variants share the one GPU: each server gets the same share of its
memory and is started at once with the others, then the rounds measure one variant at a time
in the play's sequential order (A B C, C B A), so every server starts once:

- model stage: ``model_source.resolve_model`` (``generated`` from a published config.json:
  random weights with the exact geometry);
- quantize stage: ``quantize.quantize_stage`` (LLM Compressor, local runner);
- serve stage: ``serving.serve_local`` (device ``cuda``: the arguments ``modelgate plan``
  derives for the server's share of the GPU and the installed vLLM version),
  ``serving.stop_local_server``;
- validate stage: ``measure.warm_up`` and ``measure.measure_variant`` per round (GuideLLM; no
  accuracy or fidelity: the weights are random), the records stored with ``rundir.RunDir``;
- gate stage: ``measure.judge_run`` (gate.json, junit.xml, the report), after every round.

Each stage's Python path is set in the environment the tools inherit (``--site-*``): vLLM,
LLM Compressor and GuideLLM pin different versions of shared packages, as their images do.
``timings.json`` records each step's wall time as it ends, so an interrupted run keeps what it
measured.

Usage: python bench/flagship_gpu.py --work DIR --config CONFIG.json --site-vllm DIR
         --site-quantize DIR --site-bench DIR [--variants bf16,w4a16,fp8] [--rates 1,2,3,5,7,9]
         [--seconds 20] [--rounds 2] [--gpu-share 0.3] [--engine-version V]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# vLLM's own memory plan, as it logs it (0.25)
VLLM_MEMORY_LINES = {
    "model_loading_gib": r"Model loading took ([\d.]+) GiB",
    "available_kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "gpu_kv_cache_tokens": r"GPU KV cache size: ([\d,]+) tokens",
    "max_concurrency": r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x",
    "attention_block_size": r"[Ss]etting attention block size to (\d+) tokens",
    "mamba_page_padding": r"[Pp]adding mamba page size by ([\d.]+)%",
    "prefix_caching": r"enable_prefix_caching=(\w+)",
    "gpu_memory_utilization": r"gpu_memory_utilization=([\d.]+)",
    "kv_cache_memory_reserved_gib": r"reserved ([\d.]+) GiB memory for KV Cache",
}

RECIPES = {"bf16": ("none", None), "w4a16": ("w4a16", 64), "fp8": ("fp8-dynamic", None)}


def vllm_memory(log_text: str) -> dict[str, Any]:
    """vLLM's logged memory numbers of its last start, and the lines they came from.

    The server log is appended to across starts on one port: only the text after the last
    "non-default args" line belongs to this start.
    """
    marker = log_text.rfind("non-default args")
    log_text = log_text[log_text.rfind("\n", 0, marker) + 1:] if marker >= 0 else log_text
    out: dict[str, Any] = {"lines": []}
    for key, pattern in VLLM_MEMORY_LINES.items():
        m = re.search(pattern, log_text)
        if not m:
            continue
        line = log_text[log_text.rfind("\n", 0, m.start()) + 1:log_text.find("\n", m.end())]
        out["lines"].append(line.strip()[-300:])
        if key == "max_concurrency":
            out["concurrency_tokens"] = int(m.group(1).replace(",", ""))
            out["max_concurrency"] = float(m.group(2))
        elif key == "gpu_kv_cache_tokens":
            out[key] = int(m.group(1).replace(",", ""))
        elif key == "prefix_caching":
            out[key] = m.group(1)
        else:
            out[key] = float(m.group(1))
    kernels = sorted(set(re.findall(r"Using (\w+(?:Linear)?Kernel)", log_text)))
    if kernels:
        out["linear_kernels"] = kernels
    return out


class Steps:
    """Wall time of each step, written to ``timings.json`` as each ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        row: dict[str, Any] = {"step": name, "start": round(t0, 1)}
        try:
            result = fn(*args, **kwargs)
            row["ok"] = True
            return result
        except BaseException as exc:
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {str(exc)[-3000:]}"
            raise
        finally:
            row["wall_s"] = round(time.time() - t0, 1)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {row['wall_s']} s "
                  f"{'ok' if row['ok'] else row.get('error', '')[:500]}", flush=True)
            self.rows.append(row)
            self.path.write_text(json.dumps(self.rows, indent=2))


def gpu_memory_gib() -> float:
    """The GPU's total memory (what ``modelgate plan --gpu-memory-gib`` is given)."""
    import subprocess

    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                          "nounits"], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[0]) / 1024, 2)  # MiB -> GiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--site-vllm", required=True)
    ap.add_argument("--site-quantize", required=True)
    ap.add_argument("--site-bench", required=True)
    ap.add_argument("--variants", default="bf16,w4a16,fp8")
    ap.add_argument("--profile", default="seed", help="a load profile preset (loadtest.PRESETS)")
    ap.add_argument("--rates", default="1,3,5,7,9")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--calibration-length", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--run-id", default="h200")
    # for a rehearsal on a CPU host with the tool virtualenvs (defaults: this host's python3)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--python", default="", help="Python for the model and quantize stages")
    ap.add_argument("--serve-python", default="", help="Python with vLLM")
    ap.add_argument("--guidellm", default="", help="a guidellm executable")
    ap.add_argument("--memory-gib", type=float, default=None)
    ap.add_argument("--port", type=int, default=8000, help="the first variant's port")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gpu-share", type=float, default=None,
                    help="each server's --gpu-memory-utilization (default 0.9 / variants)")
    ap.add_argument("--engine-version", default="", help="default: the installed vLLM's")
    args = ap.parse_args(argv)

    from modelgate import loadtest, measure
    from modelgate.gate import DIMENSIONS
    from modelgate.measure import sequential_schedule
    from modelgate.model_source import resolve_model
    from modelgate.process import ProcessSpec
    from modelgate.quantize import quantize_stage
    from modelgate.recipes import build_recipe
    from modelgate.rundir import RunDir
    from modelgate.serving import (
        derive_serving_args,
        installed_vllm_version,
        serve_local,
        server_name,
        stop_local_server,
    )

    work = Path(args.work)
    store = work / "store"
    run, __ = RunDir.open(work / "runs", args.run_id, create=True)
    run_path = run.path
    steps = Steps(run_path / "timings.json")
    pkg = str(Path(__file__).resolve().parents[1] / "python")
    python = args.python or shutil.which("python3") or sys.executable
    serve_python = args.serve_python or python
    base_path = os.environ.get("PYTHONPATH", "")

    def site(*dirs: str) -> None:
        os.environ["PYTHONPATH"] = os.pathsep.join([pkg, *dirs] + ([base_path] if base_path
                                                                   else []))

    os.environ["VLLM_USE_FLASHINFER_SAMPLER"] = "0"  # FlashInfer is not installed
    bench_bin = work / "bin"
    bench_bin.mkdir(parents=True, exist_ok=True)
    guidellm = bench_bin / "guidellm"  # where measure_variant looks for it
    guidellm.unlink(missing_ok=True)
    if args.guidellm:
        guidellm.symlink_to(Path(args.guidellm).resolve())
    else:  # the wheels are unpacked, not installed: no console script
        guidellm.write_text(f"#!/bin/sh\nexec {python} -m guidellm \"$@\"\n")
        guidellm.chmod(0o755)
    memory = args.memory_gib or (gpu_memory_gib() if args.device == "cuda" else None)
    variants = [v for v in args.variants.split(",") if v]
    run.update(variants=[{"name": v, "baseline": v == "bf16", "recipe": RECIPES[v][0]}
                         for v in variants],
               host={"gpu_memory_gib": memory, "python": python})

    site()
    model = steps.run("model: resolve_model generated from config", resolve_model,
                      "generated", store_dir=store, generator_python=python,
                      config=args.config, seed=0)
    (run_path / "model.json").write_text(json.dumps(model.to_dict(), indent=2))
    gen = Path(model.path) / "modelgate-generated.json"
    if gen.exists():
        shutil.copy(gen, run_path / "model-generated.json")

    rates = [float(r) for r in args.rates.split(",")]
    load = {"rates": rates, "max_seconds": args.seconds, "samples": args.samples}
    profile = loadtest.get_profile(args.profile, **load)
    served = "nemotron-nano-9b-v2"
    state_dir = work / "state"
    failures = 0

    # quantize stage: every variant's checkpoint, one after the other on the GPU
    ckpts: dict[str, str] = {}
    for v in variants:
        recipe_name, group = RECIPES[v]
        vdir = run_path / v
        vdir.mkdir(parents=True, exist_ok=True)
        site(args.site_quantize, args.site_vllm)
        try:
            q = steps.run(f"{v}: quantize_stage ({recipe_name})", quantize_stage,
                          model=model.path, variant=v,
                          recipe=build_recipe(recipe_name, group_size=group),
                          store_dir=store / "checkpoints", calibration_files=[],
                          num_samples=args.calibration_samples,
                          max_seq_length=args.calibration_length, python=python,
                          model_digest=model.digest)
        except Exception:
            failures += 1
            (vdir / "error.txt").write_text(traceback.format_exc())
            traceback.print_exc()
            continue
        rec = q.pop("record", None)
        (vdir / "quantize.json").write_text(json.dumps(rec or q, indent=2, default=str))
        ckpts[v] = q["path"]

    # serve stage: every variant on its own port of the one GPU, started together. Each gets
    # the same share of the GPU (--gpu-memory-utilization) and, so that the servers' start-up
    # profiles cannot see each other's allocations, the KV cache its plan gives that share
    # (--kv-cache-memory-bytes: vLLM then skips its profiling-based sizing).
    site(args.site_vllm)
    engine = args.engine_version or installed_vllm_version(serve_python)
    share = args.gpu_share if args.gpu_share else 0.9 / max(len(ckpts), 1)
    ports = {v: args.port + i for i, v in enumerate(ckpts)}
    overrides: dict[str, dict[str, Any]] = {}
    for v, ckpt in ckpts.items():
        over = {"max-model-len": args.max_model_len, "gpu-memory-utilization": round(share, 3)}
        planned = derive_serving_args(ckpt, gpu_memory_gib=memory, overrides=over,
                                      served_model_name=served, engine_version=engine)
        assert planned.plan is not None
        over["kv-cache-memory-bytes"] = planned.plan.cache_bytes // 2**20 * 2**20
        overrides[v] = over
    deploys: dict[str, dict[str, Any]] = {}

    def start(v: str) -> None:
        try:
            deploys[v] = steps.run(
                f"{v}: serve_local ({args.device}) start-to-ready", serve_local,
                model=ckpts[v], served_name=served, port=ports[v], python=serve_python,
                state_dir=state_dir, device=args.device, memory_gib=memory,
                overrides=overrides[v], variant=v, engine_version=engine)
        except Exception:
            (run_path / v / "error.txt").write_text(traceback.format_exc())
            traceback.print_exc()

    threads = [threading.Thread(target=start, args=(v,)) for v in ckpts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures += len(ckpts) - len(deploys)
    for v, deploy in deploys.items():
        vdir = run_path / v
        (vdir / "deploy.json").write_text(json.dumps(
            (deploy.get("record") or {}).get("data", deploy), indent=2, default=str))
        (vdir / "vllm_memory.json").write_text(json.dumps(
            {"vllm": vllm_memory(Path(deploy["log"]).read_text(errors="replace")),
             "plan": deploy["args"].get("plan"), "argv": deploy["args"].get("argv"),
             "engine_version": engine}, indent=2, default=str))

    # validate stage: the rounds in the play's sequential order (A B C, C B A, ...), every
    # server resident, one measured at a time; the gate after every round
    measured = [v for v in variants if v in deploys]
    run.update(variants=[{"name": m, "baseline": m == "bf16", "recipe": RECIPES[m][0]}
                         for m in measured])
    try:
        for v in measured:
            steps.run(f"{v}: warm_up", measure.warm_up, deploys[v]["base_url"], served,
                      profile.prompt_tokens, profile.output_tokens, requests=4)
        schedule = sequential_schedule(measured, args.rounds)
        for i, (r, v) in enumerate(schedule):
            site(args.site_bench, args.site_vllm)
            try:
                steps.run(f"{v}: round {r}: measure_variant (GuideLLM, rates {args.rates}, "
                          f"{args.seconds:g} s)", measure.measure_variant,
                          work_dir=run_path, variant=v, baseline="bf16",
                          base_url=deploys[v]["base_url"], served_name=served,
                          processor=ckpts[v], bench_bin_dir=bench_bin,
                          load_profile=args.profile, load_overrides=load,
                          accuracy_tasks=None, fidelity=False, round_no=r)
            except Exception:
                failures += 1
                traceback.print_exc()
            last_of_round = i + 1 == len(schedule) or schedule[i + 1][0] != r
            if last_of_round and "bf16" in measured and len(measured) > 1:
                site()
                try:
                    verdict = steps.run(f"gate: judge_run after round {r}", measure.judge_run,
                                        run_path, accept_inconclusive=[
                                            d for d in DIMENSIONS
                                            if d in ("accuracy", "fidelity")])
                    (run_path / f"judge-r{r}.json").write_text(
                        json.dumps(verdict, indent=2, default=str))
                    print(verdict.get("message"), flush=True)
                except Exception:
                    failures += 1
                    traceback.print_exc()
    finally:
        site(args.site_vllm)
        for v, deploy in deploys.items():
            spec = ProcessSpec(name=server_name(ports[v]), argv=[], state_dir=state_dir)
            steps.run(f"{v}: stop_local_server", stop_local_server, spec)
            shutil.copy(deploy["log"], run_path / v / "vllm.log")
    print("done", json.dumps({"measured": measured, "failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
