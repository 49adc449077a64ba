"""Benchmark: the quantize stage's Python path vs LLM Compressor called directly.

Builds a model with random weights (or uses --model), then times, on the same recipe YAML and
the same calibration token set:

  ours    modelgate.quantize.quantize_variant: model digest, tool-version probe, the job in a
          fresh Python process (python -m modelgate.quantize_job), atomic rename
  direct  a fresh Python process that loads the model, calls llmcompressor.oneshot with the
          recipe YAML and the same token ids, and saves the compressed checkpoint

and prints JSON plus a human summary: wall time of each, the ratio ours/direct (goal: < 1.05),
peak GPU memory (torch.cuda.max_memory_allocated in the process that quantizes, reset at its
start) and peak RSS. Both paths run in fresh processes, so neither has warm imports.

Geometries: ``tiny`` is the generated hybrid model of the local inventory; ``nemotron-9b`` is
the exact NVIDIA-Nemotron-Nano-9B-v2 geometry from tests/data/nemotron_nano_9b_v2/config.json
(8.9 B parameters, ~18 GB in BF16; built directly on the GPU with --device cuda).

Needs only torch, transformers, tokenizers, llmcompressor (and its deps) and modelgate on
PYTHONPATH; no network:

    PYTHONPATH=python python bench/quantize.py --geometry tiny --device cpu \
        --num-samples 32 --max-seq-length 128 --group-size 64
    PYTHONPATH=python python bench/quantize.py --geometry nemotron-9b --device cuda \
        --num-samples 64 --max-seq-length 512 --group-size 64 --workdir /mnt/scratch/mg-bench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

NEMOTRON_9B_CONFIG = REPO / "tests" / "data" / "nemotron_nano_9b_v2" / "config.json"
GIB = 1 << 30


# ------------------------------------------------------------------------------ the model


def build_model(out: Path, geometry: str, device: str, mamba_kernels: bool) -> dict[str, Any]:
    """Save a random-weight BF16 model of ``geometry`` with a small local tokenizer."""
    import torch
    from modelgate.model_source import TinyHybridSpec, _train_tokenizer, generate_tiny_hybrid
    from transformers import NemotronHConfig, NemotronHForCausalLM

    started = time.monotonic()
    if geometry == "tiny":
        generate_tiny_hybrid(out, TinyHybridSpec())
        return {"build_s": round(time.monotonic() - started, 1)}
    facts = json.loads(NEMOTRON_9B_CONFIG.read_text())
    fields = {k: v for k, v in facts.items()
              if k not in ("_comment", "architectures", "model_type", "torch_dtype")}
    out.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(out, TinyHybridSpec())  # 4k ids: all valid in the 131072-row embedding
    config = NemotronHConfig(**fields, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                             tie_word_embeddings=False, use_mamba_kernels=mamba_kernels,
                             torch_dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    # building on the GPU initialises 8.9 B parameters in seconds instead of minutes
    with torch.device("cuda" if device == "cuda" else "cpu"):
        model = NemotronHForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="5GB")
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hybrid_override_pattern"] = facts["hybrid_override_pattern"]
    cfg["num_hidden_layers"] = len(facts["hybrid_override_pattern"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"build_s": round(time.monotonic() - started, 1), "parameters": params}


def write_calibration(path: Path, num_samples: int, max_seq_length: int) -> Path:
    """Samples long enough to fill ``max_seq_length`` tokens (corpus lines joined)."""
    from modelgate.model_source import corpus_lines

    lines = corpus_lines(n=max(4000, num_samples * max_seq_length // 8))
    # corpus lines run ~10+ tokens each: this overfills, and truncation cuts to the length
    per = max(1, max_seq_length // 6)
    with path.open("w") as f:
        for i in range(num_samples):
            chunk = lines[(i * per) % len(lines):][:per]
            f.write(json.dumps({"text": " ".join(chunk)}) + "\n")
    return path


# ----------------------------------------------------------------------------- the two paths


def run_ours(model: Path, store: Path, recipe_name: str, group_size: int, calib: Path,
             num_samples: int, max_seq_length: int, python: str,
             source_digest: str | None = None) -> dict[str, Any]:
    """The stage's Python path, exactly as the Ansible module calls it."""
    from modelgate.quantize import CalibrationSpec, quantize_variant
    from modelgate.recipes import build_recipe

    recipe = build_recipe(recipe_name, group_size=group_size)
    seen: dict[str, float] = {}

    def on_progress(msg: str) -> None:  # when the first and last progress lines arrived
        seen.setdefault("first", time.monotonic())
        seen["last"] = time.monotonic()

    started = time.monotonic()
    result = quantize_variant(model, store, recipe,
                              CalibrationSpec([calib], num_samples, max_seq_length), python,
                              on_progress, source_digest=source_digest)
    wall = time.monotonic() - started
    prov = result.provenance
    return {"wall_s": round(wall, 2), "job_elapsed_s": prov.get("elapsed_s"),
            "job_imports_s": prov.get("imports_s"),
            # before the job's first line: key, lock, spec, process start and imports
            "to_first_progress_s": round(seen.get("first", started) - started, 2),
            # after its last line: interpreter exit, atomic rename, provenance read
            "after_last_progress_s": round(time.monotonic() - seen.get("last", started), 2),
            "peak_gpu_bytes": prov.get("peak_gpu_bytes"),
            "peak_rss_bytes": prov.get("peak_rss_bytes"),
            "calibration_token_digest": prov.get("calibration_token_digest"),
            "changed": result.changed, "path": result.path}


def direct_worker(args: argparse.Namespace) -> int:
    """LLM Compressor called directly (runs in its own process; prints one JSON line)."""
    started = time.monotonic()
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    imports_s = time.monotonic() - started

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    texts = [json.loads(line)["text"] for line in Path(args.calibration).read_text().splitlines()
             if line.strip()][:args.num_samples]
    ids = [list(tokenizer(t, truncation=True, max_length=args.max_seq_length,
                          add_special_tokens=True)["input_ids"]) for t in texts]
    digest = "sha256:" + hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    t_oneshot = time.monotonic()
    model = oneshot(model=model, recipe=args.recipe_yaml, dataset=dataset, processor=tokenizer,
                    num_calibration_samples=len(ids), max_seq_length=args.max_seq_length,
                    shuffle_calibration_samples=False)
    oneshot_s = time.monotonic() - t_oneshot
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({
        "elapsed_s": round(time.monotonic() - started, 2), "oneshot_s": round(oneshot_s, 2),
        "imports_s": round(imports_s, 2),
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available()
        else None,
        "peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "calibration_token_digest": digest}), flush=True)
    return 0


def run_direct(model: Path, out: Path, recipe_yaml: Path, calib: Path, num_samples: int,
               max_seq_length: int, python: str) -> dict[str, Any]:
    """Start the direct worker in a fresh process and time it from the outside."""
    argv = [python, str(Path(__file__).resolve()), "--direct-worker", "--model", str(model),
            "--out", str(out), "--recipe-yaml", str(recipe_yaml), "--calibration", str(calib),
            "--num-samples", str(num_samples), "--max-seq-length", str(max_seq_length)]
    # keep an inherited PYTHONPATH: llmcompressor may itself be installed there (--target)
    inherited = os.environ.get("PYTHONPATH")
    pythonpath = str(REPO / "python") + (os.pathsep + inherited if inherited else "")
    env = {**os.environ, "PYTHONPATH": pythonpath, "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"direct run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "job_elapsed_s": data["elapsed_s"],
            "oneshot_s": data["oneshot_s"], "imports_s": data["imports_s"],
            "peak_gpu_bytes": data["peak_gpu_bytes"],
            "peak_rss_bytes": data["peak_rss_bytes"],
            "calibration_token_digest": data["calibration_token_digest"]}


def overhead_parts(model: Path, python: str, digest_s: float | None) -> dict[str, float]:
    """What the stage adds before the job starts: the model digest and the version probe.

    ``digest_s`` is the digest's time when it was already measured (not hashed again).
    """
    from modelgate.quantize import model_digest, probe_tool_versions

    if digest_s is None:
        t = time.monotonic()
        model_digest(model)
        digest_s = time.monotonic() - t
    t = time.monotonic()
    probe_tool_versions(python)
    return {"model_digest_s": round(digest_s, 2),
            "version_probe_s": round(time.monotonic() - t, 2)}


def _gib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / GIB:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    """Build (or take) a model, run both paths ``--repeats`` times, print JSON + a summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--geometry", choices=["tiny", "nemotron-9b"], default="tiny")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", type=Path, help="use this model directory instead of building one")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--recipe", default="w4a16")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds; the order alternates (ours,direct / direct,ours)")
    ap.add_argument("--mamba-kernels", action="store_true",
                    help="build the model with use_mamba_kernels=True (needs mamba_ssm)")
    ap.add_argument("--digest-from-model-stage", action="store_true",
                    help="hash the model once before timing and pass it, as the pipeline does "
                         "when the model stage's digest is handed to the quantize stage")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/modelgate-bench-quantize"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python with llmcompressor for both paths (default: this one)")
    ap.add_argument("--out-json", type=Path, help="also write the JSON results here")
    # the direct worker's own arguments (internal)
    ap.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--recipe-yaml", help=argparse.SUPPRESS)
    ap.add_argument("--calibration", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.direct_worker:
        return direct_worker(args)

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both paths' child processes inherit it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from modelgate.recipes import build_recipe

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"geometry": args.geometry, "device": args.device,
                               "num_samples": args.num_samples,
                               "max_seq_length": args.max_seq_length,
                               "group_size": args.group_size, "recipe": args.recipe}
    model = args.model
    if model is None:
        model = work / f"model-{args.geometry}"
        if not (model / "config.json").is_file():
            print(f"building the {args.geometry} model in {model} ...", file=sys.stderr)
            results["build"] = build_model(model, args.geometry, args.device, args.mamba_kernels)
    results["model"] = str(model)
    results["model_bytes"] = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    calib = write_calibration(work / "calibration.jsonl", args.num_samples, args.max_seq_length)
    recipe = build_recipe(args.recipe, group_size=args.group_size)
    recipe_yaml = work / "recipe.yaml"
    recipe_yaml.write_text(recipe.to_yaml())

    source_digest = None
    if args.digest_from_model_stage:
        from modelgate.quantize import model_digest

        t = time.monotonic()
        source_digest = model_digest(model)
        results["model_digest_s"] = round(time.monotonic() - t, 2)
    results["digest_from_model_stage"] = bool(source_digest)
    rounds = []
    for r in range(args.repeats):
        order = ("ours", "direct") if r % 2 == 0 else ("direct", "ours")
        row: dict[str, Any] = {"order": list(order)}
        for which in order:
            # the previous run's checkpoint (GBs) is still being written back to disk: let it
            # finish here, untimed, or it slows whichever run comes next
            os.sync()
            print(f"round {r + 1}/{args.repeats}: {which} ...", file=sys.stderr, flush=True)
            if which == "ours":
                store = work / f"store-{r}"
                shutil.rmtree(store, ignore_errors=True)
                row["ours"] = run_ours(model, store, args.recipe, args.group_size, calib,
                                       args.num_samples, args.max_seq_length, args.python,
                                       source_digest)
                shutil.rmtree(store, ignore_errors=True)
            else:
                out = work / f"direct-{r}"
                shutil.rmtree(out, ignore_errors=True)
                row["direct"] = run_direct(model, out, recipe_yaml, calib, args.num_samples,
                                           args.max_seq_length, args.python)
                shutil.rmtree(out, ignore_errors=True)
        row["ratio"] = round(row["ours"]["wall_s"] / row["direct"]["wall_s"], 4)
        row["same_tokens"] = (row["ours"]["calibration_token_digest"]
                              == row["direct"]["calibration_token_digest"])
        rounds.append(row)
        # each round as it ends: a run cut short by a time limit still leaves its numbers
        print("round-result " + json.dumps(row), file=sys.stderr, flush=True)
        if args.out_json:
            args.out_json.write_text(json.dumps({**results, "rounds": rounds}, indent=2) + "\n")
    results["rounds"] = rounds
    results["overhead_parts"] = overhead_parts(model, args.python,
                                               results.get("model_digest_s"))
    results["ratio_median"] = round(statistics.median(r["ratio"] for r in rounds), 4)
    # total over all rounds: less sensitive than the median to one round's noise
    results["ratio_of_totals"] = round(sum(r["ours"]["wall_s"] for r in rounds)
                                       / sum(r["direct"]["wall_s"] for r in rounds), 4)
    results["overhead_goal_met"] = results["ratio_median"] < 1.05
    print(json.dumps(results, indent=2))
    if args.out_json:
        args.out_json.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nquantize bench: {args.geometry} on {args.device}, {args.recipe} group "
          f"{args.group_size}, {args.num_samples} x {args.max_seq_length} calibration tokens, "
          f"model {results['model_bytes'] / GIB:.2f} GiB", file=sys.stderr)
    for i, r in enumerate(rounds, 1):
        o, d = r["ours"], r["direct"]
        print(f"  round {i}: ours {o['wall_s']:.1f} s (job {o['job_elapsed_s']} s), direct "
              f"{d['wall_s']:.1f} s (oneshot {d['oneshot_s']} s), ratio {r['ratio']:.3f}, "
              f"same tokens: {r['same_tokens']}", file=sys.stderr)
        print(f"           ours outside the job's work: {o['to_first_progress_s']} s to its "
              f"first line (imports {o['job_imports_s']} s), {o['after_last_progress_s']} s "
              f"after its last; direct imports {d['imports_s']} s", file=sys.stderr)
        print(f"           peak GPU ours {_gib(o['peak_gpu_bytes'])} / direct "
              f"{_gib(d['peak_gpu_bytes'])}; peak RSS ours {_gib(o['peak_rss_bytes'])} / "
              f"direct {_gib(d['peak_rss_bytes'])}", file=sys.stderr)
    parts = results["overhead_parts"]
    print(f"  stage overhead parts: model digest {parts['model_digest_s']} s, version probe "
          f"{parts['version_probe_s']} s", file=sys.stderr)
    verdict = "met" if results["overhead_goal_met"] else "NOT met"
    print(f"  ratio ours/direct: median {results['ratio_median']:.3f}, of the totals "
          f"{results['ratio_of_totals']:.3f}: goal < 1.05 {verdict}", file=sys.stderr)
    if not args.keep and args.model is None and args.geometry == "tiny":
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
