"""Benchmark of the gate itself: false alarms, detections, and what each decision costs.

One local vLLM CPU server (the tiny generated model, --enforce-eager). Trials alternate between
two kinds:

  A/A         baseline = the server, candidate = the same server measured again: any FAIL is a
              false alarm
  regression  candidate = the server with every response held back by --regression-pct of the
              baseline's median request latency (calibrated once, at the start): a FAIL is a
              detection

Each trial is sequential: rounds of --seconds-per-round until the gate decides. Two designs:

  interleaved (default)  one GuideLLM run per round through `modelgate interleave-proxy`, which
              sends the requests to baseline and candidate in turn (the candidate's upstream
              delayed for a regression); `modelgate.loadtest.split_interleaved` splits the report
              per variant, and the gate pairs the variants by --block-seconds time blocks. Both
              variants share every second of the run, so the host's slow spells cancel.
  sequential  one GuideLLM run per variant per round, the order flipping every round (A1 B1 B2
              A2 ...), the candidate of a regression behind `modelgate delay-proxy`: what the
              pipeline's validate stage does on a host that cannot serve the variants side by
              side.
  play        the play's own validate stage (`ansible-playbook site.yml --tags validate` on
              inventories/local), not a copy of its logic: a run whose baseline and candidate
              are the same checkpoint (recipe none) is prepared once (provision..modelcar);
              each trial is a new run of it, validated by the play, which serves both variants
              side by side, each vLLM CPU server on a core of its own, and measures them
              together through the interleaving proxy (--play-rounds fixed rounds, no early
              stop); a regression trial gives the candidate `load_delay_ms`, which the proxy
              adds to its responses. The decision is the gate.json the play wrote; the wall time
              is the play's. The servers are kept running between trials
              (modelgate_validate_keep_serving), as a re-run of the play finds them.

After every round from --min-rounds on, modelgate.gate.evaluate compares the variants under
bench/gate_policy.yaml (request latency p50 within 10%, TTFT p95 within 15%). The trial stops
once a check fails or none is inconclusive, or after --rounds-max rounds; the decision is the
gate's verdict then (fail if any check failed, else pass or inconclusive).

Interleaved and sequential: GuideLLM is pinned to core 1 (vLLM CPU binds its worker to core 0),
and so is this process; the proxy runs as its own process at a higher priority on every core.
Run it alone on the host, holding the heavy-work lock:

    flock /tmp/modelgate-heavy.lock .modelgate/venvs/bench/bin/python bench/gate.py

Writes every round's GuideLLM report and results (and the proxy's routes), each trial's
gate.json, and summary.json under --out (default /tmp/modelgate-bench-gate/<timestamp>).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from modelgate.gate import GateVerdict, evaluate, load_policy, wilson_interval  # noqa: E402
from modelgate.loadtest import (  # noqa: E402
    LoadProfile,
    file_interleaved_round,
    get_profile,
    round_file_name,
    run_interleaved_load,
    run_load,
)
from modelgate.rundir import RunDir  # noqa: E402
from modelgate.serving import (  # noqa: E402
    derive_serving_args,
    local_server_spec,
    start_local_server,
    startup_timeout_s,
    stop_local_server,
)

SEED_PROTOCOL_S = 2 * 9 * 900.0  # seed: 9 constant rates x 900 s, for baseline and candidate
SERVED_NAME = "tiny"
VARIANTS = ("baseline", "candidate")


@dataclass
class TrialResult:
    """One gate decision and what it took."""

    index: int
    kind: str  # "aa" | "regression"
    decision: str  # pass | fail | inconclusive
    rounds: int
    wall_s: float
    delay_ms: float
    checks: list[dict[str, Any]] = field(default_factory=list)


def newest_generated_model(root: Path) -> Path:
    """The newest store/models/generated-*/ directory that has modelgate-generated.json."""
    found = sorted((p.stat().st_mtime, p) for p in root.glob("generated-*")
                   if (p / "modelgate-generated.json").is_file())
    if not found:
        raise SystemExit(f"no generated model under {root}: run the pipeline's provision stage")
    return found[-1][1]


def regression_delay(args: argparse.Namespace, median_s: float, what: str) -> float:
    """The delay of a regression trial: --regression-pct of the calibrated median latency."""
    delay_ms = args.regression_pct / 100.0 * median_s * 1000.0
    print(f"{what}: median request latency {median_s * 1000:.1f} ms at {args.rate} rps per "
          f"variant; regression delay {delay_ms:.1f} ms (+{args.regression_pct:g}%)",
          flush=True)
    return delay_ms


class ProxyProcess:
    """A `modelgate delay-proxy` / `interleave-proxy` as its own process: at a higher CPU
    priority than the load client, so on a 2-core host the injected delay is the delay asked
    for and the proxy does not bunch a stream's chunks while it waits for a core (a network
    hop would not)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelgate.delay_proxy", *argv],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "python")},
            preexec_fn=_proxy_priority,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"proxy did not start: see {self.log}")
        self.url = str(json.loads(line)["listening"])

    def stop(self) -> dict[str, Any]:
        """SIGTERM; returns the proxy's own statistics."""
        self.proc.send_signal(signal.SIGTERM)
        out, __ = self.proc.communicate(timeout=30)
        try:
            return dict(json.loads(out).get("stats") or {})
        except json.JSONDecodeError:
            return {}


def _proxy_priority() -> None:
    # every core, nice -10 (root) or unchanged: it only sleeps and copies bytes
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    with contextlib.suppress(OSError):
        os.nice(-10)


class Bench:
    """Runs the rounds and trials against one server (and a proxy in front of it)."""

    def __init__(self, args: argparse.Namespace, server_url: str, model_dir: Path,
                 out: Path) -> None:
        self.args = args
        self.server_url = server_url
        self.proxy_url = ""  # the delay proxy of the sequential design
        self.model_dir = model_dir
        self.out = out
        self.policy = load_policy(args.policy)
        self.profile: LoadProfile = get_profile(
            "ci", rates=[args.rate], max_seconds=args.seconds_per_round)
        self.affinity = [int(c) for c in args.client_cpus.split(",")] if args.client_cpus \
            else None
        self.round_walls: list[float] = []

    def measure(self, folder: Path, variant: str, round_no: int, target: str) -> dict[str, Any]:
        """One GuideLLM round; its normalized results land in folder/<variant>/guidellm/."""
        raw_dir = folder / f"{variant}-r{round_no}"
        t0 = time.monotonic()
        summary = run_load(self.profile, target, SERVED_NAME, str(self.model_dir), raw_dir,
                           guidellm_bin=self.args.guidellm, cpu_affinity=self.affinity,
                           variant=variant, progress=False)
        self.round_walls.append(time.monotonic() - t0)
        dest = folder / variant / "guidellm"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary["results"], dest / round_file_name("results", round_no))
        return summary

    def measure_interleaved(self, folder: Path, round_no: int, proxy: ProxyProcess,
                            routes: Path) -> dict[str, Any]:
        """One GuideLLM round through the interleaving proxy, split into baseline and
        candidate results (folder/<variant>/guidellm/, named by round as the play names them)."""
        t0 = time.monotonic()
        summary = run_interleaved_load(
            self.profile, proxy.url, routes, list(VARIANTS), SERVED_NAME, str(self.model_dir),
            folder / f"round-{round_no}", block_s=self.args.block_seconds,
            guidellm_bin=self.args.guidellm, cpu_affinity=self.affinity, progress=False)
        self.round_walls.append(time.monotonic() - t0)
        file_interleaved_round(summary, folder, round_no)
        return summary

    def interleaving_proxy(self, folder: Path, delay_ms: float) -> tuple[ProxyProcess, Path]:
        """baseline = the server, candidate = the server (+ delay_ms): requests in turn."""
        folder.mkdir(parents=True, exist_ok=True)
        routes = folder / "routes.jsonl"
        argv = ["interleave-proxy", "--listen", "127.0.0.1:0", "--routes", str(routes),
                "--upstream", f"baseline={self.server_url}",
                "--upstream", f"candidate={self.server_url}"]
        if delay_ms:
            argv += ["--delay-ms", f"candidate={delay_ms:.1f}"]
        return ProxyProcess(argv, folder / "proxy.log"), routes

    def calibrate(self) -> float:
        """Warm-up round (discarded), then one A/A round whose baseline median latency sets
        the delay (measured as the trials measure: interleaved or one variant at a time)."""
        folder = self.out / "calibration"
        if self.args.design == "interleaved":
            proxy, routes = self.interleaving_proxy(folder, 0.0)
            try:
                self.measure_interleaved(folder / "warmup", 1, proxy, routes)
                summary = self.measure_interleaved(folder, 1, proxy, routes)
            finally:
                proxy.stop()
            rate = summary["variants"]["baseline"]["rates"][0]
        else:
            self.measure(folder, "warmup", 1, self.server_url)
            rate = self.measure(folder, "baseline", 1, self.server_url)["rates"][0]
        return regression_delay(self.args, float(rate["request_latency_p50_s"]),
                                f"calibration ({rate['requests']})")

    def trial(self, index: int, kind: str, delay_ms: float) -> TrialResult:
        """A sequential A/B comparison: rounds until the gate decides."""
        folder = self.out / f"trial-{index:02d}-{kind}"
        t0 = time.monotonic()
        verdict: GateVerdict | None = None
        rounds = 0
        proxy = None
        if self.args.design == "interleaved":
            proxy, routes = self.interleaving_proxy(
                folder, delay_ms if kind == "regression" else 0.0)
        cand_target = self.proxy_url if kind == "regression" else self.server_url
        try:
            for k in range(1, self.args.rounds_max + 1):
                if proxy is not None:
                    self.measure_interleaved(folder, k, proxy, routes)
                else:
                    # ABBA: the order flips every pair, so a drift of the server over the
                    # trial falls on both variants alike, not always on the one measured second
                    order = [("baseline", self.server_url), ("candidate", cand_target)]
                    for variant, target in order if k % 2 else reversed(order):
                        self.measure(folder, variant, k, target)
                rounds = k
                if k < self.args.min_rounds:
                    continue
                verdict = evaluate(folder / "baseline", folder / "candidate", self.policy)
                # decided: a failed check makes the verdict FAIL whatever the others say
                if verdict.counts["fail"] or not verdict.counts["inconclusive"]:
                    break
        finally:
            if proxy is not None:
                proxy.stop()
        wall = time.monotonic() - t0
        assert verdict is not None
        verdict.write_gate_json(folder / "gate.json")
        checks = [{"name": c.name, "status": c.status, "ratio": c.ratio, "ci_low": c.ci_low,
                   "ci_high": c.ci_high, "n": [c.n_baseline, c.n_candidate]}
                  for c in verdict.checks]
        return TrialResult(index=index, kind=kind, decision=verdict.status, rounds=rounds,
                           wall_s=round(wall, 1),
                           delay_ms=round(delay_ms if kind == "regression" else 0.0, 1),
                           checks=checks)


class PlayBench:
    """Trials of the play's own validate stage (--design play) on the embedded default."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.runs = out / "runs"
        self.playbook = REPO / ".modelgate" / "venvs" / "controller" / "bin" / "ansible-playbook"
        self.round_walls: list[float] = []
        self.extravars: dict[str, Any] = {
            "modelgate_runs_dir": str(self.runs),
            "modelgate_validate_design": "interleaved",
            "modelgate_validate_rounds": args.play_rounds,
            "modelgate_validate_keep_serving": True,
            "modelgate_load_overrides": {"rates": [args.rate],
                                         "max_seconds": args.seconds_per_round},
            "modelgate_accuracy_tasks": [],
            "modelgate_gate_policy": str(Path(args.policy).resolve()),
        }

    def variants(self, delay_ms: float) -> list[dict[str, Any]]:
        """The same checkpoint twice; the candidate delayed at the proxy for a regression."""
        candidate: dict[str, Any] = {"name": "candidate", "recipe": "none"}
        if delay_ms:
            candidate["load_delay_ms"] = round(delay_ms, 1)
        return [{"name": "baseline", "recipe": "none", "baseline": True}, candidate]

    def play(self, run_id: str, tags: str, delay_ms: float = 0.0) -> tuple[int, float]:
        """One ansible-playbook run; its output goes to <out>/<run_id>.log."""
        extra = {**self.extravars, "modelgate_run_id": run_id,
                 "modelgate_variants": self.variants(delay_ms)}
        vars_file = self.out / f"{run_id}.vars.json"
        vars_file.write_text(json.dumps(extra, indent=2))
        t0 = time.monotonic()
        with (self.out / f"{run_id}.log").open("w") as log:
            rc = subprocess.run(
                [str(self.playbook), "site.yml", "--tags", tags, "-e", f"@{vars_file}"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        return rc, time.monotonic() - t0

    def prepare(self) -> None:
        """The run every trial starts from: both variants built and pushed as modelcars."""
        RunDir.open(self.runs, "base", create=True)  # the play continues only existing runs
        rc, wall = self.play("base", "provision,model,quantize,modelcar")
        if rc != 0:
            raise SystemExit(f"preparing the run failed (rc {rc}): see {self.out / 'base.log'}")
        print(f"prepared the run in {wall:.0f} s", flush=True)

    def new_run(self, run_id: str) -> None:
        """A copy of the prepared run's records (nothing measured yet)."""
        shutil.copytree(self.runs / "base", self.runs / run_id, symlinks=True)

    def verdict(self, run_id: str) -> dict[str, Any]:
        path = self.runs / run_id / "gate.json"
        if not path.is_file():
            raise SystemExit(f"the play wrote no gate.json for {run_id}: see "
                             f"{self.out / (run_id + '.log')}")
        return dict(json.loads(path.read_text())["verdicts"][0])

    def calibrate(self) -> float:
        """One A/A run of the play (it also starts the servers, kept for the trials); the
        baseline's median request latency there sets the delay."""
        self.new_run("calibration")
        rc, wall = self.play("calibration", "validate")
        self.verdict("calibration")  # the play got to a verdict
        results = json.loads((self.runs / "calibration" / "baseline" / "guidellm" /
                              "results.json").read_text())
        return regression_delay(
            self.args, float(results["rates"][0]["metrics"]["request_latency_s"]["p50"]),
            f"calibration run (rc {rc}, {wall:.0f} s)")

    def trial(self, index: int, kind: str, delay_ms: float) -> TrialResult:
        run_id = f"trial-{index:02d}-{kind}"
        self.new_run(run_id)
        rc, wall = self.play(run_id, "validate", delay_ms if kind == "regression" else 0.0)
        verdict = self.verdict(run_id)
        # the play's outcome is the gate's: it fails exactly when the verdict did not pass
        if (rc == 0) != bool(verdict["passed"]):
            raise SystemExit(f"{run_id}: play rc {rc} but gate passed={verdict['passed']}")
        checks = [{"name": c["name"], "status": c["status"], "ratio": c.get("ratio"),
                   "ci_low": c.get("ci_low"), "ci_high": c.get("ci_high"),
                   "n": [c.get("n_baseline"), c.get("n_candidate")]}
                  for c in verdict["checks"]]
        self.round_walls.append(wall / self.args.play_rounds)
        return TrialResult(index=index, kind=kind, decision=verdict["status"],
                           rounds=self.args.play_rounds, wall_s=round(wall, 1),
                           delay_ms=round(delay_ms if kind == "regression" else 0.0, 1),
                           checks=checks)

    def stop_servers(self) -> None:
        """The servers the play kept running (ports 8000 and 8001 of inventories/local)."""
        from modelgate.process import ProcessSpec
        from modelgate.serving import server_name

        for port in (8000, 8001):
            stop_local_server(ProcessSpec(name=server_name(port), argv=[],
                                          state_dir=REPO / ".modelgate" / "state"))


def _fmt_check(c: dict[str, Any]) -> str:
    if c["ratio"] is None or c["ci_low"] is None:
        return f"{c['name']} {c['status']}"
    return (f"{c['name']} {c['status']} {c['ratio']:.2f}x [{c['ci_low']:.2f}-"
            f"{c['ci_high']:.2f}]")


def summarize(trials: list[TrialResult], round_walls: list[float], args: argparse.Namespace,
              delay_ms: float, total_s: float) -> dict[str, Any]:
    """The final numbers: error rates with Wilson intervals, and the cost per decision."""
    out: dict[str, Any] = {"kinds": {}}
    for kind in ("aa", "regression"):
        sub = [t for t in trials if t.kind == kind]
        counts = {d: sum(1 for t in sub if t.decision == d)
                  for d in ("pass", "fail", "inconclusive")}
        walls = [t.wall_s for t in sub]
        lo, hi = wilson_interval(counts["fail"], len(sub))
        out["kinds"][kind] = {
            "trials": len(sub), **counts,
            "fail_rate": counts["fail"] / len(sub) if sub else None,
            "fail_rate_ci95": [round(lo, 3), round(hi, 3)],
            "wall_s_mean": round(statistics.mean(walls), 1) if walls else None,
            "wall_s_median": round(statistics.median(walls), 1) if walls else None,
            "rounds_mean": round(statistics.mean(t.rounds for t in sub), 2) if sub else None,
        }
    walls = [t.wall_s for t in trials]
    mean_round = statistics.mean(round_walls) if round_walls else 0.0
    out.update({
        "wall_s_per_decision_mean": round(statistics.mean(walls), 1) if walls else None,
        "wall_s_per_decision_median": round(statistics.median(walls), 1) if walls else None,
        "round_wall_s_mean": round(mean_round, 1),
        # a sequential round is one variant's GuideLLM run, an interleaved one serves both
        "fixed_rounds_max_wall_s": round(
            (2 if args.design == "sequential" else 1) * args.rounds_max * mean_round, 1)
        if args.design != "play" else None,
        "seed_protocol_s": SEED_PROTOCOL_S,
        "regression_delay_ms": round(delay_ms, 1),
        "bench_wall_s": round(total_s, 1),
    })
    return out


def print_table(s: dict[str, Any], args: argparse.Namespace) -> None:
    """The human-readable summary."""
    aa, reg = s["kinds"]["aa"], s["kinds"]["regression"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}%"

    print("\n=== bench/gate summary ===")
    print(f"{'':24}{'trials':>7}{'pass':>6}{'fail':>6}{'inconcl':>9}{'FAIL rate (95% CI)':>24}"
          f"{'wall mean/median s':>21}{'rounds':>7}")
    for label, k in (("A/A (false alarms)", aa), ("regression (detected)", reg)):
        ci = f"{pct(k['fail_rate'])} ({pct(k['fail_rate_ci95'][0])}-{pct(k['fail_rate_ci95'][1])})"
        print(f"{label:24}{k['trials']:>7}{k['pass']:>6}{k['fail']:>6}{k['inconclusive']:>9}"
              f"{ci:>24}{k['wall_s_mean']!s:>10} / {k['wall_s_median']!s:<8}"
              f"{k['rounds_mean']!s:>7}")
    print(f"false-alarm rate {pct(aa['fail_rate'])} (goal <= 5%): "
          f"{'met' if aa['fail_rate'] is not None and aa['fail_rate'] <= 0.05 else 'MISSED'}; "
          f"detection rate {pct(reg['fail_rate'])} (goal >= 95%): "
          f"{'met' if reg['fail_rate'] is not None and reg['fail_rate'] >= 0.95 else 'MISSED'}")
    mean = s["wall_s_per_decision_mean"]
    what = ("the whole validate play per round" if args.design == "play"
            else "GuideLLM start-up")
    print(f"validation wall time per decision: mean {mean} s, median "
          f"{s['wall_s_per_decision_median']} s (one round {s['round_wall_s_mean']} s incl. "
          f"{what}, {args.seconds_per_round:g} s measured)")
    if mean and s["fixed_rounds_max_wall_s"]:
        print(f"  vs always running {args.rounds_max} rounds: {s['fixed_rounds_max_wall_s']} s "
              f"({s['fixed_rounds_max_wall_s'] / mean:.1f}x more); vs the seed's fixed "
              f"protocol 2 x 9 x 900 s = {s['seed_protocol_s']:.0f} s "
              f"({s['seed_protocol_s'] / mean:.0f}x more)")
    print(f"bench wall time {s['bench_wall_s'] / 60:.1f} min")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    venvs = REPO / ".modelgate" / "venvs"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="trials of EACH kind (A/A, regression)")
    p.add_argument("--design", choices=("interleaved", "sequential", "play"),
                   default="interleaved",
                   help="interleaved: one GuideLLM run per round through an interleaving proxy "
                        "(baseline and candidate requests in turn); sequential: one GuideLLM "
                        "run per variant per round, the order flipped every round; play: the "
                        "play's own validate stage, servers side by side")
    p.add_argument("--play-rounds", type=int, default=1,
                   help="play: modelgate_validate_rounds of every trial (no early stop)")
    p.add_argument("--rounds-max", type=int, default=4,
                   help="most rounds per trial before it ends inconclusive")
    p.add_argument("--min-rounds", type=int, default=1,
                   help="first look after this many rounds")
    p.add_argument("--seconds-per-round", type=float, default=20.0)
    p.add_argument("--block-seconds", type=float, default=5.0,
                   help="interleaved: length of the paired time blocks the gate resamples")
    p.add_argument("--rate", type=float, default=2.5,
                   help="constant request rate per variant (interleaved: the server receives "
                        "twice this)")
    p.add_argument("--regression-pct", type=float, default=25.0,
                   help="injected delay as %% of the baseline's median request latency")
    p.add_argument("--port", type=int, default=18910, help="vLLM server port")
    p.add_argument("--model", type=Path, default=None,
                   help="model directory (default: newest .modelgate/store/models/generated-*)")
    p.add_argument("--serve-python", default=str(venvs / "serve" / "bin" / "python"))
    p.add_argument("--guidellm", default=str(venvs / "bench" / "bin" / "guidellm"))
    p.add_argument("--policy", default=str(REPO / "bench" / "gate_policy.yaml"))
    p.add_argument("--client-cpus", default="1",
                   help="cores for GuideLLM, the proxy and this process ('' for no pinning)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.trials < 1 or args.min_rounds < 1 or args.rounds_max < args.min_rounds:
        p.error("need --trials >= 1 and --rounds-max >= --min-rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit 0 when it completed (the goals are reported, not asserted)."""
    args = parse_args(argv)
    started = time.monotonic()
    out = args.out or Path("/tmp/modelgate-bench-gate") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.design == "play":
        return play_main(args, out, started)
    model_dir = (args.model or newest_generated_model(
        REPO / ".modelgate" / "store" / "models")).resolve()
    serving = derive_serving_args(model_dir, device="cpu", gpu_memory_gib=4,
                                  overrides={"max-model-len": 1024})
    spec = local_server_spec(model_dir, SERVED_NAME, args.port, args.serve_python, serving,
                             out / "server", cpu_threads=1)
    print(f"model {model_dir}\nout {out}\nstarting vLLM on port {args.port} ...", flush=True)
    state = start_local_server(spec, startup_timeout_s(None, "cpu"))
    print(f"vLLM ready in {state.get('startup_s')} s", flush=True)
    trials: list[TrialResult] = []
    delay_ms = 0.0
    try:
        if args.client_cpus and len(os.sched_getaffinity(0)) > 1:
            # after the server started (it must not inherit this): proxy + client on core 1
            os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
        bench = Bench(args, state["base_url"], model_dir, out)
        delay_ms = bench.calibrate()
        proxy = None
        if args.design == "sequential":
            proxy = ProxyProcess(["delay-proxy", "--listen", "127.0.0.1:0", "--upstream",
                                  state["base_url"], "--delay-ms", f"{delay_ms:.1f}"],
                                 out / "delay-proxy.log")
            bench.proxy_url = proxy.url
        try:
            trials = run_trials(bench, args, delay_ms, out)
        finally:
            proxy_stats = proxy.stop() if proxy is not None else {}
        round_walls = bench.round_walls
    finally:
        stop_local_server(spec)
    summary = summarize(trials, round_walls, args, delay_ms, time.monotonic() - started)
    summary.update({"args": {k: str(v) for k, v in vars(args).items()},
                    "proxy": proxy_stats, "model": str(model_dir),
                    "trials": [asdict(t) for t in trials]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary, args)
    print(f"details: {out / 'summary.json'}")
    return 0


def run_trials(bench: Bench | PlayBench, args: argparse.Namespace, delay_ms: float,
               out: Path) -> list[TrialResult]:
    """2 x --trials trials, A/A and regression alternating (so slow drift hits both kinds
    alike), each printed as it ends and saved to trials.json."""
    trials: list[TrialResult] = []
    kinds = ("aa", "regression")
    for i in range(2 * args.trials):
        t = bench.trial(i + 1, kinds[i % 2], delay_ms)
        trials.append(t)
        print(f"trial {t.index:2d} {t.kind:10} -> {t.decision.upper():12} after "
              f"{t.rounds} round(s), {t.wall_s:6.1f} s | "
              + " | ".join(_fmt_check(c) for c in t.checks), flush=True)
        (out / "trials.json").write_text(json.dumps([asdict(x) for x in trials], indent=2))
    return trials


def play_main(args: argparse.Namespace, out: Path, started: float) -> int:
    """--design play: trials of the play's validate stage."""
    bench = PlayBench(args, out)
    print(f"out {out}\npreparing a run of the embedded default (baseline = candidate) ...",
          flush=True)
    bench.prepare()
    try:
        delay_ms = bench.calibrate()
        trials = run_trials(bench, args, delay_ms, out)
    finally:
        bench.stop_servers()
    summary = summarize(trials, bench.round_walls, args, delay_ms, time.monotonic() - started)
    summary.update({"args": {k: str(v) for k, v in vars(args).items()},
                    "trials": [asdict(t) for t in trials]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary, args)
    print(f"details: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
