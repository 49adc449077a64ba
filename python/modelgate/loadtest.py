"""Load tests with GuideLLM 0.8: build the command, run it, normalize its report.

Reports of every layout since GuideLLM 0.3 are read (see ``report_format``).

GuideLLM 0.8 replaced ``guidellm benchmark --rate-type ...`` with ``guidellm run`` whose
options take ``kind=...,key=value`` strings (lists by index: ``rate[0]=1,rate[1]=2``).
The raw report is kept beside a normalized ``results.json`` that the gate reads: per rate,
request counts, percentiles, throughput and the per-request samples the gate's noise-aware
comparisons need.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError, ToolError
from modelgate.process import affinity_preexec, log_tail

# GuideLLM metric names -> the names in our normalized results (and their unit scale).
# request_latency is in seconds; the others are in milliseconds already.
METRIC_MAP: dict[str, str] = {
    "request_latency": "request_latency_s",
    "time_to_first_token_ms": "ttft_ms",
    "inter_token_latency_ms": "itl_ms",
    "time_per_output_token_ms": "tpot_ms",
}
PERCENTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class LoadProfile:
    """One GuideLLM load sweep: constant-rate benchmarks over synthetic text."""

    name: str
    rates: tuple[float, ...]
    max_seconds: float
    prompt_tokens: int
    prompt_tokens_stdev: int
    prompt_tokens_min: int
    prompt_tokens_max: int
    output_tokens: int
    output_tokens_stdev: int
    output_tokens_min: int
    output_tokens_max: int
    samples: int
    max_requests: int | None = None
    # Stop a rate early when GuideLLM detects over-saturation (queue growing without bound);
    # "all" also skips the higher rates, which would only saturate harder.
    over_saturation: bool = True
    over_saturation_scope: str = "all"
    max_error_rate: float | None = 0.5
    # Plain completions: the prompt token counts are then exactly what the profile says
    # (a chat template would add its own tokens).
    request_format: str = "/v1/completions"
    seed: int = 42
    # GuideLLM's client worker processes (its default is 10); each is a Python process
    # importing GuideLLM, so on a 2-core CI host fewer start much faster.
    worker_processes: int | None = None
    # Any further `guidellm run` arguments, appended verbatim (e.g. "--metrics",
    # "kind=generative,sample_size=200").
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for manifests and JSON output)."""
        d = asdict(self)
        d["rates"] = list(self.rates)
        d["extra_args"] = list(self.extra_args)
        return d


PRESETS: dict[str, LoadProfile] = {
    # The seed workflow: constant 1..9 RPS, 512 +/- 51 prompt and 256 +/- 26 output tokens.
    "seed": LoadProfile(
        name="seed",
        rates=tuple(float(r) for r in range(1, 10)),
        max_seconds=900.0,
        prompt_tokens=512,
        prompt_tokens_stdev=51,
        prompt_tokens_min=410,
        prompt_tokens_max=614,
        output_tokens=256,
        output_tokens_stdev=26,
        output_tokens_min=205,
        output_tokens_max=307,
        samples=1000,
    ),
    # CI on a tiny CPU model: two short rates, small prompts; well under a minute per rate.
    "ci": LoadProfile(
        name="ci",
        rates=(1.0, 2.0),
        max_seconds=20.0,
        prompt_tokens=64,
        prompt_tokens_stdev=8,
        prompt_tokens_min=48,
        prompt_tokens_max=80,
        output_tokens=32,
        output_tokens_stdev=4,
        output_tokens_min=24,
        output_tokens_max=40,
        samples=200,
        over_saturation=False,
        worker_processes=2,
    ),
}


def get_profile(name: str, **overrides: Any) -> LoadProfile:
    """Return preset ``name``, with any field overridden (``rates``, ``max_seconds``, ...)."""
    if name not in PRESETS:
        raise ModelGateError(
            f"unknown load profile {name!r}",
            field="profile",
            fix=f"use one of: {', '.join(sorted(PRESETS))}",
        )
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "rates" in clean:
        clean["rates"] = tuple(float(r) for r in clean["rates"])
    if "extra_args" in clean:
        clean["extra_args"] = tuple(clean["extra_args"])
    return replace(PRESETS[name], **clean)


def _kv(kind: str, **items: Any) -> str:
    """Render GuideLLM's ``kind=...,key=value`` argument string (lists by index)."""
    parts = [f"kind={kind}"]
    for key, value in items.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            parts.extend(f"{key}[{i}]={_scalar(v)}" for i, v in enumerate(value))
        else:
            parts.append(f"{key}={_scalar(value)}")
    return ",".join(parts)


def _scalar(value: Any) -> str:
    """One value as GuideLLM parses it (YAML scalars); commas would split the string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    text = str(value)
    if "," in text:
        raise ModelGateError(
            f"GuideLLM argument value {text!r} contains a comma",
            fix="use a path or name without commas",
        )
    return text


def guidellm_command(
    profile: LoadProfile,
    target: str,
    model_name: str,
    processor_path: str,
    output_path: str,
    guidellm_bin: str = "guidellm",
) -> list[str]:
    """Return the ``guidellm run`` argv for ``profile`` against an OpenAI-style ``target``.

    ``target`` is the server's base URL (with or without ``/v1``); ``processor_path`` is the
    served checkpoint's directory, whose tokenizer GuideLLM uses to size synthetic prompts.
    """
    if not profile.rates:
        raise ModelGateError("load profile has no rates", field="rates", fix="give >= 1 rate")
    base = target.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    argv = [
        guidellm_bin,
        "run",
        "--backend",
        _kv(
            "openai_http",
            target=base,
            model=model_name,
            request_format=profile.request_format,
        ),
        # A rate list in --profile is deprecated in GuideLLM 0.8 (FutureWarning, in favour
        # of --override profile.rate) but is what 0.8.1 runs as one sweep with one report.
        "--profile",
        _kv("constant", rate=list(profile.rates)),
        "--data",
        _kv(
            "synthetic_text",
            prompt_tokens=profile.prompt_tokens,
            prompt_tokens_stdev=profile.prompt_tokens_stdev,
            prompt_tokens_min=profile.prompt_tokens_min,
            prompt_tokens_max=profile.prompt_tokens_max,
            output_tokens=profile.output_tokens,
            output_tokens_stdev=profile.output_tokens_stdev,
            output_tokens_min=profile.output_tokens_min,
            output_tokens_max=profile.output_tokens_max,
        ),
        "--data-loader",
        _kv("pytorch", samples=profile.samples),
        "--tokenizer",
        _kv("huggingface_auto", model=processor_path),
        "--seed",
        _kv("static", value=profile.seed),
        "--constraint",
        _kv("max_duration", seconds=profile.max_seconds),
    ]
    if profile.max_requests:
        argv += ["--constraint", _kv("max_requests", count=profile.max_requests)]
    if profile.over_saturation:
        argv += [
            "--constraint",
            _kv("over_saturation", stopping_scope=profile.over_saturation_scope),
        ]
    if profile.max_error_rate is not None:
        argv += ["--constraint", _kv("max_error_rate", rate=profile.max_error_rate)]
    argv += [
        "--output",
        _kv("json", path=output_path),
        # The live (rich) progress display is unreadable in a log; keep the plain updates.
        "--disable-console-interactive",
    ]
    argv += list(profile.extra_args)
    return argv


def guidellm_env(profile: LoadProfile) -> dict[str, str]:
    """Environment settings GuideLLM reads for ``profile`` (``GUIDELLM__*``)."""
    env = {}
    if profile.worker_processes:
        env["GUIDELLM__MAX_WORKER_PROCESSES"] = str(profile.worker_processes)
    return env


# ---------------------------------------------------------------------------------------
# Normalizing the report


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _stats(dist: dict[str, Any] | None) -> dict[str, float | None]:
    """mean + percentiles (+ std_dev, count, p25/p75) from one GuideLLM distribution summary.

    GuideLLM 0.3 has no ``p50`` among its percentiles (the median is ``median``); p25/p75,
    std_dev and count are kept so the gate can decide from the summary when a report holds
    no per-request samples.
    """
    dist = dist or {}
    pct = dist.get("percentiles") or {}
    out: dict[str, float | None] = {"mean": _num(dist.get("mean"))}
    for p in PERCENTILES:
        out[p] = _num(pct.get(p))
    if out["p50"] is None:
        out["p50"] = _num(dist.get("median"))
    for extra in ("p25", "p75"):
        out[extra] = _num(pct.get(extra))
    out["std_dev"] = _num(dist.get("std_dev"))
    out["count"] = _num(dist.get("count"))
    return out


def _request_sample(req: dict[str, Any], metric: str) -> float | None:
    """One request's value of ``metric`` (a GuideLLM request-stats property), if known."""
    value = req.get(metric)
    if value is None and metric == "request_latency":
        # 0.4+: info.timings; 0.3: scheduler_info (request_start / request_end) or the
        # request's own start_time / end_time
        for timings in ((req.get("info") or {}).get("timings") or {},
                        req.get("scheduler_info") or {}):
            start, end = timings.get("request_start"), timings.get("request_end")
            if isinstance(start, int | float) and isinstance(end, int | float):
                value = end - start
                break
    return _num(value)


def _benchmarks(raw: Any) -> list[dict[str, Any]]:
    """The report's benchmarks (one per rate), or a clear error for what is not a report."""
    benchmarks = raw.get("benchmarks") if isinstance(raw, dict) else None
    if not isinstance(benchmarks, list) or not all(isinstance(b, dict) for b in benchmarks):
        raise ModelGateError(
            "not a GuideLLM report: no 'benchmarks' list of objects",
            field="report",
            fix="pass the JSON file GuideLLM wrote (guidellm benchmark --output-path, or "
                "guidellm run --output kind=json)",
        )
    return benchmarks


# GuideLLM 0.7.4 changed how token events are bounded: numbers from before and after it are
# not comparable (DESIGN.md field notes).
TOKEN_EVENTS_CHANGED = (0, 7, 4)


def _version_tuple(text: Any) -> tuple[int, ...] | None:
    """(major, minor, patch) of a version string such as '0.8.1' or '0.7.4.dev3'."""
    if not isinstance(text, str):
        return None
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts + [0] * (3 - len(parts))) if parts else None


def report_format(raw: dict[str, Any]) -> dict[str, Any]:
    """Which GuideLLM report layout ``raw`` has, and the GuideLLM version when it is known.

    0.3: ``{benchmarks}`` with ``benchmarks[].args``; 0.4: ``{args, benchmarks}``; 0.5-0.6:
    ``metadata.version == 1``; 0.7+: ``metadata.version == 2`` with ``config``. Every layout
    before metadata version 2 is older than 0.7.4, so its side of that boundary is known even
    without a version string (``token_events``: "pre-0.7.4", "0.7.4+" or None).
    """
    _benchmarks(raw)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    schema = meta.get("version")
    version = meta.get("guidellm_version") if isinstance(meta.get("guidellm_version"), str) \
        else None
    if schema == 2 or (schema is None and "config" in raw and "args" not in raw):
        layout = "0.7+"
    elif schema == 1:
        layout = "0.5-0.6"
    elif "args" in raw:
        layout = "0.4"
    else:
        layout = "0.3"
    vt = _version_tuple(version)
    if vt is not None:
        side: str | None = "0.7.4+" if vt >= TOKEN_EVENTS_CHANGED else "pre-0.7.4"
    else:
        side = None if layout == "0.7+" else "pre-0.7.4"
    return {"layout": layout, "guidellm_version": version, "schema_version": schema,
            "token_events": side}


def _strategy(bench: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's scheduling strategy: ``config.strategy`` (0.4+), ``args.strategy`` (0.3)."""
    for holder in (bench.get("config"), bench.get("args")):
        if isinstance(holder, dict) and isinstance(holder.get("strategy"), dict):
            return holder["strategy"]
    return {}


def _rate_header(bench: dict[str, Any]) -> dict[str, Any]:
    """What one benchmark says of itself: rate, profile, duration, what ended it."""
    strategy = _strategy(bench)
    duration = _num(bench.get("duration"))
    if duration is None:
        start, end = _num(bench.get("start_time")), _num(bench.get("end_time"))
        duration = (end - start) if start is not None and end is not None else None
    # Which constraint ended this rate: "max_duration" normally; "over_saturation" means the
    # server could not keep up and the rate's numbers are partial.
    stopped_by = sorted(((bench.get("scheduler_state") or {}).get("end_processing_constraints")
                         or {}).keys())
    kind = str(strategy.get("type_") or strategy.get("kind") or "unknown")
    streams = strategy.get("streams")
    return {
        # Only constant and poisson strategies have an offered rate; a synchronous or
        # throughput benchmark has none (its measured rate is an outcome, not an input).
        "rate": _num(strategy.get("rate")) if kind in ("constant", "poisson") else None,
        "profile": kind,
        "streams": int(streams) if isinstance(streams, int) else None,
        "duration_s": duration,
        "stopped_by": stopped_by,
        "over_saturated": "over_saturation" in stopped_by,
    }


def _request_totals(bench: dict[str, Any]) -> dict[str, int]:
    """successful/errored/incomplete counts: ``metrics.request_totals`` (0.4+) or the
    benchmark's own ``request_totals`` (0.3)."""
    totals = (bench.get("metrics") or {}).get("request_totals") or bench.get("request_totals")
    if not isinstance(totals, dict):
        totals = (bench.get("run_stats") or {}).get("requests_made") or {}
    return {k: int(totals.get(k) or 0) for k in ("successful", "errored", "incomplete")}


def normalize_guidellm_report(raw: dict[str, Any], variant: str) -> dict[str, Any]:
    """Turn a GuideLLM JSON report (any layout since 0.3) into ModelGate's per-rate results.

    Percentiles come from the report's successful-request distributions; the per-request
    samples (successful requests only) are kept so the gate can compute its own
    confidence intervals and paired comparisons. A report written without samples keeps
    ``samples`` empty and ``samples_available: false``: the gate then decides from the
    summary where it can. Note: GuideLLM weights its ITL/TPOT
    distributions by output tokens, while a sample is one request's own mean ITL/TPOT,
    so the samples' mean differs slightly from ``metrics.itl_ms.mean``.
    """
    fmt = report_format(raw)
    rates: list[dict[str, Any]] = []
    for bench in _benchmarks(raw):
        metrics = bench.get("metrics") or {}
        header = _rate_header(bench)
        normalized: dict[str, Any] = {
            "rate": header["rate"],
            "profile": header["profile"],
            "duration_s": header["duration_s"],
            "requests": _request_totals(bench),
            "metrics": {},
            "throughput": {
                "requests_per_s": _num(
                    ((metrics.get("requests_per_second") or {}).get("successful") or {})
                    .get("mean")
                ),
                "output_tokens_per_s": _num(
                    ((metrics.get("output_tokens_per_second") or {}).get("successful") or {})
                    .get("mean")
                ),
            },
            "samples": {},
            "stopped_by": header["stopped_by"],
            "over_saturated": header["over_saturated"],
        }
        if header["streams"] is not None:
            normalized["streams"] = header["streams"]
        successful = ((bench.get("requests") or {}).get("successful")) or []
        for src, dst in METRIC_MAP.items():
            normalized["metrics"][dst] = _stats((metrics.get(src) or {}).get("successful"))
            samples = [_request_sample(r, src) for r in successful if isinstance(r, dict)]
            normalized["samples"][dst] = [s for s in samples if s is not None]
        normalized["samples_available"] = bool(normalized["samples"]["request_latency_s"])
        # one value of every metric per successful request, in the same order: a request's
        # metrics can be read together (the gate's SLO attainment needs that)
        ok = [r for r in successful if isinstance(r, dict)]
        normalized["samples_aligned"] = all(
            len(v) == len(ok) for v in normalized["samples"].values())
        rates.append(normalized)
    rates.sort(key=lambda r: (r["rate"] is None, r["rate"] or 0.0))
    return {"variant": variant, "guidellm": fmt, "rates": rates}


def read_report(path: str | Path) -> dict[str, Any]:
    """Read a GuideLLM JSON report; a missing, non-JSON or non-report file raises
    ModelGateError naming the file and what was expected."""
    p = Path(path)
    expected = "a GuideLLM JSON report (an object with a 'benchmarks' list)"
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelGateError(f"cannot read GuideLLM report {p}: {exc.strerror}",
                             field="report", fix=f"pass {expected}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelGateError(f"{p} is not JSON ({exc}); expected {expected}",
                             field="report", fix="pass the JSON file GuideLLM wrote") from exc
    try:
        _benchmarks(raw)
    except ModelGateError as exc:
        raise ModelGateError(f"{p}: {exc.message}", field="report", fix=exc.fix) from exc
    return raw


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending list (numpy's default method)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


def _sample_stats(values: list[float]) -> dict[str, float | None]:
    """mean + percentiles of per-request samples (None when there are none)."""
    if not values:
        return {"mean": None, **dict.fromkeys(PERCENTILES)}
    ordered = sorted(values)
    return {"mean": sum(ordered) / len(ordered),
            **{p: _percentile(ordered, int(p[1:]) / 100.0) for p in PERCENTILES}}


def split_interleaved(raw: dict[str, Any], routes: list[dict[str, Any]], variants: list[str],
                      block_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """Split one GuideLLM report measured through ``modelgate interleave-proxy`` per variant.

    ``routes`` are the proxy's records (``upstream`` = variant, ``response_id``); a request is
    matched to its variant by the response id GuideLLM recorded. Each variant's rate is the
    report's rate divided by the number of variants (the proxy sends them requests in turn).
    Metrics are computed from the variant's own per-request samples; ``blocks`` gives, for
    each sample, its ``block_s``-second slice of the run (counted from the benchmark's start,
    the same slices for every variant), so the gate can pair the variants slice by slice.
    HTTP errors are counted from the proxy's records (status >= 400) when GuideLLM's errored
    request carries no response id.
    """
    if block_s <= 0:
        raise ModelGateError("block_s must be > 0", field="block_s", fix="e.g. 5")
    benchmarks = _benchmarks(raw)
    by_id = {str(r["response_id"]): str(r["upstream"]) for r in routes
             if r.get("response_id") and r.get("upstream") in variants}
    out = {v: {"variant": v, "rates": []} for v in variants}
    for bench in benchmarks:
        whole = _rate_header(bench)
        start = _num(bench.get("start_time")) or 0.0
        end = _num(bench.get("end_time")) or start + (whole["duration_s"] or 0.0)
        reqs = bench.get("requests") or {}
        seen_ids: set[str] = set()
        parts: dict[str, dict[str, list[Any]]] = {
            v: {"successful": [], "errored": [], "incomplete": []} for v in variants}
        unattributed = 0
        for kind in ("successful", "errored", "incomplete"):
            for req in reqs.get(kind) or []:
                rid = str(req.get("response_id") or "")
                seen_ids.add(rid)
                variant = by_id.get(rid)
                if variant is None:
                    unattributed += 1
                else:
                    parts[variant][kind].append(req)
        http_errors = {v: 0 for v in variants}
        for r in routes:
            status = r.get("status")
            if (r.get("upstream") in http_errors and isinstance(status, int) and status >= 400
                    and start <= float(r.get("sent") or 0.0) <= end
                    and str(r.get("response_id") or "") not in seen_ids):
                http_errors[r["upstream"]] += 1
        for variant in variants:
            ok = parts[variant]["successful"]
            duration = whole["duration_s"] or 0.0
            entry: dict[str, Any] = {
                "rate": (whole["rate"] / len(variants)) if whole["rate"] is not None else None,
                "profile": whole["profile"],
                "duration_s": duration,
                "requests": {
                    "successful": len(ok),
                    "errored": len(parts[variant]["errored"]) + http_errors[variant],
                    "incomplete": len(parts[variant]["incomplete"]),
                },
                "metrics": {}, "samples": {}, "blocks": {},
                "throughput": {
                    "requests_per_s": len(ok) / duration if duration else None,
                    "output_tokens_per_s": (sum(_num(r.get("output_tokens")) or 0.0 for r in ok)
                                            / duration) if duration else None,
                },
                "stopped_by": whole["stopped_by"],
                "over_saturated": whole["over_saturated"],
                "interleaved": {"variants": list(variants), "block_s": block_s,
                                "load_rate": whole["rate"], "unattributed": unattributed},
            }
            for src, dst in METRIC_MAP.items():
                pairs = [(v, r) for r in ok if (v := _request_sample(r, src)) is not None]
                entry["samples"][dst] = [v for v, __ in pairs]
                entry["blocks"][dst] = [_block(r, start, block_s) for __, r in pairs]
                entry["metrics"][dst] = _sample_stats(entry["samples"][dst])
            entry["samples_aligned"] = all(len(v) == len(ok) for v in entry["samples"].values())
            out[variant]["rates"].append(entry)
    for results in out.values():
        results["rates"].sort(key=lambda r: (r["rate"] is None, r["rate"] or 0.0))
    return out


def _block(req: dict[str, Any], start: float, block_s: float) -> int:
    """Which ``block_s`` slice of the benchmark the request started in."""
    timings = (req.get("info") or {}).get("timings") or {}
    t = _num(timings.get("request_start")) or _num(req.get("request_start_time")) or start
    return max(0, int((t - start) // block_s))


# ---------------------------------------------------------------------------------------
# Running


def resolve_guidellm(guidellm_bin: str | None) -> str:
    """Find the guidellm executable: the given path, else ``guidellm`` on PATH."""
    candidate = guidellm_bin or shutil.which("guidellm")
    if not candidate or not (Path(candidate).is_file() and os.access(candidate, os.X_OK)):
        raise ModelGateError(
            f"guidellm executable not found ({guidellm_bin or 'guidellm on PATH'})",
            field="guidellm",
            fix="install guidellm==0.8.1 in the bench virtualenv and pass its bin/guidellm",
        )
    return candidate


def run_load(
    profile: LoadProfile,
    target: str,
    model_name: str,
    processor: str,
    out_dir: str | Path,
    guidellm_bin: str | None = None,
    cpu_affinity: list[int] | None = None,
    variant: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one GuideLLM sweep; keep ``report.json`` and write normalized ``results.json``.

    ``out_dir`` is ``<variant>/guidellm``. ``cpu_affinity`` pins the GuideLLM client to
    those cores (on a small host: the core vLLM leaves free). Progress lines go to stderr.
    Returns a summary with the paths and wall time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    log_path = out / "guidellm.log"
    argv = guidellm_command(
        profile, target, model_name, processor, str(report_path), resolve_guidellm(guidellm_bin)
    )
    (out / "command.json").write_text(
        json.dumps({"argv": argv, "env": guidellm_env(profile), "profile": profile.to_dict(),
                    "cpu_affinity": cpu_affinity}, indent=2)
    )
    report_path.unlink(missing_ok=True)
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", **guidellm_env(profile)}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # The affinity is set in the child before exec, so GuideLLM's worker
            # processes inherit it.
            env=env, preexec_fn=affinity_preexec(cpu_affinity),
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if progress and line.strip():
                elapsed = time.monotonic() - started
                print(f"[guidellm {elapsed:6.0f}s] {line.rstrip()}", file=sys.stderr, flush=True)
        rc = proc.wait()
    wall = time.monotonic() - started
    if rc != 0 or not report_path.exists():
        raise ToolError(
            f"guidellm exited with {rc} after {wall:.0f}s:\n{log_tail(log_path, 40)}",
            fix=f"see the full log: {log_path}",
        )
    raw = json.loads(report_path.read_text())
    results = normalize_guidellm_report(raw, variant or out.parent.name)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return {
        "variant": results["variant"],
        "profile": profile.name,
        "report": str(report_path),
        "results": str(out / "results.json"),
        "log": str(log_path),
        "wall_s": round(wall, 1),
        "rates": [
            {
                "rate": r["rate"],
                "requests": r["requests"],
                "request_latency_p50_s": r["metrics"]["request_latency_s"]["p50"],
                "ttft_p50_ms": r["metrics"]["ttft_ms"]["p50"],
            }
            for r in results["rates"]
        ],
    }


def round_file_name(stem: str, round_no: int) -> str:
    """``results.json`` for round 1, ``results-r<N>.json`` after: the names the gate pools
    a variant's rounds by (``report`` likewise)."""
    return f"{stem}.json" if round_no == 1 else f"{stem}-r{round_no}.json"


def file_interleaved_round(summary: dict[str, Any], run_dir: str | Path,
                           round_no: int) -> None:
    """Copy each variant's results of ``run_interleaved_load`` to where a run of that variant
    alone would put them (``run_dir/<variant>/guidellm/``), for the gate; updates the paths
    in ``summary``."""
    for variant, info in summary["variants"].items():
        dest = Path(run_dir) / variant / "guidellm" / round_file_name("results", round_no)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["results"], dest)
        info["results"] = str(dest)


def read_routes(path: str | Path) -> list[dict[str, Any]]:
    """The records ``modelgate interleave-proxy --routes`` wrote (JSON lines)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def run_interleaved_load(
    profile: LoadProfile,
    proxy_url: str,
    routes_path: str | Path,
    variants: list[str],
    model_name: str,
    processor: str,
    out_dir: str | Path,
    block_s: float = 5.0,
    guidellm_bin: str | None = None,
    cpu_affinity: list[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One GuideLLM sweep through an interleaving proxy, split into per-variant results.

    Every rate of ``profile`` is what each variant receives: GuideLLM runs at that rate times
    the number of variants (and draws as many more samples), the proxy deals the requests out
    in turn. Writes ``results-<variant>.json`` beside the raw report in ``out_dir``.
    """
    n = len(variants)
    load = replace(profile, rates=tuple(r * n for r in profile.rates), samples=profile.samples * n)
    summary = run_load(load, proxy_url, model_name, processor, out_dir, guidellm_bin=guidellm_bin,
                       cpu_affinity=cpu_affinity, variant="interleaved", progress=progress)
    raw = json.loads(Path(summary["report"]).read_text())
    wanted = {str(r.get("response_id")) for b in raw.get("benchmarks") or []
              for r in ((b.get("requests") or {}).get("successful") or [])}
    # the proxy logs a request once its last byte is relayed: GuideLLM may exit a moment
    # before the last records are written
    deadline = time.monotonic() + 10.0
    routes = read_routes(routes_path)
    while not wanted <= {str(r.get("response_id")) for r in routes} and \
            time.monotonic() < deadline:
        time.sleep(0.1)
        routes = read_routes(routes_path)
    split = split_interleaved(raw, routes, variants, block_s)
    out = Path(out_dir)
    summary["variants"] = {}
    for variant, results in split.items():
        path = out / f"results-{variant}.json"
        path.write_text(json.dumps(results, indent=2))
        summary["variants"][variant] = {
            "results": str(path),
            "rates": [{"rate": r["rate"], "requests": r["requests"],
                       "request_latency_p50_s": r["metrics"]["request_latency_s"]["p50"]}
                      for r in results["rates"]],
        }
    return summary


def measure_interleaved(
    profile: LoadProfile,
    upstreams: dict[str, str],
    model_name: str,
    processor: str,
    run_dir: str | Path,
    round_no: int = 1,
    block_s: float = 5.0,
    guidellm_bin: str | None = None,
    cpu_affinity: list[int] | None = None,
    progress: bool = True,
    delays_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Measure several served variants at the same moments: one GuideLLM sweep through an
    ``InterleavingProxy`` (run here, in a thread) that deals the requests out in turn.

    ``upstreams``: variant name -> base URL of its server (all serving ``model_name``). The
    raw report and the proxy's routes stay in ``run_dir/interleaved/r<round>/``; each
    variant's results go where a separate run would put them
    (``run_dir/<variant>/guidellm/results.json``, ``results-r<N>.json`` from round 2), so the
    gate reads them as it reads any round, pairing the variants block by block.
    ``delays_ms`` (variant -> ms) delays that variant's responses at the proxy.
    """
    from modelgate.delay_proxy import InterleavingProxy, serving_in_thread

    run = Path(run_dir)
    work = run / "interleaved" / f"r{round_no}"
    work.mkdir(parents=True, exist_ok=True)
    routes = work / "routes.jsonl"
    routes.unlink(missing_ok=True)
    proxy = InterleavingProxy(upstreams, delays_ms=delays_ms, routes_path=routes)
    with serving_in_thread(proxy) as running:
        summary = run_interleaved_load(profile, running.url, routes, list(upstreams), model_name,
                                       processor, work, block_s=block_s,
                                       guidellm_bin=guidellm_bin, cpu_affinity=cpu_affinity,
                                       progress=progress)
        summary["proxy"] = running.stats.to_dict()
    file_interleaved_round(summary, run, round_no)
    return summary


# ---------------------------------------------------------------------------------------
# CLI


def _cmd_loadtest(args: Any) -> int:
    from modelgate.cli import emit

    profile = get_profile(
        args.profile,
        rates=args.rates,
        max_seconds=args.max_seconds,
        extra_args=args.guidellm_arg or None,
    )
    affinity = [int(c) for c in args.cpu_affinity.split(",")] if args.cpu_affinity else None
    if args.interleave:
        from modelgate.delay_proxy import parse_named

        upstreams = parse_named(args.interleave, "--interleave", number=False)
        if len(upstreams) < 2 or args.target or args.variant:
            raise ModelGateError(
                "--interleave needs two or more NAME=URL and replaces --target/--variant",
                field="interleave", fix="e.g. --interleave bf16=http://127.0.0.1:8000 "
                "--interleave w4a16=http://127.0.0.1:8001")
        emit(measure_interleaved(profile, upstreams, args.model, args.processor, args.out,
                                 round_no=args.round, block_s=args.block_seconds,
                                 guidellm_bin=args.guidellm, cpu_affinity=affinity))
        return 0
    if not (args.target and args.variant):
        raise ModelGateError("loadtest needs --target and --variant (or --interleave)",
                             field="target", fix="give the server's URL and the variant name")
    if args.round != 1:
        raise ModelGateError("--round numbers interleaved rounds only", field="round",
                             fix="use --interleave, or --out per round for one server")
    out_dir = Path(args.out) / args.variant / "guidellm"
    emit(run_load(profile, args.target, args.model, args.processor, out_dir,
                  guidellm_bin=args.guidellm, cpu_affinity=affinity, variant=args.variant))
    return 0


def _cmd_normalize(args: Any) -> int:
    from modelgate.cli import emit

    results = normalize_guidellm_report(read_report(args.report), args.variant)
    if args.write:
        Path(args.write).write_text(json.dumps(results, indent=2))
    emit(results if not args.write else {"results": args.write, "rates": len(results["rates"])})
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``loadtest`` (one server, or several interleaved) and ``loadtest-normalize``."""
    p = subparsers.add_parser("loadtest", help="run a GuideLLM load sweep against a server")
    p.add_argument("--target", default=None, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--processor", required=True, help="checkpoint directory (its tokenizer)")
    p.add_argument("--profile", default="ci", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--variant", default=None, help="variant name (results go to OUT/VARIANT)")
    p.add_argument("--interleave", action="append", default=[], metavar="NAME=URL",
                   help="instead of --target/--variant, twice or more: measure these variants' "
                        "servers together, requests dealt out in turn (each gets the rates)")
    p.add_argument("--round", type=int, default=1,
                   help="with --interleave: round number (results-rN.json from round 2, as the "
                        "gate pools them)")
    p.add_argument("--block-seconds", type=float, default=5.0,
                   help="with --interleave: the time blocks the gate pairs the variants by")
    p.add_argument("--guidellm", default=None, help="path to the guidellm executable")
    p.add_argument("--rates", type=float, nargs="+", default=None, help="override the rates")
    p.add_argument("--max-seconds", type=float, default=None, help="override seconds per rate")
    p.add_argument("--cpu-affinity", default=None, help="pin GuideLLM to cores, e.g. '1'")
    p.add_argument("--guidellm-arg", action="append", default=[],
                   help="extra argument passed to `guidellm run` verbatim (repeatable)")
    p.set_defaults(func=_cmd_loadtest)

    n = subparsers.add_parser("loadtest-normalize", help="normalize a raw GuideLLM report")
    n.add_argument("--report", required=True)
    n.add_argument("--variant", required=True)
    n.add_argument("--write", default=None, help="write results.json here")
    n.set_defaults(func=_cmd_normalize)
