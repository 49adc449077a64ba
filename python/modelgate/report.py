"""The run report: one self-contained report.html (plots embedded) plus the PNGs beside it.

Reads the run directory described in ``modelgate.gate`` (manifest.json, per-variant guidellm,
accuracy and fidelity results) and the verdict in ``gate.json``; when there is no gate.json yet
the verdict is computed with the given (or default) policy and the report says so.

Plots (matplotlib, Agg backend, imported lazily):
    latency_vs_rps.png  request latency median per rate, one line per variant, 95% CI error bars
                        (bootstrap of the median over rounds and requests), p90 dashed
    ttft_vs_rps.png     the same for time to first token
    itl_vs_rps.png      the same for inter-token latency
    accuracy.png        score per task and variant, Wilson 95% CI error bars
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError
from modelgate.gate import (
    GatePolicy,
    VariantResults,
    evaluate_run,
    load_variant,
    read_manifest,
)

_LATENCY_PLOTS = (
    ("request_latency_s", "latency_vs_rps.png", "Request latency", "s"),
    ("ttft_ms", "ttft_vs_rps.png", "Time to first token", "ms"),
    ("itl_ms", "itl_vs_rps.png", "Inter-token latency", "ms"),
)
_STATUS_COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}
_BASELINE_COLOR = "#333333"
_CANDIDATE_COLORS = ("#0969da", "#cf222e", "#8250df", "#bf8700", "#1a7f37", "#e16f24")


@dataclass
class LatencyPoint:
    """One variant's latency summary at one rate."""

    rate: float
    median: float
    ci_low: float | None
    ci_high: float | None
    p90: float | None
    n: int


@dataclass
class RunData:
    """Everything the report shows, loaded once."""

    run_dir: Path
    manifest: dict[str, Any]
    baseline: str | None
    variants: list[VariantResults]
    verdict: dict[str, Any]
    verdict_source: str
    notes: list[str] = field(default_factory=list)


def _load_run(run_dir: str | Path, policy: GatePolicy | str | Path | None) -> RunData:
    root = Path(run_dir)
    manifest = read_manifest(root)
    names = [v["name"] for v in manifest["variants"]]
    baseline = next((v["name"] for v in manifest["variants"] if v.get("baseline")), None)
    variants = [load_variant(root / n, role="variant", name=n, allow_missing=True) for n in names]
    gate_json = root / "gate.json"
    if gate_json.is_file():
        try:
            verdict = json.loads(gate_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelGateError(
                f"cannot read {gate_json}: {exc}", field="gate.json",
                fix="re-run `modelgate gate --run-dir` or delete the file",
            ) from exc
        source = str(gate_json)
    else:
        verdict = evaluate_run(root, policy).to_dict()
        source = "computed for this report (no gate.json in the run directory)"
    return RunData(root, manifest, baseline, variants, verdict, source)


def _verdicts(verdict: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-candidate verdicts from either gate.json shape (run, or a single comparison)."""
    if isinstance(verdict.get("verdicts"), list):
        return verdict["verdicts"]
    return [verdict] if "checks" in verdict else []


def latency_points(variant: VariantResults, metric: str, confidence: float = 0.95,
                   resamples: int = 1000, seed: int = 20261130) -> list[LatencyPoint]:
    """Median (with bootstrap CI) and p90 of ``metric`` at every rate of ``variant``."""
    import numpy as np

    from modelgate.gate import _point_stat, _resample_stat, _samples_at

    points = []
    for rate in variant.rates:
        rounds, entries = _samples_at(variant, rate, metric)
        if rounds:
            arrays = [a for __, a in rounds]
            pooled = np.concatenate(arrays)
            rng = np.random.default_rng([seed, int(rate * 1000)])
            star = _resample_stat(arrays, "p50", rng, resamples)
            alpha = (1 - confidence) / 2
            lo, hi = np.quantile(star, [alpha, 1 - alpha])
            points.append(LatencyPoint(rate, _point_stat(pooled, "p50"), float(lo), float(hi),
                                       _point_stat(pooled, "p90"), int(pooled.size)))
            continue
        # No per-request samples: fall back to the summary percentiles, without a CI.
        p50 = [((e.get("metrics") or {}).get(metric) or {}).get("p50") for e in entries]
        p90 = [((e.get("metrics") or {}).get(metric) or {}).get("p90") for e in entries]
        p50 = [float(x) for x in p50 if isinstance(x, (int, float))]
        p90 = [float(x) for x in p90 if isinstance(x, (int, float))]
        if p50:
            points.append(LatencyPoint(rate, sum(p50) / len(p50), None, None,
                                       sum(p90) / len(p90) if p90 else None, 0))
    return points


def _colors(data: RunData) -> dict[str, str]:
    colors, i = {}, 0
    for v in data.variants:
        if v.name == data.baseline:
            colors[v.name] = _BASELINE_COLOR
        else:
            colors[v.name] = _CANDIDATE_COLORS[i % len(_CANDIDATE_COLORS)]
            i += 1
    return colors


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI runners and controllers
    import matplotlib.pyplot as plt

    return plt


def _plot_latency(data: RunData, metric: str, title: str, unit: str, path: Path) -> bool:
    plt = _pyplot()
    colors = _colors(data)
    series = [(v, latency_points(v, metric)) for v in data.variants]
    series = [(v, pts) for v, pts in series if pts]
    if not series:
        return False
    all_rates = sorted({p.rate for __, pts in series for p in pts})
    span = (all_rates[-1] - all_rates[0]) if len(all_rates) > 1 else 1.0
    fig, ax = plt.subplots(figsize=(9.0, 4.5))
    for i, (v, pts) in enumerate(series):
        # Small horizontal offsets keep overlapping error bars readable.
        dx = (i - (len(series) - 1) / 2) * 0.012 * span
        xs = [p.rate + dx for p in pts]
        med = [p.median for p in pts]
        yerr = [[p.median - p.ci_low if p.ci_low is not None else 0 for p in pts],
                [p.ci_high - p.median if p.ci_high is not None else 0 for p in pts]]
        label = f"{v.name} (baseline)" if v.name == data.baseline else v.name
        ax.errorbar(xs, med, yerr=yerr, marker="o", ms=5, lw=2, capsize=4,
                    color=colors[v.name], label=f"{label} median")
        p90 = [(x, p.p90) for x, p in zip(xs, pts, strict=True) if p.p90 is not None]
        if p90:
            ax.plot([x for x, __ in p90], [y for __, y in p90], ls="--", lw=1, alpha=0.7,
                    color=colors[v.name], label=f"{v.name} p90")
    ax.set_title(f"{title} vs offered rate (median with 95% CI; dashed: p90)", fontsize=11)
    ax.set_xlabel("offered rate (requests/s, constant)")
    ax.set_ylabel(f"{title.lower()} ({unit})")
    ax.set_xticks(all_rates)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    # Outside the axes: inside, it hides the p90 curves of the slowest variant.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _wilson95(p: float, n: int) -> tuple[float, float]:
    if n <= 0:
        return p, p
    z = 1.959964
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _accuracy_table(data: RunData) -> dict[str, dict[str, tuple[float, int]]]:
    """task -> variant -> (score, n)."""
    table: dict[str, dict[str, tuple[float, int]]] = {}
    for v in data.variants:
        tasks = (v.accuracy or {}).get("tasks") or {}
        for task, entry in tasks.items():
            if isinstance(entry, dict) and isinstance(entry.get("score"), (int, float)):
                n = int(entry.get("n") or len(entry.get("samples") or {}) or 0)
                table.setdefault(task, {})[v.name] = (float(entry["score"]), n)
    return table


def _plot_accuracy(data: RunData, path: Path) -> bool:
    table = _accuracy_table(data)
    if not table:
        return False
    plt = _pyplot()
    colors = _colors(data)
    tasks = sorted(table)
    names = [v.name for v in data.variants if any(v.name in table[t] for t in tasks)]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) * max(1, len(names)) / 2), 4.5))
    for j, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, task in enumerate(tasks):
            if name not in table[task]:
                continue
            score, n = table[task][name]
            a, b = _wilson95(score, n)
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(score)
            lo.append(score - a)
            hi.append(b - score)
        label = f"{name} (baseline)" if name == data.baseline else name
        bars = ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=3, color=colors[name],
                      alpha=0.85, label=label)
        # Inside the bars: above them the labels collide with the error-bar caps.
        ax.bar_label(bars, labels=[f"{y:.3f}" for y in ys], label_type="center", fontsize=8,
                     color="white", fontweight="bold")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel("score")
    ax.set_ylim(0, min(1.1, max(s for t in table.values() for s, __ in t.values()) * 1.25 + 0.05))
    ax.set_title("Accuracy per task (95% Wilson CI)", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def _fmt_check(c: dict[str, Any]) -> tuple[str, str, str]:
    """(value, CI, limit) cells for one check, in the check's own units."""
    kind, r, lo, hi, lim = (c.get(k) for k in ("kind", "ratio", "ci_low", "ci_high", "limit"))
    have_ci = lo is not None and hi is not None
    if kind == "ratio":
        return (f"{r:.3f}x" if r is not None else "n/a",
                f"{lo:.3f}&ndash;{hi:.3f}" if have_ci else "n/a",
                f"{lim:.2f}x" if lim is not None else "n/a")
    if kind == "recovery":
        return (f"{r:.4f}" if r is not None else "n/a",
                f"{lo:.4f}&ndash;{hi:.4f}" if have_ci else "n/a",
                f"&ge; {lim:.3f}" if lim is not None else "n/a")
    if kind == "difference":
        return (f"{r:+.4f}" if r is not None else "n/a",
                f"{lo:+.4f} to {hi:+.4f}" if have_ci else "n/a",
                f"&le; {lim:+.3f}" if lim is not None else "n/a")
    cand = c.get("candidate")
    if kind == "slo":  # an absolute service level: the candidate's own value
        op = "&ge;" if c.get("bound") == "min" else "&le;"
        return (_fmt(cand), f"{_fmt(lo)}&ndash;{_fmt(hi)}" if have_ci else "n/a",
                f"{op} {_fmt(lim)}" if lim is not None else "n/a")
    return (f"{cand:.4f}" if cand is not None else "n/a",
            f"{lo:.4f}&ndash;{hi:.4f}" if have_ci else "n/a",
            f"&le; {lim:.4f}" if lim is not None else "n/a")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#1f2328;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.15em .6em;border-radius:1em;color:#fff;font-weight:600}
.reason{color:#57606a;font-size:.92em}img{max-width:100%;border:1px solid #d0d7de;margin:.4em 0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:.4em .8em;border-radius:6px}
code{background:#f6f8fa;padding:0 .3em;border-radius:4px}
"""


def _badge(status: str) -> str:
    color = _STATUS_COLORS.get(status, "#57606a")
    return f'<span class="badge" style="background:{color}">{html.escape(status.upper())}</span>'


def _metadata_html(data: RunData) -> str:
    m = data.manifest
    rows = [("run id", m.get("run_id") or data.run_dir.name), ("run directory", str(data.run_dir))]
    for key in sorted(k for k in m if k not in ("run_id", "variants")):
        value = m[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append((key, text if len(text) < 400 else text[:400] + " …"))
    rows.append(("verdict source", data.verdict_source))
    meta = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(str(v))}</code>"
                   f"</td></tr>" for k, v in rows)
    var_rows = "".join(
        f"<tr><td>{html.escape(v['name'])}</td><td>{'yes' if v.get('baseline') else ''}</td>"
        f"<td><code>{html.escape(json.dumps(v.get('recipe')))}</code></td>"
        f"<td>{len(next((x.rounds for x in data.variants if x.name == v['name']), []))}</td></tr>"
        for v in m["variants"]
    )
    return (f"<table>{meta}</table><table><tr><th>variant</th><th>baseline</th><th>recipe</th>"
            f"<th>load rounds</th></tr>{var_rows}</table>")


def _verdict_html(data: RunData) -> str:
    parts = []
    for v in _verdicts(data.verdict):
        head = (f"<h3>{html.escape(str(v.get('candidate')))} vs "
                f"{html.escape(str(v.get('baseline')))} {_badge(str(v.get('status')))}</h3>")
        notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in v.get("notes") or [])
        rows = []
        for c in v.get("checks") or []:
            value, ci, limit = _fmt_check(c)
            rate = c.get("rate")
            rows.append(
                f"<tr><td>{html.escape(str(c.get('name')))}</td>"
                f"<td>{html.escape(str(c.get('metric')))}</td>"
                f"<td>{html.escape(str(c.get('statistic') or ''))}</td>"
                f"<td class=num>{'' if rate is None else html.escape(f'{float(rate):g}')}</td>"
                f"<td class=num>{_fmt(c.get('baseline'))}</td>"
                f"<td class=num>{_fmt(c.get('candidate'))}</td>"
                f"<td class=num>{value}</td><td class=num>{ci}</td><td class=num>{limit}</td>"
                f"<td>{_badge(str(c.get('status')))}</td>"
                f"<td class=reason>{html.escape(str(c.get('reason') or ''))}</td></tr>"
            )
        parts.append(
            head + notes + "<table><tr><th>check</th><th>metric</th><th>stat</th><th>rate</th>"
            "<th>baseline</th><th>candidate</th><th>ratio / diff / value</th><th>95% CI</th>"
            "<th>limit</th><th>status</th><th>why</th></tr>" + "".join(rows) + "</table>"
        )
    if not parts:
        parts.append("<p>No candidate verdicts.</p>")
    return "".join(parts)


def _fidelity_html(data: RunData) -> str:
    rows = []
    for v in data.variants:
        f = v.fidelity
        if not isinstance(f, dict):
            continue
        rows.append(
            f"<tr><td>{html.escape(v.name)}</td><td>{html.escape(str(f.get('baseline', '')))}</td>"
            f"<td class=num>{_fmt(f.get('prompts'))}</td><td class=num>{_fmt(f.get('tokens'))}</td>"
            f"<td class=num>{_fmt(f.get('flip_rate'))}</td>"
            f"<td class=num>{_fmt(f.get('kl_mean'))}</td></tr>"
        )
    if not rows:
        return "<p>No fidelity results.</p>"
    return ("<table><tr><th>variant</th><th>vs</th><th>prompts</th><th>tokens</th>"
            "<th>token flip rate</th><th>mean KL (nats/token)</th></tr>" + "".join(rows)
            + "</table>")


def _img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render_report(run_dir: str | Path, policy: GatePolicy | str | Path | None = None) -> Path:
    """Write ``report.html`` and the PNG plots into ``run_dir``; return the report's path."""
    data = _load_run(run_dir, policy)
    return _render(data)[0]


def _render(data: RunData) -> tuple[Path, list[Path]]:
    root = data.run_dir
    pngs: list[Path] = []
    latency_imgs = []
    for metric, fname, title, unit in _LATENCY_PLOTS:
        path = root / fname
        if _plot_latency(data, metric, title, unit, path):
            pngs.append(path)
            latency_imgs.append(_img(path, f"{title} vs rate"))
    acc_path = root / "accuracy.png"
    acc_img = _img(acc_path, "accuracy") if _plot_accuracy(data, acc_path) else ""
    if acc_img:
        pngs.append(acc_path)
    status = str(data.verdict.get("status") or "unknown")
    run_id = html.escape(str(data.manifest.get("run_id") or root.name))
    message = html.escape(str(data.verdict.get("message") or ""))
    notes = "".join(f'<p class="note">{html.escape(n)}</p>'
                    for n in data.verdict.get("notes") or [])
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ModelGate run {run_id}</title>
<style>{_CSS}</style></head><body>
<h1>ModelGate run <code>{run_id}</code> {_badge(status)}</h1>
<p>Baseline: <b>{html.escape(str(data.baseline))}</b>. Generated {generated}.</p>
<pre>{message}</pre>{notes}
<h2>Verdict</h2>{_verdict_html(data)}
<h2>Latency vs load</h2>
<div class="plots">{"".join(latency_imgs) or "<p>No load-test results.</p>"}</div>
<h2>Accuracy</h2>{acc_img or "<p>No accuracy results.</p>"}
<h2>Fidelity vs baseline</h2>{_fidelity_html(data)}
<h2>Run metadata</h2>{_metadata_html(data)}
</body></html>
"""
    out = root / "report.html"
    out.write_text(body, encoding="utf-8")
    return out, pngs


def _summary(data: RunData) -> str:
    verdict = data.verdict
    status = str(verdict.get("status") or "unknown").upper()
    run_id = data.manifest.get("run_id") or data.run_dir.name
    lines = [f"### ModelGate run `{run_id}`: {status} (baseline `{data.baseline}`)", "",
             "| candidate | status | pass | fail | inconclusive |", "|---|---|---|---|---|"]
    for v in _verdicts(verdict):
        counts = v.get("counts") or {}
        lines.append(f"| {v.get('candidate')} | {v.get('status')} | {counts.get('pass', 0)} | "
                     f"{counts.get('fail', 0)} | {counts.get('inconclusive', 0)} |")
    failed = [line for v in _verdicts(verdict)
              for line in str(v.get("message") or "").splitlines() if line]
    if failed:
        lines += ["", "**Failed checks**", *[f"- {line}" for line in failed]]
    # Median request latency per rate, the headline number for a quantized model.
    medians = {v.name: {p.rate: p.median
                        for p in latency_points(v, "request_latency_s", resamples=200)}
               for v in data.variants}
    rates = sorted({r for m in medians.values() for r in m})
    if rates:
        lines += ["", "| median request latency (s) | " + " | ".join(f"{r:g} rps" for r in rates)
                  + " |", "|---" * (len(rates) + 1) + "|"]
        for name, m in medians.items():
            cells = " | ".join(f"{m[r]:.3f}" if r in m else "n/a" for r in rates)
            lines.append(f"| {name} | {cells} |")
    acc = _accuracy_table(data)
    if acc:
        names = [v.name for v in data.variants]
        lines += ["", "| accuracy | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for task in sorted(acc):
            cells = " | ".join(f"{acc[task][n][0]:.3f}" if n in acc[task] else "n/a"
                               for n in names)
            lines.append(f"| {task} | {cells} |")
    return "\n".join(lines) + "\n"


def markdown_summary(run_dir: str | Path, policy: GatePolicy | str | Path | None = None) -> str:
    """A short Markdown summary of the run: verdict, failed checks, latency and accuracy."""
    return _summary(_load_run(run_dir, policy))


def _cli_report(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    data = _load_run(args.run_dir, args.policy)
    report, pngs = _render(data)
    emit({"report": str(report), "pngs": [str(p) for p in pngs], "summary": _summary(data)})
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``modelgate report``."""
    parser = subparsers.add_parser("report", help="render report.html and PNGs for a run")
    parser.add_argument("--run-dir", required=True, help="the run directory")
    parser.add_argument("--policy", help="gate policy YAML, used only when gate.json is absent")
    parser.set_defaults(func=_cli_report)
