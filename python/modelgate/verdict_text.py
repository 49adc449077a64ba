"""A run's verdict in words: one sentence per candidate, for the end of ``make demo``.

Read from the run directory the gate wrote (``gate.json``, ``manifest.json``), so it says what
was decided, including the candidates left out before the run started, and never more.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError

# How many failed checks a sentence names before "and N more".
NAMED_CHECKS = 2


def _read_gate(path: Path) -> dict[str, Any]:
    """gate.json, read as the gate reads its inputs; a run not judged yet says so."""
    from modelgate.gate import _read_json

    if not path.is_file():
        raise ModelGateError(f"{path} does not exist", field="run_dir",
                             fix="give a run directory the validate stage has judged")
    return _read_json(path, "gate")


def _check_text(check: dict[str, Any]) -> str:
    label = check.get("label") or check.get("metric") or check.get("name", "?")
    ratio, limit = check.get("ratio"), check.get("limit")
    if check.get("kind", "ratio") == "ratio" and ratio is not None and limit is not None:
        return f"{label} {ratio:.2f}x (limit {limit:.2f}x)"
    if check.get("kind") == "slo" and check.get("candidate") is not None and limit is not None:
        op = ">=" if check.get("bound") == "min" else "<="
        return f"SLO {check.get('name')}: {label} {check['candidate']:.4g} (SLO {op} {limit:.4g})"
    if ratio is not None and limit is not None:
        return f"{label} {ratio:.3f} (limit {limit:.3f})"
    return f"{label}: {check.get('reason', '')}".rstrip(": ")


def _dimensions_text(verdict: dict[str, Any]) -> str:
    """``; by dimension: latency pass, fidelity fail, accuracy inconclusive (accepted)``."""
    dims = verdict.get("dimensions") or {}
    parts = [f"{d} {info.get('status')}" + (" (accepted)" if info.get("accepted_inconclusive")
                                            and info.get("status") == "inconclusive" else "")
             for d, info in dims.items()]
    return f"; by dimension: {', '.join(parts)}" if parts else ""


def _sentence(verdict: dict[str, Any]) -> str:
    """One sentence: what was decided, why, and each dimension's status."""
    return _verdict_sentence(verdict).rstrip(".") + _dimensions_text(verdict) + "."


def _verdict_sentence(verdict: dict[str, Any]) -> str:
    name, base = verdict.get("candidate", "?"), verdict.get("baseline", "?")
    checks = verdict.get("checks") or []
    by_status: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        by_status.setdefault(str(c.get("status")), []).append(c)
    n_pass, n_inc = len(by_status.get("pass", [])), len(by_status.get("inconclusive", []))
    failed = by_status.get("fail", [])
    if failed:
        named = "; ".join(_check_text(c) for c in failed[:NAMED_CHECKS])
        more = f"; and {len(failed) - NAMED_CHECKS} more" if len(failed) > NAMED_CHECKS else ""
        return (f"{name}: refused by the gate against {base}: {len(failed)} of {len(checks)} "
                f"checks failed ({named}{more}).")
    if verdict.get("passed"):
        return (f"{name}: passed against {base}: {n_pass} checks passed, none failed"
                + (f", {n_inc} inconclusive (accepted by the policy)." if n_inc else "."))
    undecided = {d: info for d, info in (verdict.get("dimensions") or {}).items()
                 if info.get("status") == "inconclusive" and not info.get("accepted_inconclusive")}
    what = (f"no check decided {'; '.join(_why_undecided(d, i) for d, i in undecided.items())}"
            if undecided else (verdict.get("message") or "no check decided").splitlines()[0])
    return (f"{name}: not shipped: inconclusive against {base} ({n_pass} passed, "
            f"{n_inc} inconclusive; {what}).")


def _why_undecided(dimension: str, info: dict[str, Any]) -> str:
    """``latency (why no check decided; to get it: how)``, from gate.json's dimensions."""
    missing, how = info.get("missing"), info.get("how_to_get")
    if not missing:
        return dimension
    return f"{dimension} ({missing}" + (f"; to get it: {how})" if how else ")")


def explain_run(run_dir: str | Path) -> dict[str, Any]:
    """The verdict of a judged run as sentences: one per candidate, then the bottom line."""
    path = Path(run_dir)
    from modelgate.gate import read_manifest

    gate = _read_gate(path / "gate.json")
    manifest = read_manifest(path) if (path / "manifest.json").is_file() else {}
    sentences = [_sentence(v) for v in gate.get("verdicts", [])]
    for left in (manifest.get("inputs") or {}).get("left_out") or []:
        sentences.append(f"{left.get('name')}: left out before the run: {left.get('reason')}")
    passed = bool(gate.get("passed"))
    status = gate.get("status") or ("pass" if passed else "fail")
    if passed:
        bottom = "Every candidate passed the gate: it may ship."
    elif status == "inconclusive":
        bottom = ("The gate could not decide for at least one candidate, so the play failed: "
                  "no proof is no deployment; the sentences say which data was missing.")
    else:
        bottom = ("The gate refused at least one candidate, so the play failed: that is the "
                  "pipeline doing its job (no proof, no deployment), not a breakage.")
    report = path / "report.html"
    return {"run_dir": str(path.resolve()), "passed": passed, "status": status,
            "sentences": sentences, "bottom_line": bottom,
            "report": str(report.resolve()) if report.is_file() else None}


def register_cli(subparsers: Any) -> None:
    """Add ``modelgate verdict``."""
    p = subparsers.add_parser(
        "verdict", help="say what the gate decided for a run, one sentence per candidate",
        description="Reads RUN_DIR/gate.json and manifest.json. Exit 0 when every candidate "
        "passed, 1 when the gate refused one, 3 when it could not decide, 2 on bad input "
        "(as modelgate gate).")
    p.add_argument("run_dir", help="a run directory (e.g. runs/latest)")
    p.add_argument("--text", action="store_true", help="plain sentences instead of JSON")
    p.set_defaults(func=_cli_verdict)


def _cli_verdict(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    said = explain_run(args.run_dir)
    if args.text:
        print("\n".join(["Verdict:", *(f"  {s}" for s in said["sentences"]),
                         said["bottom_line"]]))
        if said["report"]:
            print(f"Report: {said['report']}")
    else:
        emit(said)
    return {"pass": 0, "inconclusive": 3}.get(said["status"], 1)
