"""Accuracy through the served endpoint with lm-eval 0.4 (``lm-eval run``).

Tasks are presets: an lm-eval task name plus how to score and generate. Two small offline
tasks ship in ``modelgate/data/tasks`` (local YAML + JSONL, run with ``--include_path``) so
CI and laptops measure accuracy without the Hugging Face hub; the seed's benchmarks
(GSM8K, MATH-500, GPQA-Diamond, AIME25) are presets over lm-eval's own task definitions
and need the hub.

``results.json`` keeps a 0/1 score per sample keyed by lm-eval's ``doc_id`` (``doc_id:r``
for repeat ``r`` when a task is repeated), so the gate can pair samples across variants.
lm-eval's own output (results + per-sample logs) is kept under ``lm_eval/``; such a native
output directory is also read directly (``read_lm_eval_native``), e.g. a baseline measured
by hand with lm-eval.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError, ToolError
from modelgate.process import log_tail

# Reasoning models need room to think: AIME-style answers come after thousands of tokens.
REASONING_MAX_TOKENS = 32768


@dataclass(frozen=True)
class AccuracyTask:
    """One accuracy benchmark: which lm-eval task, how it is generated and scored."""

    name: str
    lm_eval_task: str
    metric: str  # "exact_match" | "acc"
    # lm-eval filter whose per-sample score we keep (a task may define several).
    filter: str = "none"
    # "completions" (raw prompt; supports loglikelihood tasks) or "chat" (chat template
    # applied by the server, needed for instruct/reasoning models).
    api: str = "completions"
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    num_fewshot: int | None = None
    # Small tasks are run this many times (seeds 0..repeats-1, sampled) and every repeat
    # counts as its own 0/1 sample.
    repeats: int = 1
    system_instruction: str | None = None
    local: bool = False  # defined in modelgate/data/tasks (offline)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


def _reasoning(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generation settings for reasoning models (NVIDIA's recommendation for Nemotron
    Nano v2 in reasoning mode: temperature 0.6, top_p 0.95) with thinking switched on
    through the chat template."""
    return {
        "max_gen_toks": REASONING_MAX_TOKENS,
        "temperature": 0.6,
        "top_p": 0.95,
        "do_sample": True,
        "chat_template_kwargs": {"enable_thinking": True},
        **(extra or {}),
    }


PRESETS: dict[str, AccuracyTask] = {
    "modelgate_arith": AccuracyTask(
        name="modelgate_arith", lm_eval_task="modelgate_arith", metric="exact_match",
        filter="strip", local=True,
        description="50 short arithmetic questions, greedy, exact match (offline)",
    ),
    "modelgate_choice": AccuracyTask(
        name="modelgate_choice", lm_eval_task="modelgate_choice", metric="acc",
        local=True,
        description="40 number-pattern multiple-choice questions by loglikelihood (offline)",
    ),
    "gsm8k": AccuracyTask(
        name="gsm8k", lm_eval_task="gsm8k_cot_zeroshot", metric="exact_match",
        filter="flexible-extract", api="chat", num_fewshot=0,
        gen_kwargs=_reasoning({"max_gen_toks": 16384}),
        description="GSM8K test (1319), zero-shot CoT, last number extracted",
    ),
    "math500": AccuracyTask(
        name="math500", lm_eval_task="hendrycks_math500", metric="exact_match",
        api="chat", num_fewshot=0, gen_kwargs=_reasoning(),
        description="MATH-500 (HuggingFaceH4/MATH-500), answer equivalence",
    ),
    "gpqa_diamond": AccuracyTask(
        name="gpqa_diamond", lm_eval_task="gpqa_diamond_cot_zeroshot", metric="exact_match",
        filter="flexible-extract", api="chat", num_fewshot=0, gen_kwargs=_reasoning(),
        repeats=4,
        description="GPQA-Diamond (198, gated dataset: needs HF_TOKEN), CoT, 4 repeats",
    ),
    "aime25": AccuracyTask(
        name="aime25", lm_eval_task="aime25", metric="exact_match", api="chat",
        num_fewshot=0, gen_kwargs=_reasoning(), repeats=8,
        description="AIME 2025 (30 problems), 8 sampled repeats",
    ),
}


def get_task(name: str) -> AccuracyTask:
    """Return the preset ``name``."""
    if name not in PRESETS:
        raise ModelGateError(f"unknown accuracy task {name!r}", field="tasks",
                             fix=f"use one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def local_tasks_dir() -> Path:
    """The directory holding ModelGate's offline lm-eval tasks."""
    return Path(str(resources.files("modelgate").joinpath("data/tasks")))


def _api_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    for suffix in ("/v1/completions", "/v1/chat/completions", "/v1"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def lm_eval_command(
    task: AccuracyTask,
    base_url: str,
    model_name: str,
    tokenizer_path: str,
    output_path: str,
    lm_eval_bin: str = "lm-eval",
    limit: float | None = None,
    repeat: int = 0,
    concurrency: int = 1,
    max_length: int | None = None,
) -> list[str]:
    """Return the ``lm-eval run`` argv for one task (one repeat) against a served model.

    Model and generation arguments go as JSON (lm-eval's parser takes a JSON object), so
    nested values such as ``chat_template_kwargs`` survive.
    """
    root = _api_root(base_url)
    chat = task.api == "chat"
    model_args: dict[str, Any] = {
        "model": model_name,
        "base_url": f"{root}/v1/chat/completions" if chat else f"{root}/v1/completions",
        "tokenizer": tokenizer_path,
        "tokenizer_backend": "huggingface",
        # vLLM takes token ids as a completions prompt, which loglikelihood scoring needs;
        # chat requests must be text.
        "tokenized_requests": not chat,
        "num_concurrent": concurrency,
        "max_retries": 3,
        "seed": 1234 + repeat,
    }
    if max_length:
        model_args["max_length"] = max_length
    argv = [
        lm_eval_bin, "run",
        "--model", "local-chat-completions" if chat else "local-completions",
        "--model_args", json.dumps(model_args),
        "--tasks", task.lm_eval_task,
        "--output_path", output_path,
        "--log_samples",
        "--seed", str(repeat),
    ]
    if task.local:
        argv += ["--include_path", str(local_tasks_dir())]
    if chat:
        argv += ["--apply_chat_template"]
    if task.gen_kwargs:
        argv += ["--gen_kwargs", json.dumps(task.gen_kwargs)]
    if task.num_fewshot is not None:
        argv += ["--num_fewshot", str(task.num_fewshot)]
    if task.system_instruction:
        argv += ["--system_instruction", task.system_instruction]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return argv


# ---------------------------------------------------------------------------------------
# Reading lm-eval's output


def _latest(directory: Path, pattern: str) -> Path:
    found = sorted(directory.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ToolError(f"lm-eval wrote no {pattern} under {directory}",
                        fix="read lm_eval.log in the same directory")
    return found[-1]


def sample_value(value: Any) -> float | None:
    """A per-sample metric value as a number, or None when it is not one (lm-eval's
    corpus-level metrics such as ``f1``, ``bleu`` or ``mcc`` log a (reference, prediction)
    pair per sample and aggregate the pairs, so a single sample has no score)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_samples(lines: list[dict[str, Any]], metric: str, filter_name: str,
                  suffix: str = "") -> dict[str, float]:
    """Per-sample scores {doc_id[suffix]: 0.0|1.0} for one filter of one task (pure).

    When the wanted filter is absent and the task has only one, that one is used. A metric
    whose per-sample values are not numbers (corpus-level ``f1`` and the like) gives no
    per-sample scores: an empty mapping, and the caller falls back to lm-eval's aggregate.
    """
    filters = {str(line.get("filter", "none")) for line in lines}
    wanted = filter_name if filter_name in filters else (
        next(iter(filters)) if len(filters) == 1 else None)
    if wanted is None:
        raise ModelGateError(
            f"filter {filter_name!r} not among the task's filters {sorted(filters)}",
            field="filter", fix="set the task preset's filter to one of those")
    out: dict[str, float] = {}
    for line in lines:
        if str(line.get("filter", "none")) != wanted:
            continue
        if metric not in line:
            raise ModelGateError(f"sample has no metric {metric!r}", field="metric",
                                 fix="set the task preset's metric to one the task reports")
        value = sample_value(line[metric])
        if value is None:
            return {}
        out[f"{line['doc_id']}{suffix}"] = value
    return out


def binary_f1(pairs: list[tuple[Any, Any]]) -> float | None:
    """lm-eval's ``f1`` aggregation (sklearn ``f1_score(golds, preds)``, positive label 1)
    over (gold, prediction) pairs of 0/1 labels; None when the labels are not 0/1."""
    values = [v for pair in pairs for v in pair]
    if not pairs or not all(isinstance(v, int | float) and v in (0, 1) for v in values):
        return None
    tp = sum(1 for g, p in pairs if g == 1 and p == 1)
    fp = sum(1 for g, p in pairs if g != 1 and p == 1)
    fn = sum(1 for g, p in pairs if g == 1 and p != 1)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def read_lm_eval_output(output_dir: Path, task: AccuracyTask, suffix: str = ""
                        ) -> tuple[dict[str, float], float | None]:
    """Per-sample scores and lm-eval's own aggregate from one lm-eval output directory."""
    samples_file = _latest(output_dir, f"samples_{task.lm_eval_task}_*.jsonl")
    lines = [json.loads(x) for x in samples_file.read_text().splitlines() if x.strip()]
    samples = parse_samples(lines, task.metric, task.filter, suffix)
    results = json.loads(_latest(output_dir, "results_*.json").read_text())
    agg = (results.get("results") or {}).get(task.lm_eval_task, {})
    value = agg.get(f"{task.metric},{task.filter}")
    if value is None:  # the single-filter fallback of parse_samples
        value = next((v for k, v in agg.items()
                      if k.startswith(f"{task.metric},") and "_stderr" not in k), None)
    return samples, (float(value) if isinstance(value, int | float) else None)


_NATIVE_RESULTS = "results_*.json"


def _results_files(directory: Path) -> list[Path]:
    """lm-eval results files under ``directory`` (itself or a model-name subfolder)."""
    found = [p for p in directory.rglob(_NATIVE_RESULTS) if p.is_file()]
    return sorted(found, key=lambda p: (p.name, str(p)))


def is_lm_eval_output(directory: str | Path) -> bool:
    """True when ``directory`` holds lm-eval's own output (``results_*.json``)."""
    d = Path(directory)
    return d.is_dir() and bool(_results_files(d))


def _task_metric(task: str, results: dict[str, Any]) -> tuple[str, str, Any] | None:
    """(metric, filter, aggregate) of a task in an lm-eval results file: the config's first
    metric, with the first filter that reports it."""
    agg = (results.get("results") or {}).get(task) or {}
    keys = [k for k in agg if "," in k and "_stderr" not in k]
    if not keys:
        return None
    cfg = (results.get("configs") or {}).get(task) or {}
    wanted = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
    for metric in [*(w for w in wanted if isinstance(w, str)), *(k.split(",")[0] for k in keys)]:
        for key in keys:
            name, __, flt = key.partition(",")
            if name == metric:
                return metric, flt, agg[key]
    return None


def _aggregation(task: str, metric: str, results: dict[str, Any]) -> str | None:
    cfg = (results.get("configs") or {}).get(task) or {}
    for m in cfg.get("metric_list") or []:
        if isinstance(m, dict) and m.get("metric") == metric:
            agg = m.get("aggregation")
            return agg if isinstance(agg, str) else None
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = []
    for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelGateError(f"{path} line {i} is not JSON: {exc}", field="accuracy",
                                 fix="pass lm-eval's samples_<task>_<time>.jsonl unchanged") \
                from exc
        if not isinstance(line, dict) or "doc_id" not in line:
            raise ModelGateError(f"{path} line {i} is not an lm-eval sample (no doc_id)",
                                 field="accuracy", fix="pass lm-eval's --log_samples output")
        lines.append(line)
    return lines


def read_lm_eval_native(directory: str | Path) -> dict[str, Any]:
    """ModelGate accuracy results from lm-eval's own output directory (lm-eval 0.4 layout:
    ``results_<time>.json`` + ``samples_<task>_<time>.jsonl``, possibly in a model-name
    subfolder), so a baseline measured by hand with lm-eval is a valid stored baseline.

    Per-sample numeric scores (acc, exact_match, ...) are kept for the gate's paired
    comparison. A metric lm-eval aggregates at corpus level from per-sample pairs (``f1``,
    ``bleu``, ``mcc``, ...) has no per-sample score: binary ``f1`` is recomputed from the pairs
    the way lm-eval does; otherwise lm-eval's aggregate is used, with a note saying so.
    The latest results file wins for a task measured more than once.
    """
    root = Path(directory)
    files = _results_files(root)
    if not files:
        raise ModelGateError(
            f"{root} holds no lm-eval results_*.json", field="accuracy",
            fix="pass lm-eval's --output_path directory (results_<time>.json + "
                "samples_<task>_<time>.jsonl from --log_samples)")
    tasks: dict[str, Any] = {}
    for path in files:
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelGateError(f"cannot read lm-eval results {path}: {exc}",
                                 field="accuracy", fix="pass lm-eval's results file unchanged") \
                from exc
        if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
            raise ModelGateError(f"{path} is not an lm-eval results file (no 'results' object)",
                                 field="accuracy", fix="pass lm-eval's --output_path directory")
        stamp = path.name[len("results_"):-len(".json")]
        for task in results["results"]:
            found = _task_metric(task, results)
            samples_file = path.parent / f"samples_{task}_{stamp}.jsonl"
            if found is None:
                continue  # a group's summary row, or a task without a metric
            metric, flt, aggregate = found
            entry: dict[str, Any] = {
                "metric": metric, "filter": flt, "lm_eval_task": task,
                "lm_eval_score": sample_value(aggregate), "source": str(path),
                "samples": {},
            }
            notes = []
            if samples_file.is_file():
                lines = [x for x in _read_jsonl(samples_file)
                         if str(x.get("filter", flt)) == flt and metric in x]
                values = [(str(x["doc_id"]), sample_value(x[metric])) for x in lines]
                if values and all(v is not None for __, v in values):
                    entry["samples"] = {d: float(v) for d, v in values if v is not None}
                elif lines:
                    pairs = [tuple(x[metric]) for x in lines
                             if isinstance(x[metric], list) and len(x[metric]) == 2]
                    f1 = (binary_f1(list(pairs))
                          if metric == "f1" and _aggregation(task, metric, results) == "f1"
                          else None)
                    if f1 is not None:
                        entry["lm_eval_score"] = f1
                        notes.append(f"{metric} recomputed from {len(pairs)} (gold, prediction)"
                                     " pairs as lm-eval aggregates it")
                    else:
                        notes.append(
                            f"{metric} is aggregated by the task over (reference, prediction) "
                            "pairs, not per sample: lm-eval's aggregate "
                            f"{entry['lm_eval_score']} is used and no paired per-sample "
                            "comparison is possible")
                    entry["n_logged"] = len(lines)
            else:
                notes.append(f"no {samples_file.name} (run lm-eval with --log_samples): "
                             "lm-eval's aggregate only")
            n = len(entry["samples"])
            entry["n"] = n or int(((results.get("n-samples") or {}).get(task) or {})
                                  .get("effective") or 0)
            entry["score"] = (sum(entry["samples"].values()) / n if n
                              else entry["lm_eval_score"])
            if notes:
                entry["note"] = "; ".join(notes)
            tasks[task] = entry
    if not tasks:
        raise ModelGateError(f"lm-eval results under {root} name no task with a metric",
                             field="accuracy", fix="pass lm-eval's --output_path directory")
    return {"tasks": tasks, "format": "lm-eval native", "source": str(root)}


# ---------------------------------------------------------------------------------------
# Running


def resolve_lm_eval(lm_eval_bin: str | None) -> str:
    """Find the lm-eval executable: the given path, else ``lm-eval`` on PATH."""
    candidate = lm_eval_bin or shutil.which("lm-eval")
    if not candidate or not (Path(candidate).is_file() and os.access(candidate, os.X_OK)):
        raise ModelGateError(
            f"lm-eval executable not found ({lm_eval_bin or 'lm-eval on PATH'})",
            field="lm_eval", fix="install lm-eval[api]==0.4.13 and pass its bin/lm-eval")
    return candidate


def run_accuracy(
    tasks: list[str | AccuracyTask],
    base_url: str,
    model_name: str,
    tokenizer_path: str,
    out_dir: str | Path,
    lm_eval_bin: str | None = None,
    limit: float | None = None,
    concurrency: int = 1,
    max_length: int | None = None,
    repeats: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run each task through lm-eval against the server; write ``out_dir/results.json``.

    ``out_dir`` is ``<variant>/accuracy``; lm-eval's own output goes to
    ``out_dir/lm_eval/<task>[/r<k>]``. ``repeats`` overrides the presets' repeat counts
    (e.g. 1 for a quick look). Returns the results dict plus wall times.
    """
    exe = resolve_lm_eval(lm_eval_bin)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = [get_task(t) if isinstance(t, str) else t for t in tasks]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results: dict[str, Any] = {"tasks": {}}
    timings: dict[str, float] = {}
    for task in resolved:
        n_repeats = repeats if repeats is not None else task.repeats
        if repeats is not None and n_repeats != task.repeats:
            task = replace(task, repeats=n_repeats)
        task_env = dict(env)
        if task.local:  # never reach for the hub for a local task
            task_env.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
        samples: dict[str, float] = {}
        lm_eval_scores: list[float] = []
        started = time.monotonic()
        for r in range(n_repeats):
            run_dir = out / "lm_eval" / task.name / (f"r{r}" if n_repeats > 1 else "")
            run_dir.mkdir(parents=True, exist_ok=True)
            argv = lm_eval_command(task, base_url, model_name, tokenizer_path, str(run_dir),
                                   exe, limit, r, concurrency, max_length)
            (run_dir / "command.json").write_text(json.dumps({"argv": argv}, indent=2))
            if progress:
                print(f"[accuracy] {task.name} repeat {r + 1}/{n_repeats}: "
                      f"lm-eval {task.lm_eval_task}", file=sys.stderr, flush=True)
            log = run_dir / "lm_eval.log"
            with log.open("w") as f:
                # cwd: local task YAMLs name their JSONL relative to the tasks directory
                proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=task_env,
                                      cwd=str(local_tasks_dir()), check=False)
            if proc.returncode != 0:
                raise ToolError(f"lm-eval ({task.name}) exited with {proc.returncode}:\n"
                                f"{log_tail(log, 40)}", fix=f"see the full log: {log}")
            suffix = f":{r}" if n_repeats > 1 else ""
            got, agg = read_lm_eval_output(run_dir, task, suffix)
            samples.update(got)
            if agg is not None:
                lm_eval_scores.append(agg)
        timings[task.name] = round(time.monotonic() - started, 1)
        n = len(samples)
        lm_eval_mean = sum(lm_eval_scores) / len(lm_eval_scores) if lm_eval_scores else None
        results["tasks"][task.name] = {
            "metric": task.metric,
            # a corpus-level metric (f1, bleu, ...) has no per-sample scores: lm-eval's own
            # aggregate stands in, and the gate says it cannot pair samples
            "score": sum(samples.values()) / n if n else lm_eval_mean,
            "n": n,
            "samples": samples,
            "lm_eval_task": task.lm_eval_task,
            "filter": task.filter,
            "repeats": n_repeats,
            "lm_eval_score": lm_eval_mean,
            "limit": limit,
        }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return {**results, "wall_s": timings, "results": str(out / "results.json")}


# ---------------------------------------------------------------------------------------
# CLI


def _cmd_accuracy(args: Any) -> int:
    from modelgate.cli import emit

    out_dir = Path(args.out) / args.variant / "accuracy"
    res = run_accuracy(args.tasks, args.base_url, args.model, args.tokenizer, out_dir,
                       lm_eval_bin=args.lm_eval, limit=args.limit,
                       concurrency=args.concurrency, max_length=args.max_length,
                       repeats=args.repeats)
    emit({"results": res["results"], "wall_s": res["wall_s"],
          "tasks": {k: {"metric": v["metric"], "score": v["score"], "n": v["n"]}
                    for k, v in res["tasks"].items()}})
    return 0


def _cmd_presets(args: Any) -> int:
    from modelgate.cli import emit

    emit({name: {**task.to_dict(),
                 "argv": lm_eval_command(task, args.base_url, args.model, args.tokenizer,
                                         f"<out>/lm_eval/{name}")}
          for name, task in PRESETS.items()})
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``accuracy`` and ``accuracy-presets``."""
    p = subparsers.add_parser("accuracy", help="run lm-eval tasks against a served model")
    p.add_argument("--base-url", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--tokenizer", required=True, help="checkpoint directory (its tokenizer)")
    p.add_argument("--tasks", nargs="+", default=["modelgate_arith", "modelgate_choice"],
                   choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--variant", required=True, help="variant name (results in OUT/VARIANT)")
    p.add_argument("--lm-eval", default=None, help="path to the lm-eval executable")
    p.add_argument("--limit", type=float, default=None, help="samples per task (for a try)")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent requests")
    p.add_argument("--max-length", type=int, default=None, help="server's max model length")
    p.add_argument("--repeats", type=int, default=None, help="override the presets' repeats")
    p.set_defaults(func=_cmd_accuracy)

    s = subparsers.add_parser("accuracy-presets", help="show the task presets + commands")
    s.add_argument("--base-url", default="http://127.0.0.1:8000")
    s.add_argument("--model", default="<model>")
    s.add_argument("--tokenizer", default="<checkpoint>")
    s.set_defaults(func=_cmd_presets)
