"""The gate: compare each candidate variant with its baseline and decide pass / fail / inconclusive.

It also checks absolute service levels (``slos:``) on the candidate alone, see "SLOs" below.

Inputs (the run directory ``runs/<run_id>/``, one folder per variant)
----------------------------------------------------------------------
``manifest.json``
    ``{"run_id": str, "variants": [{"name": str, "recipe": ..., "baseline": bool}, ...], ...}``;
    exactly one variant has ``"baseline": true``.
``<variant>/guidellm/results.json`` (and ``results-r2.json``, ``results-r3.json``, ... for repeated
rounds; ``results.json`` is round 1). Normalized load results::

    {"variant": str,
     "rates": [{"rate": float, "profile": "constant", "duration_s": float,
                "requests": {"successful": int, "errored": int, "incomplete": int},
                "metrics": {"request_latency_s" | "ttft_ms" | "itl_ms" | "tpot_ms":
                               {"mean", "p50", "p90", "p95", "p99"}},
                "throughput": {"requests_per_s": float, "output_tokens_per_s": float},
                "samples": {"request_latency_s": [float, ...], "ttft_ms": [...],
                            "itl_ms": [...], "tpot_ms": [...]},
                "blocks": {"request_latency_s": [int, ...], ...}}]}   # interleaved runs only

    ``blocks`` (written by ``modelgate.loadtest.split_interleaved`` for variants measured
    together through ``modelgate interleave-proxy``) gives each sample's time block of the run.

    ``samples`` hold one value per successful request; ``samples_aligned`` (written by
    ``modelgate.loadtest``) says whether every metric has one, in the same order, so a
    request's metrics can be read together (SLO attainment needs that). A raw GuideLLM
    JSON report of any layout since 0.3 (it has ``benchmarks``) is accepted too and
    normalized by ``modelgate.loadtest``.
``<variant>/accuracy/results.json``::

    {"tasks": {"<task>": {"metric": "acc" | "exact_match", "score": float, "n": int,
                          "samples": {"<doc_id>": 0.0 | 1.0}}}}
``<variant>/fidelity.json`` (candidates only)::

    {"baseline": "bf16", "prompts": int, "tokens": int, "flip_rate": float, "kl_mean": float,
     "per_prompt": [{"flip_rate": float, "kl_mean": float, "tokens": int (optional)}]}

``--baseline`` / ``--candidate`` may each be a variant folder, a ``guidellm`` folder, or one JSON
file of any of the kinds above (normalized or raw load results, accuracy, fidelity).

Statistics
----------
* Latency metrics (request_latency_s, ttft_ms, itl_ms, tpot_ms): the statistic (p50/p90/p95/p99/
  mean) is computed on the pooled per-request samples of every round; the 95% confidence interval
  of the candidate/baseline ratio comes from a bootstrap. With several rounds per variant the
  bootstrap is hierarchical (resample rounds, then requests within each round), so run-to-run
  spread widens the interval as it should; when both variants have the same round ids (measured
  interleaved: A1 B1 A2 B2 ...) the rounds are resampled *paired*, cancelling slow drift.
  Variants measured *together* (one load run through the interleaving proxy, their requests
  dealt out in turn) are paired at a finer grain: each round is cut into its time blocks
  (``blocks``), and the bootstrap resamples blocks, the same blocks for both variants, so a
  few slow seconds of the host fall on both alike; ``min_rounds`` then counts blocks.
  Decision for ``lower_is_better`` with tolerance t: FAIL when the CI's low end is above 1+t
  (the regression is proven), PASS when its high end is at most 1+t, INCONCLUSIVE otherwise.
* One round per variant, measured one after the other (the play's ``modelgate_validate_rounds:
  1``; or one variant with 2+ rounds against one with a single round): that interval covers the
  noise within each run, not the drift of the host between the two runs (the same server's
  median moved up to 1.38x from one run to the next on the 2-core CI host, while each run's
  interval was a few percent wide: a sequential A/A pair failed on it). By default such a
  latency check is INCONCLUSIVE, whatever its interval says, with the cause and the fix (2+
  rounds per variant, or the variants measured together) in its reason; its numbers stay in
  the result (``one_round: true``). A policy's ``single_round_drift: d`` (a factor from 1 to
  10) states how far one run may drift from another: the interval [lo, hi] is widened to
  [lo / d, hi * d] and decided as above, so a one-round comparison FAILS only when even d of
  drift cannot explain the regression (low end above (1+t) * d) and PASSES only when it is
  within the limit with d of drift against it (high end at most (1+t) / d); an A/A pair
  drifted by less than d never fails, a 2-3x regression still does with d = 1.5.
  ``single_round_drift: 1`` trusts the within-run interval. Not affected: 2+ rounds per
  variant (the hierarchical bootstrap sees the between-run spread) and variants measured
  together (their time blocks share the drift); ``min_rounds`` above 1 still makes one round
  INCONCLUSIVE first ("too few rounds"). The same holds for the summary-based p50 and mean
  below. Throughput with one round is inconclusive anyway (no interval), and SLOs, decided
  on the candidate alone, are not affected.
* error_rate = errored / (successful + errored) per rate (incomplete requests, cut off by the
  end of the run, are not errors). Newcombe's hybrid-score CI of the difference candidate -
  baseline: FAIL when its low end exceeds the absolute slack, PASS when the observed increase is
  within the slack (zero errors against zero errors must pass at any n), INCONCLUSIVE otherwise.
* throughput (``throughput`` = output tokens/s, or ``throughput:requests_per_s``): one number per
  round, so a CI needs 2+ rounds per variant (bootstrap over rounds); with one round the check is
  inconclusive and reports the point ratio.
* accuracy:<task> (or ``accuracy:*`` for every task): paired comparison on the doc ids both
  variants scored. Recovery = candidate mean / baseline mean; paired bootstrap CI; FAIL when the
  CI's high end is below the minimum recovery, PASS when its low end is at or above it. The exact
  sign test on discordant pairs is reported alongside. A baseline score below
  ``min_baseline_score`` (a random-weights model) leaves recovery undefined: INCONCLUSIVE.
* fidelity.flip_rate / fidelity.kl_mean: absolute limits on the candidate's numbers, with a
  bootstrap CI over prompts (token-weighted when ``per_prompt[].tokens`` is given).
* Missing data, too few samples or rounds: INCONCLUSIVE with the reason, never a silent pass.
  Policy ``inconclusive: fail`` makes an inconclusive check fail the verdict.
* A report without per-request samples (GuideLLM ``sample_size=0``, or fewer logged than
  summarised): latency p50 and mean are decided from GuideLLM's summary (standard error from
  the interquartile range or std_dev / sqrt(n), normal approximation of the log ratio); tail
  percentiles say by check name that they need samples. That interval combines the rounds'
  standard errors, so it is within-run even with 2+ rounds; one round per variant is treated
  as above.
* Benchmarks without an offered rate are gated as load points of their own ("synchronous",
  "throughput", "concurrent:<streams>"); load results from GuideLLM versions on both sides of
  0.7.4 are refused unless ``allow_mixed_guidellm_versions`` (or the CLI flag) is set.

SLOs (absolute service levels)
------------------------------
Next to the relative checks ("no worse than the baseline"), a policy may state service levels
("good enough for this product") in ``slos:``, each decided on the candidate alone (no
baseline is read; none is evaluated for the baseline either, so a baseline missing an SLO
fails nothing). Spelling::

    slos:
      - {name: ttft-p95-5rps, metric: ttft_ms, statistic: p95, rates: [5], max: 200}
      - {name: itl-p50, metric: itl_ms, statistic: p50, rates: all, max: 30}
      - {name: e2e-p99, metric: request_latency_s, statistic: p99, rates: [5], max: 2.0,
         min_samples: 200}
      - {name: chat, metric: attainment, limits: {ttft_ms: 200, itl_ms: 50}, min: 0.99}
      - {name: errors, metric: error_rate, max: 0.01}
      - {name: tput, metric: throughput, rates: [5], min: 500}  # or throughput:requests_per_s

``max`` for latencies (ms, or s for request_latency_s; ``statistic`` required) and
error_rate; ``min`` for attainment (a share) and throughput. ``rates``: ``all`` (every load
point of the candidate) or a list; ``min_samples`` (default 20) counts requests. One result
per load point, ``kind: "slo"``: PASS when the CI lies within the limit, FAIL when entirely
beyond, INCONCLUSIVE otherwise or without the data.

* Latency: bootstrap CI of the statistic over the candidate's per-request samples,
  hierarchical over rounds (over time blocks for interleaved runs; ``min_rounds`` counts
  them, as for the relative checks). Without samples, p50 and mean come from GuideLLM's
  summary (as above, value +/- z * standard error); a tail statistic says by SLO name that it
  needs samples.
* error_rate: errored / (successful + errored), Wilson score interval (0 errors in 400
  requests proves <= 1%; in 100 it cannot).
* attainment: the share of requests meeting every per-request limit in ``limits``
  (ttft_ms, itl_ms, tpot_ms, request_latency_s); errored requests count as missed,
  incomplete ones (cut off by the run's end) are left out, as GuideLLM defines SLO
  attainment. GuideLLM's stored JSON reports (through 0.8.1, the version this project
  captured) carry no attainment or goodput field, so it is computed from the per-request
  samples: without them, or when the samples are not one per request for every limit
  (``samples_aligned``), it is inconclusive. Note GuideLLM's own ``slo`` ``tpot_ms`` excludes
  the first token: that is ``itl_ms`` here. CI: Wilson interval on the pooled counts, widened
  by a bootstrap over rounds/blocks when there are 2+.
* throughput: mean of the per-round values, bootstrap over rounds; one round: inconclusive.

Dimensions: a latency SLO and attainment are latency evidence, error_rate errors,
throughput throughput; they count toward the verdict exactly as checks do (below). A policy
of SLOs alone is valid (``checks`` may then be omitted) and ``modelgate gate --candidate X
--policy P`` needs no ``--baseline``.

Verdict
-------
Each check gives evidence for one dimension: latency (request_latency_s, ttft_ms, itl_ms,
tpot_ms; SLOs on them and attainment), throughput, errors (error_rate), accuracy, fidelity.
The verdict is ``fail`` when a check failed, ``inconclusive`` when a dimension the policy
names has no check that decided ``pass`` (unless listed in the policy's
``accept_inconclusive``), else ``pass``; ``passed`` is ``status == "pass"``. ``modelgate
gate`` exits 0 / 1 / 3 for pass / fail / inconclusive and 2 on bad or unreadable input.
``accuracy`` may also be lm-eval's own output directory (``results_*.json`` +
``samples_*_*.jsonl``), see ``modelgate.accuracy.read_lm_eval_native``.
* The bootstrap seed is fixed per policy and per check, so a verdict is reproducible.

Statistical power (measured with a simulation: one round per variant, lognormal latencies, 2000
resamples, 40 seeds per cell; % of checks that PASS / are INCONCLUSIVE / FAIL; no A/A comparison
ever failed):

    spread (sigma)  check           n per side  A/A (ratio 1.00)    regression (ratio 1.25)
    0.15            p50, tol 10%    40          65 / 35 / 0         0 / 12 / 88
    0.15            p50, tol 10%    100         98 /  2 / 0         0 /  0 / 100
    0.15            p95, tol 15%    100         80 / 20 / 0         0 / 50 / 50
    0.15            p95, tol 15%    200        100 /  0 / 0         0 / 25 / 75
    0.30            p50, tol 10%    40          18 / 82 / 0         0 / 70 / 30
    0.30            p50, tol 10%    200         75 / 25 / 0         0 /  5 / 95
    0.30            p95, tol 15%    400         90 / 10 / 0         0 / 55 / 45

Request latency with fixed-length outputs spreads like sigma ~0.15; TTFT under load spreads more.
So: 100+ requests per rate decide a 10% p50 tolerance; with fewer the gate says "inconclusive"
rather than guessing, and tail statistics (p95/p99) need several times more samples than p50.
The table measures within-run noise only: it is what one round per variant can decide when the
host does not drift between runs (``single_round_drift: 1``). On a noisy shared host (run-to-run
medians differing by up to 1.38x) measure 2+ rounds per variant, order flipped, or the variants
together through the interleaving proxy, so the bootstrap sees the between-run spread; the
default makes a lone round's latency checks inconclusive (see above).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelgate.errors import ModelGateError

if TYPE_CHECKING:  # numpy is imported lazily: modelgate must import in every virtualenv
    import numpy as np

LATENCY_METRICS = ("request_latency_s", "ttft_ms", "itl_ms", "tpot_ms")
THROUGHPUT_FIELDS = ("output_tokens_per_s", "requests_per_s")
FIDELITY_METRICS = ("fidelity.flip_rate", "fidelity.kl_mean")
STATISTICS = ("p50", "p90", "p95", "p99", "mean")
DIRECTIONS = ("lower_is_better", "higher_is_better")
STATUSES = ("pass", "fail", "inconclusive")
_QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
_ACCURACY_RE = re.compile(r"^accuracy:(\*|[A-Za-z0-9_.\-]+)$")
_ROUND_FILE_RE = re.compile(r"^results(?:-r(\d+))?\.json$")
_CHECK_KEYS = {
    "name", "metric", "rates", "statistic", "direction", "tolerance", "min_samples", "description",
}
_POLICY_KEYS = {"checks", "slos", "inconclusive", "min_rounds", "min_baseline_score",
                "bootstrap", "accept_inconclusive", "allow_mixed_guidellm_versions",
                "single_round_drift"}
# The widest drift allowance a policy may set: larger values read like a percentage (40 for
# 40%) and would make a one-round latency check unable ever to fail.
_MAX_SINGLE_ROUND_DRIFT = 10.0
_SLO_KEYS = {"name", "metric", "statistic", "rates", "max", "min", "limits", "min_samples",
             "description"}
# SLO metrics and the one bound each takes: latencies and the error rate have a ceiling,
# attainment and throughput a floor.
SLO_METRICS = (*LATENCY_METRICS, "error_rate", "attainment", "throughput",
               "throughput:output_tokens_per_s", "throughput:requests_per_s")
# What a verdict needs evidence for: each dimension a policy's checks name must have at least
# one check that decided "pass" and none that failed (see GateVerdict.status).
DIMENSIONS = ("latency", "throughput", "errors", "accuracy", "fidelity")
_KIND_DIMENSION = {"latency": "latency", "throughput": "throughput", "error_rate": "errors",
                   "accuracy": "accuracy", "fidelity": "fidelity"}
# How to get the data a dimension lacks, for the verdict's message.
_HOW_TO_GET = {
    "latency": "run `modelgate loadtest` for both variants, or pass GuideLLM JSON reports / "
               "guidellm/results.json that keep per-request samples",
    "throughput": "measure 2+ load-test rounds per variant (`modelgate loadtest --interleave "
                  "... --round N`)",
    "errors": "run `modelgate loadtest` for both variants, or pass GuideLLM JSON reports",
    "accuracy": "run `modelgate accuracy` for both variants, or pass lm-eval's --output_path "
                "directory (run with --log_samples) / accuracy/results.json",
    "fidelity": "run `modelgate fidelity collect` on the baseline and the candidate, then "
                "`modelgate fidelity compare` to write the candidate's fidelity.json",
}
# A latency check of one round per variant measured one after the other (see _judge_ratio):
# why it is undecided without the policy's single_round_drift, and what decides it.
_SINGLE_ROUND_CAUSE = ("one round per variant, measured one after the other: a within-run "
                       "interval cannot see the drift between runs")
_SINGLE_ROUND_FIX = ("measure 2+ rounds per variant (inventory: modelgate_validate_rounds: 2) "
                     "or the variants together (modelgate loadtest --interleave), or set "
                     "single_round_drift in the gate policy (such as 1.5)")
# GuideLLM 0.7.4 changed how token events are bounded (DESIGN.md field notes).
_TOKEN_EVENTS_VERSION = "0.7.4"
# modelgate gate's exit code per verdict status (2: bad input, from modelgate.cli)
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}
_UNITS = {"request_latency_s": "s", "ttft_ms": "ms", "itl_ms": "ms", "tpot_ms": "ms"}
_SLO_UNITS = {**{k: f" {v}" for k, v in _UNITS.items()}, "throughput": " tokens/s",
              "throughput:output_tokens_per_s": " tokens/s",
              "throughput:requests_per_s": " requests/s"}


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateCheck:
    """One policy check: a metric, how to summarise it, which way is better, and the limit."""

    name: str
    metric: str
    statistic: str | None
    rates: str | tuple[float, ...]
    direction: str
    tolerance: float
    min_samples: int

    @property
    def dimension(self) -> str:
        """The verdict dimension this check gives evidence for (one of DIMENSIONS)."""
        return _KIND_DIMENSION[self.kind]

    @property
    def kind(self) -> str:
        """Family of the metric: latency, error_rate, throughput, accuracy or fidelity."""
        if self.metric in LATENCY_METRICS:
            return "latency"
        if self.metric.startswith("throughput"):
            return "throughput"
        if self.metric.startswith("accuracy:"):
            return "accuracy"
        if self.metric.startswith("fidelity."):
            return "fidelity"
        return "error_rate"


@dataclass(frozen=True)
class GateSLO:
    """One absolute service level, decided on the candidate alone (no baseline).

    ``bound`` is "max" (latency, error_rate: the value must stay at or below ``limit``) or
    "min" (attainment, throughput: at or above). ``limits`` (attainment only) are the
    per-request objectives, {latency metric: ceiling}, that a request must all meet.
    """

    name: str
    metric: str
    statistic: str | None
    rates: str | tuple[float, ...]
    bound: str
    limit: float
    min_samples: int
    limits: tuple[tuple[str, float], ...] = ()

    @property
    def kind(self) -> str:
        """latency, error_rate, attainment or throughput."""
        if self.metric in LATENCY_METRICS:
            return "latency"
        if self.metric.startswith("throughput"):
            return "throughput"
        return self.metric

    @property
    def dimension(self) -> str:
        """The verdict dimension: a latency SLO and an attainment SLO (the share of requests
        meeting latency objectives) are latency evidence; error_rate is errors; throughput
        is throughput."""
        return {"latency": "latency", "attainment": "latency", "error_rate": "errors",
                "throughput": "throughput"}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, recorded in gate.json."""
        return {"name": self.name, "metric": self.metric, "statistic": self.statistic,
                "rates": self.rates if isinstance(self.rates, str) else list(self.rates),
                self.bound: self.limit, "min_samples": self.min_samples,
                **({"limits": dict(self.limits)} if self.limits else {})}


@dataclass(frozen=True)
class BootstrapSettings:
    """Bootstrap parameters; the fixed seed makes every verdict reproducible."""

    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 20261130


@dataclass(frozen=True)
class GatePolicy:
    """A parsed, validated gate policy."""

    checks: tuple[GateCheck, ...]
    inconclusive: str = "warn"
    min_rounds: int = 1
    min_baseline_score: float = 0.02
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    source: str = "default"
    # dimensions whose lack of a deciding check does not block a pass (e.g. accuracy when a
    # run measures load only)
    accept_inconclusive: tuple[str, ...] = ()
    allow_mixed_guidellm_versions: bool = False
    # absolute service levels, decided on the candidate alone
    slos: tuple[GateSLO, ...] = ()
    # How far (a factor >= 1) one run of a server may drift from another; applied to latency
    # checks with one round per variant measured one after the other. None: such a check is
    # inconclusive, since its within-run interval cannot see that drift.
    single_round_drift: float | None = None

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions this policy's checks and SLOs name, in DIMENSIONS order."""
        named = {c.dimension for c in self.checks} | {s.dimension for s in self.slos}
        return tuple(d for d in DIMENSIONS if d in named)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, recorded in gate.json."""
        data = asdict(self)
        data["accept_inconclusive"] = list(self.accept_inconclusive)
        data["checks"] = [
            {**asdict(c), "rates": c.rates if isinstance(c.rates, str) else list(c.rates)}
            for c in self.checks
        ]
        data["slos"] = [s.to_dict() for s in self.slos]
        return data


def default_policy_path() -> Path:
    """Path of the packaged default policy YAML."""
    return Path(str(resources.files("modelgate") / "data" / "gate_policy_default.yaml"))


def load_policy(policy: GatePolicy | dict[str, Any] | str | Path | None = None) -> GatePolicy:
    """Return a validated policy from a GatePolicy, a dict, a YAML file path, or None (default)."""
    if isinstance(policy, GatePolicy):
        return policy
    if policy is None:
        policy = default_policy_path()
    if isinstance(policy, dict):
        return parse_policy(policy, source="<dict>")
    path = Path(policy)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelGateError(
            f"gate policy {path} is not text (byte {exc.start} is not UTF-8)", field="policy",
            fix="pass a gate policy YAML file, or omit it to use the default policy",
        ) from exc
    except OSError as exc:
        raise ModelGateError(
            f"cannot read gate policy {path}: {exc.strerror}",
            field="policy",
            fix="pass an existing YAML file, or omit it to use the default policy",
        ) from exc
    except yaml.YAMLError as exc:
        raise ModelGateError(
            f"gate policy {path} is not valid YAML: {exc}", field="policy", fix="fix the YAML"
        ) from exc
    return parse_policy(data, source=str(path))


def _metric_known(metric: str) -> bool:
    return (
        metric in LATENCY_METRICS
        or metric in FIDELITY_METRICS
        or metric in ("error_rate", "throughput")
        or metric in {f"throughput:{f}" for f in THROUGHPUT_FIELDS}
        or bool(_ACCURACY_RE.match(metric))
    )


def with_tolerances(policy: GatePolicy, tolerances: dict[str, Any]) -> GatePolicy:
    """The policy with the tolerance of every check of a dimension replaced: ``{"latency":
    0.2}`` lets each latency check be 20% worse, ``{"accuracy": 0.98}`` sets the minimum
    recovery. A job template's survey states thresholds this way, without a policy file; each
    value is checked as the policy file's own would be."""
    if not tolerances:
        return policy
    unknown = sorted(set(tolerances) - set(DIMENSIONS))
    if unknown:
        raise ModelGateError(f"unknown gate dimension {unknown[0]!r} in tolerances",
                             field=f"tolerances.{unknown[0]}",
                             fix=f"use some of {', '.join(DIMENSIONS)}")
    missing = [d for d in tolerances if not any(c.dimension == d for c in policy.checks)]
    if missing:
        raise ModelGateError(
            f"gate policy {policy.source} has no {missing[0]} check to set a tolerance for",
            field=f"tolerances.{missing[0]}",
            fix=f"leave it out, or add a {missing[0]} check to the policy file")
    checks = []
    for index, check in enumerate(policy.checks):
        if check.dimension in tolerances:
            raw = {**asdict(check), "tolerance": tolerances[check.dimension],
                   "rates": check.rates if isinstance(check.rates, str) else list(check.rates)}
            if raw["statistic"] is None:
                del raw["statistic"]
            try:
                check = _parse_check(raw, index, f"tolerances.{check.dimension}")
            except ModelGateError as exc:
                raise ModelGateError(str(exc), field=f"tolerances.{check.dimension}",
                                     fix=exc.fix) from exc
        checks.append(check)
    given = ", ".join(f"{d}={tolerances[d]}" for d in DIMENSIONS if d in tolerances)
    return replace(policy, checks=tuple(checks), source=f"{policy.source} (tolerances {given})")


def _natural_direction(metric: str) -> str | None:
    """The only sensible direction for metrics whose tolerance is not a relative ratio."""
    if metric.startswith("accuracy:"):
        return "higher_is_better"
    if metric == "error_rate" or metric.startswith("fidelity."):
        return "lower_is_better"
    if metric.startswith("throughput"):
        return "higher_is_better"
    return None


def _parse_check(raw: Any, index: int, source: str) -> GateCheck:
    where = f"checks[{index}]"
    fix = f"see {default_policy_path()} for the accepted fields"
    if not isinstance(raw, dict):
        raise ModelGateError(f"{source}: {where} must be a mapping", field=where, fix=fix)
    unknown = sorted(set(raw) - _CHECK_KEYS)
    if unknown:
        raise ModelGateError(
            f"{source}: unknown field {unknown[0]!r} in {where}", field=f"{where}.{unknown[0]}",
            fix=f"accepted fields: {', '.join(sorted(_CHECK_KEYS))}",
        )
    metric = raw.get("metric")
    if not isinstance(metric, str) or not _metric_known(metric):
        raise ModelGateError(
            f"{source}: unknown metric {metric!r} in {where}", field=f"{where}.metric",
            fix="use one of " + ", ".join(
                [*LATENCY_METRICS, "error_rate", "throughput", "throughput:requests_per_s",
                 "accuracy:<task>", "accuracy:*", *FIDELITY_METRICS]
            ),
        )
    name = str(raw.get("name") or metric)
    natural = _natural_direction(metric)
    direction = raw.get("direction", natural or "lower_is_better")
    if direction not in DIRECTIONS or (
        natural and direction != natural and not metric.startswith("throughput")
    ):
        allowed = [natural] if natural and not metric.startswith("throughput") else DIRECTIONS
        raise ModelGateError(
            f"{source}: direction {direction!r} is not valid for {metric} in {where}",
            field=f"{where}.direction", fix=f"use {' or '.join(allowed)}",
        )
    statistic: str | None = None
    if metric in LATENCY_METRICS:
        statistic = raw.get("statistic", "p50")
        if statistic not in STATISTICS:
            raise ModelGateError(
                f"{source}: unknown statistic {statistic!r} in {where}",
                field=f"{where}.statistic", fix=f"use one of {', '.join(STATISTICS)}",
            )
    elif metric.startswith("throughput"):
        statistic = "mean"
    tolerance = raw.get("tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ModelGateError(
            f"{source}: tolerance must be a non-negative number in {where}",
            field=f"{where}.tolerance",
            fix="e.g. 0.10 (latency: 10% worse at most), 0.99 (accuracy: minimum recovery)",
        )
    if metric.startswith("accuracy:") and not 0 < tolerance <= 1.5:
        raise ModelGateError(
            f"{source}: accuracy tolerance is a minimum recovery such as 0.99, got {tolerance}",
            field=f"{where}.tolerance", fix="use a recovery between 0 and 1.5, e.g. 0.99",
        )
    rates_raw = raw.get("rates", "all")
    rates: str | tuple[float, ...]
    if rates_raw == "all":
        rates = "all"
    elif isinstance(rates_raw, list) and rates_raw and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) for r in rates_raw
    ):
        rates = tuple(float(r) for r in rates_raw)
    else:
        raise ModelGateError(
            f"{source}: rates must be 'all' or a list of numbers in {where}",
            field=f"{where}.rates", fix="e.g. rates: all, or rates: [1.0, 3.0]",
        )
    min_samples = raw.get("min_samples", 1)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ModelGateError(
            f"{source}: min_samples must be a positive integer in {where}",
            field=f"{where}.min_samples", fix="e.g. min_samples: 20",
        )
    return GateCheck(
        name=name, metric=metric, statistic=statistic, rates=rates, direction=direction,
        tolerance=float(tolerance), min_samples=min_samples,
    )


def _slo_number(raw: dict[str, Any], key: str, where: str, source: str, ok: Any,
                what: str, example: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ModelGateError(
            f"{source}: {where}.{key} must be {what}, got {value!r}", field=f"{where}.{key}",
            fix=f"e.g. {key}: {example}")
    return float(value)


def _parse_slo(raw: Any, index: int, source: str) -> GateSLO:
    where = f"slos[{index}]"
    if not isinstance(raw, dict):
        raise ModelGateError(
            f"{source}: {where} must be a mapping", field=where,
            fix="e.g. {name: ttft-p95, metric: ttft_ms, statistic: p95, rates: [5], max: 200}")
    unknown = sorted(set(raw) - _SLO_KEYS)
    if unknown:
        raise ModelGateError(
            f"{source}: unknown field {unknown[0]!r} in {where}", field=f"{where}.{unknown[0]}",
            fix=f"accepted fields: {', '.join(sorted(_SLO_KEYS))}")
    metric = raw.get("metric")
    if metric not in SLO_METRICS:
        raise ModelGateError(
            f"{source}: unknown SLO metric {metric!r} in {where}", field=f"{where}.metric",
            fix=f"use one of {', '.join(SLO_METRICS)}")
    floor = metric == "attainment" or metric.startswith("throughput")
    bound, other = ("min", "max") if floor else ("max", "min")
    if other in raw:
        side = "higher" if floor else "lower"
        raise ModelGateError(
            f"{source}: {where}: {metric} is {side}-is-better, so its SLO is a {bound}, "
            f"not a {other}", field=f"{where}.{other}",
            fix=f"state {bound}: <limit> instead of {other}")
    if bound not in raw:
        raise ModelGateError(
            f"{source}: {where} has no {bound} (the service level to meet)",
            field=f"{where}.{bound}",
            fix={"attainment": "e.g. min: 0.99 (share of requests meeting every limit)",
                 "error_rate": "e.g. max: 0.01 (at most 1% errored requests)"}.get(
                metric, "e.g. min: 500 (output tokens/s)" if floor else
                f"e.g. max: {2.0 if metric == 'request_latency_s' else 200} "
                f"({_UNITS.get(metric, '')})"))
    if metric == "attainment":
        limit = _slo_number(raw, "min", where, source, lambda v: 0 < v <= 1,
                            "a share in (0, 1]", "0.99")
    elif metric == "error_rate":
        limit = _slo_number(raw, "max", where, source, lambda v: 0 <= v < 1,
                            "a fraction in [0, 1)", "0.01")
    else:
        unit = _UNITS.get(metric, "tokens/s" if metric != "throughput:requests_per_s"
                          else "requests/s")
        limit = _slo_number(raw, bound, where, source, lambda v: v > 0,
                            f"a positive number in {unit}", "200" if unit == "ms" else "2.0")
    statistic: str | None = None
    if metric in LATENCY_METRICS:
        statistic = raw.get("statistic")
        if statistic not in STATISTICS:
            raise ModelGateError(
                f"{source}: {where}: a latency SLO needs a statistic, got {statistic!r}",
                field=f"{where}.statistic",
                fix=f"use one of {', '.join(STATISTICS)} (e.g. statistic: p95)")
    elif "statistic" in raw:
        raise ModelGateError(
            f"{source}: {where}: {metric} takes no statistic", field=f"{where}.statistic",
            fix="remove statistic (it applies to request_latency_s, ttft_ms, itl_ms, tpot_ms)")
    limits: tuple[tuple[str, float], ...] = ()
    if metric == "attainment":
        lim_raw = raw.get("limits")
        if not isinstance(lim_raw, dict) or not lim_raw:
            raise ModelGateError(
                f"{source}: {where}: attainment needs limits, the per-request objectives",
                field=f"{where}.limits", fix="e.g. limits: {ttft_ms: 200, itl_ms: 50}")
        for key, value in lim_raw.items():
            if key not in LATENCY_METRICS:
                raise ModelGateError(
                    f"{source}: {where}.limits: unknown metric {key!r}",
                    field=f"{where}.limits.{key}",
                    fix=f"use some of {', '.join(LATENCY_METRICS)} (GuideLLM's slo tpot_ms, "
                        "which excludes the first token, is itl_ms here)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ModelGateError(
                    f"{source}: {where}.limits.{key} must be a positive number, got {value!r}",
                    field=f"{where}.limits.{key}",
                    fix=f"e.g. {key}: {2.0 if key == 'request_latency_s' else 200} "
                        f"({_UNITS[key]})")
        limits = tuple((m, float(lim_raw[m])) for m in LATENCY_METRICS if m in lim_raw)
    elif "limits" in raw:
        raise ModelGateError(
            f"{source}: {where}: limits belong to metric: attainment", field=f"{where}.limits",
            fix="remove limits, or use metric: attainment with min: <share>")
    rates_raw = raw.get("rates", "all")
    rates: str | tuple[float, ...]
    if rates_raw == "all":
        rates = "all"
    elif isinstance(rates_raw, list) and rates_raw and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates_raw
    ):
        rates = tuple(float(r) for r in rates_raw)
    else:
        raise ModelGateError(
            f"{source}: {where}.rates must be 'all' or a list of positive numbers, got "
            f"{rates_raw!r}", field=f"{where}.rates",
            fix="e.g. rates: all, or rates: [5] (requests per second)")
    min_samples = raw.get("min_samples", 20)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ModelGateError(
            f"{source}: {where}.min_samples must be a positive integer, got {min_samples!r}",
            field=f"{where}.min_samples", fix="e.g. min_samples: 100")
    default_name = "-".join(x for x in ("slo", metric.replace(":", "-"), statistic) if x)
    return GateSLO(name=str(raw.get("name") or default_name), metric=metric,
                   statistic=statistic, rates=rates, bound=bound, limit=limit,
                   min_samples=min_samples, limits=limits)


def parse_policy(data: Any, source: str = "<policy>") -> GatePolicy:
    """Validate a policy mapping; a wrong field raises ModelGateError naming it."""
    if not isinstance(data, dict):
        raise ModelGateError(f"{source}: a gate policy must be a mapping", field="policy")
    unknown = sorted(set(data) - _POLICY_KEYS)
    if unknown:
        raise ModelGateError(
            f"{source}: unknown policy field {unknown[0]!r}", field=unknown[0],
            fix=f"accepted fields: {', '.join(sorted(_POLICY_KEYS))}",
        )
    raw_slos = data.get("slos") or []
    if not isinstance(raw_slos, list):
        raise ModelGateError(
            f"{source}: slos must be a list", field="slos",
            fix="e.g. slos: [{name: ttft-p95, metric: ttft_ms, statistic: p95, max: 200}]")
    slos = tuple(_parse_slo(s, i, source) for i, s in enumerate(raw_slos))
    names = [s.name for s in slos]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ModelGateError(
            f"{source}: two SLOs are named {dup!r}",
            field=f"slos[{names.index(dup, names.index(dup) + 1)}].name",
            fix="give each SLO its own name")
    raw_checks = data.get("checks", [] if slos else None)
    if not isinstance(raw_checks, list) or not (raw_checks or slos):
        raise ModelGateError(
            f"{source}: checks must be a non-empty list (or slos must name one)",
            field="checks", fix=f"see {default_policy_path()} for the accepted fields")
    checks = tuple(_parse_check(c, i, source) for i, c in enumerate(raw_checks))
    inconclusive = data.get("inconclusive", "warn")
    if inconclusive not in ("warn", "fail"):
        raise ModelGateError(
            f"{source}: inconclusive must be warn or fail, got {inconclusive!r}",
            field="inconclusive", fix="use inconclusive: warn (default) or inconclusive: fail",
        )
    min_rounds = data.get("min_rounds", 1)
    if isinstance(min_rounds, bool) or not isinstance(min_rounds, int) or min_rounds < 1:
        raise ModelGateError(f"{source}: min_rounds must be >= 1", field="min_rounds")
    mbs = data.get("min_baseline_score", 0.02)
    if isinstance(mbs, bool) or not isinstance(mbs, (int, float)) or mbs < 0:
        raise ModelGateError(
            f"{source}: min_baseline_score must be a number >= 0", field="min_baseline_score"
        )
    boot_raw = data.get("bootstrap") or {}
    if not isinstance(boot_raw, dict) or set(boot_raw) - {"resamples", "confidence", "seed"}:
        raise ModelGateError(
            f"{source}: bootstrap accepts resamples, confidence and seed", field="bootstrap"
        )
    boot = BootstrapSettings(
        resamples=int(boot_raw.get("resamples", 2000)),
        confidence=float(boot_raw.get("confidence", 0.95)),
        seed=int(boot_raw.get("seed", 20261130)),
    )
    if boot.resamples < 200 or not 0.5 < boot.confidence < 1:
        raise ModelGateError(
            f"{source}: bootstrap needs resamples >= 200 and 0.5 < confidence < 1",
            field="bootstrap", fix="e.g. resamples: 2000, confidence: 0.95",
        )
    accept = data.get("accept_inconclusive", [])
    if isinstance(accept, str):
        accept = [accept]
    if not isinstance(accept, list) or not all(a in DIMENSIONS for a in accept):
        raise ModelGateError(
            f"{source}: accept_inconclusive must be a list of dimensions, got {accept!r}",
            field="accept_inconclusive",
            fix=f"use a list of: {', '.join(DIMENSIONS)} (e.g. accept_inconclusive: [fidelity])",
        )
    mixed = data.get("allow_mixed_guidellm_versions", False)
    if not isinstance(mixed, bool):
        raise ModelGateError(
            f"{source}: allow_mixed_guidellm_versions must be true or false",
            field="allow_mixed_guidellm_versions", fix="allow_mixed_guidellm_versions: false")
    drift = data.get("single_round_drift")
    if drift is not None and (isinstance(drift, bool) or not isinstance(drift, (int, float))
                              or not 1.0 <= drift <= _MAX_SINGLE_ROUND_DRIFT):
        raise ModelGateError(
            f"{source}: single_round_drift must be a factor from 1 to "
            f"{_MAX_SINGLE_ROUND_DRIFT:g} (or null), got {drift!r}", field="single_round_drift",
            fix="e.g. single_round_drift: 1.5 (one run of a server may be up to 1.5x slower or "
                "faster than another); 1 trusts the within-run interval; null (default) makes "
                "one-round latency checks inconclusive")
    return GatePolicy(
        checks=checks, inconclusive=inconclusive, min_rounds=min_rounds,
        min_baseline_score=float(mbs), bootstrap=boot, source=source,
        accept_inconclusive=tuple(d for d in DIMENSIONS if d in accept),
        allow_mixed_guidellm_versions=mixed, slos=slos,
        single_round_drift=None if drift is None else float(drift),
    )


# --------------------------------------------------------------------------------------------
# Results on disk
# --------------------------------------------------------------------------------------------


@dataclass
class LoadRound:
    """One load-test round of one variant: normalized rate entries keyed by rate."""

    round_id: str
    path: str
    # keyed by offered rate (constant/poisson), or by "synchronous", "throughput",
    # "concurrent:<streams>" for benchmarks without one (see _point_key)
    rates: dict[float | str, dict[str, Any]]
    # GuideLLM report layout and version (modelgate.loadtest.report_format), when known
    guidellm: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantResults:
    """Everything measured for one variant (any part may be absent)."""

    name: str
    source: str
    rounds: list[LoadRound] = field(default_factory=list)
    accuracy: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None

    @property
    def rates(self) -> list[float]:
        """Every offered rate measured in any round, ascending (load points without a rate,
        such as synchronous, are in ``points``)."""
        return sorted({r for rnd in self.rounds for r in rnd.rates if isinstance(r, float)})

    @property
    def points(self) -> list[float | str]:
        """Every load point of any round: rates ascending, then the named points."""
        keys = {r for rnd in self.rounds for r in rnd.rates}
        return [*sorted(k for k in keys if isinstance(k, float)),
                *sorted(k for k in keys if isinstance(k, str))]

    @property
    def guidellm_sides(self) -> dict[str, str]:
        """{round file: "pre-0.7.4" | "0.7.4+"} for rounds whose GuideLLM side is known."""
        return {rnd.path: rnd.guidellm["token_events"] for rnd in self.rounds
                if rnd.guidellm.get("token_events")}


def _rate_key(rate: Any) -> float:
    # Rates travel through JSON and YAML; round so 2.0 and 2.0000000001 match.
    return round(float(rate), 6)


def _point_key(entry: dict[str, Any]) -> float | str | None:
    """Where a benchmark sits in the sweep: its offered rate, else its strategy (a
    synchronous or throughput benchmark, a concurrent one by its streams); None: not gated."""
    rate = entry.get("rate")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        return _rate_key(rate)
    profile = entry.get("profile")
    if profile in ("synchronous", "throughput"):
        return str(profile)
    if profile == "concurrent" and isinstance(entry.get("streams"), int):
        return f"concurrent:{entry['streams']}"
    return None


def _read_json(path: Path, role: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelGateError(
            f"{role} file {path} is not text (not JSON): {exc.reason}", field=role,
            fix="pass a JSON results file: guidellm/results.json, a GuideLLM report, "
                "accuracy/results.json, lm-eval's output directory or fidelity.json",
        ) from exc
    except OSError as exc:
        raise ModelGateError(
            f"cannot read {role} file {path}: {exc.strerror}", field=role,
            fix="check the path and its permissions",
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelGateError(
            f"{role} file {path} is not valid JSON: {exc}", field=role,
            fix="re-run the stage that wrote it",
        ) from exc


def _load_round(data: Any, path: Path, round_id: str, role: str, variant: str) -> LoadRound:
    if isinstance(data, dict) and "benchmarks" in data and "rates" not in data:
        try:
            from modelgate.loadtest import normalize_guidellm_report
        except ImportError as exc:
            raise ModelGateError(
                f"{path} is a raw GuideLLM report and modelgate.loadtest is unavailable",
                field=role, fix="pass the normalized results.json instead",
            ) from exc
        try:
            data = normalize_guidellm_report(data, variant)
        except ModelGateError as exc:
            raise ModelGateError(f"{role} file {path}: {exc.message}", field=role,
                                 fix=exc.fix) from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelGateError(
                f"{role} file {path} looks like a GuideLLM report but cannot be read: {exc}",
                field=role, fix="pass the JSON report GuideLLM wrote, unchanged") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rates"), list):
        raise ModelGateError(
            f"{role} load results {path} have no 'rates' list", field=f"{role}: {path}",
            fix="pass a normalized guidellm/results.json or a raw GuideLLM JSON report",
        )
    rates: dict[float | str, dict[str, Any]] = {}
    for i, entry in enumerate(data["rates"]):
        ok_rate = isinstance(entry, dict) and (
            entry.get("rate") is None or isinstance(entry.get("rate"), (int, float)))
        if not ok_rate or not isinstance(entry.get("requests", {}), dict) or not isinstance(
                entry.get("samples", {}) or {}, dict):
            raise ModelGateError(
                f"{role} load results {path}: rates[{i}] is not a rate entry (numeric 'rate' "
                "or null, 'requests' and 'samples' objects)",
                field=f"{role}: {path}: rates[{i}]", fix="re-run the load test stage",
            )
        key = _point_key(entry)
        if key is None:
            continue  # a benchmark with neither a rate nor a known strategy: not gated
        rates[key] = entry
    fmt = data.get("guidellm") if isinstance(data.get("guidellm"), dict) else {}
    return LoadRound(round_id=round_id, path=str(path), rates=rates, guidellm=fmt)


def _round_files(folder: Path) -> list[tuple[str, Path]]:
    found = []
    for p in folder.iterdir():
        m = _ROUND_FILE_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1) or 1), p))
    return [(f"r{n}", p) for n, p in sorted(found)]


def _classify_file(data: Any) -> str:
    if isinstance(data, dict):
        if "rates" in data or "benchmarks" in data:
            return "load"
        if isinstance(data.get("results"), dict) and ("configs" in data or "versions" in data):
            return "lm_eval_results"
        if "tasks" in data:
            return "accuracy"
        if "flip_rate" in data or "per_prompt" in data:
            return "fidelity"
    return "unknown"


def load_variant(path: str | Path, *, role: str = "candidate", name: str | None = None,
                 allow_missing: bool = False) -> VariantResults:
    """Load a variant from its folder, its ``guidellm`` folder, or one results JSON file.

    ``allow_missing`` returns an empty VariantResults for a missing folder (a run whose stage
    failed); otherwise a missing or unreadable input raises ModelGateError naming ``role``.
    """
    p = Path(path)
    if not p.exists():
        if allow_missing:
            return VariantResults(name=name or p.name, source=str(p))
        raise ModelGateError(
            f"{role} results not found: {p}", field=role,
            fix="pass a variant folder of a run, its guidellm folder, or a results JSON file",
        )
    if p.is_file():
        data = _read_json(p, role)
        kind = _classify_file(data)
        vname = name or (data.get("variant") if isinstance(data, dict) else None) or (
            p.parent.parent.name if p.parent.name in ("guidellm", "accuracy") else p.stem
        )
        result = VariantResults(name=str(vname), source=str(p))
        if kind == "load":
            result.rounds.append(_load_round(data, p, "r1", role, result.name))
        elif kind == "accuracy":
            result.accuracy = _checked_accuracy(data, p, role)
        elif kind == "lm_eval_results":  # one lm-eval results file: read its whole folder
            result.accuracy = _native_accuracy(p.parent, role)
            result.name = name or p.parent.name
        elif kind == "fidelity":
            result.fidelity = data
        else:
            raise ModelGateError(
                f"{role} file {p} is not load, accuracy or fidelity results", field=role,
                fix="pass results.json (load or accuracy), a GuideLLM report, lm-eval's "
                    "results_*.json or output directory, or fidelity.json",
            )
        return result
    vname = name or p.name
    result = VariantResults(name=vname, source=str(p))
    guidellm_dir = p / "guidellm" if (p / "guidellm").is_dir() else p
    for round_id, f in _round_files(guidellm_dir):
        result.rounds.append(_load_round(_read_json(f, role), f, round_id, role, vname))
    if guidellm_dir is p and result.rounds and p.name == "guidellm":
        result.name = name or p.parent.name
    acc = p / "accuracy" / "results.json"
    if acc.is_file():
        result.accuracy = _checked_accuracy(_read_json(acc, role), acc, role)
    elif not result.rounds:
        from modelgate.accuracy import is_lm_eval_output

        # lm-eval's own output: the folder itself, or its accuracy/ folder
        for native in (p / "accuracy", p):
            if is_lm_eval_output(native):
                result.accuracy = _native_accuracy(native, role)
                break
    fid = p / "fidelity.json"
    if fid.is_file():
        result.fidelity = _read_json(fid, role)
        if not isinstance(result.fidelity, dict):
            raise ModelGateError(f"{role} file {fid} is not a fidelity object", field=role,
                                 fix="re-run `modelgate fidelity compare`")
    if not (result.rounds or result.accuracy or result.fidelity) and not allow_missing:
        raise ModelGateError(
            f"{role} folder {p} holds no results (guidellm/results*.json, accuracy/results.json,"
            " lm-eval results_*.json or fidelity.json)", field=role,
            fix="point at a variant folder of a finished run or lm-eval's output directory",
        )
    return result


def _native_accuracy(folder: Path, role: str) -> dict[str, Any]:
    from modelgate.accuracy import read_lm_eval_native

    try:
        return read_lm_eval_native(folder)
    except ModelGateError as exc:
        raise ModelGateError(f"{role}: {exc.message}", field=role, fix=exc.fix) from exc


def _checked_accuracy(data: Any, path: Path, role: str) -> dict[str, Any]:
    """Accuracy results whose tasks and per-sample scores the checks can read."""
    tasks = data.get("tasks") if isinstance(data, dict) else None
    bad = None
    if not isinstance(tasks, dict):
        bad = "'tasks' is not an object"
    else:
        for task, entry in tasks.items():
            samples = entry.get("samples") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(samples or {}, dict):
                bad = f"task {task!r} is not an object with a 'samples' object"
            elif not all(isinstance(v, (int, float)) for v in (samples or {}).values()):
                bad = f"task {task!r} has non-numeric per-sample scores"
            elif entry.get("score") is not None and not isinstance(entry["score"], (int, float)):
                bad = f"task {task!r} has a non-numeric score"
            if bad:
                break
    if bad:
        raise ModelGateError(
            f"{role} accuracy results {path}: {bad}", field=role,
            fix='expected {"tasks": {"<task>": {"metric", "score", "n", "samples": '
                '{"<doc_id>": 0|1}}}} or lm-eval\'s output directory')
    return data


# --------------------------------------------------------------------------------------------
# Statistics (numpy, imported lazily)
# --------------------------------------------------------------------------------------------


def _np() -> Any:
    import numpy

    return numpy


def _rng(policy: GatePolicy, key: str) -> np.random.Generator:
    # One stream per check and rate: a result does not depend on the order of the checks.
    return _np().random.default_rng([policy.bootstrap.seed, zlib.crc32(key.encode())])


def _stat_rows(vals: np.ndarray, total: np.ndarray, stat: str) -> np.ndarray:
    """Statistic of each row of ``vals`` whose first ``total[row]`` sorted values are real.

    Padding is +inf, so after sorting the real values come first; quantiles use numpy's
    default linear interpolation on each row's own count.
    """
    np = _np()
    if stat == "mean":
        return np.where(np.isfinite(vals), vals, 0.0).sum(axis=1) / total
    q = _QUANTILES[stat]
    s = np.sort(vals, axis=1)
    pos = q * (total - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, total - 1)
    rows = np.arange(s.shape[0])
    low = s[rows, lo]
    # frac is 0 where hi == lo, so inf - inf cannot arise.
    return low + (pos - lo) * np.where(hi > lo, s[rows, hi] - low, 0.0)


def _point_stat(values: np.ndarray, stat: str) -> float:
    np = _np()
    return float(_stat_rows(values[None, :], np.array([len(values)]), stat)[0])


def _resample_stat(rounds: list[np.ndarray], stat: str, rng: np.random.Generator,
                   resamples: int, choice: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap replicates of ``stat`` over pooled rounds (hierarchical when 2+ rounds)."""
    np = _np()
    k = len(rounds)
    sizes = np.array([len(r) for r in rounds], dtype=np.int64)
    nmax = int(sizes.max())
    padded = np.full((k, nmax), np.inf)
    for i, r in enumerate(rounds):
        padded[i, : len(r)] = r
    if choice is None:
        choice = (np.zeros((resamples, 1), dtype=np.int64) if k == 1
                  else rng.integers(0, k, size=(resamples, k)))
    out = np.empty(resamples)
    chunk = max(1, 4_000_000 // (choice.shape[1] * nmax))  # bound memory to ~100 MB
    for start in range(0, resamples, chunk):
        ch = choice[start:start + chunk]
        nsel = sizes[ch]
        u = rng.random((ch.shape[0], ch.shape[1], nmax))
        idx = np.minimum((u * nsel[..., None]).astype(np.int64), nmax - 1)
        vals = padded[ch[..., None], idx]
        valid = np.arange(nmax)[None, None, :] < nsel[..., None]
        vals = np.where(valid, vals, np.inf).reshape(ch.shape[0], -1)
        out[start:start + ch.shape[0]] = _stat_rows(vals, nsel.sum(axis=1), stat)
    return out


def _ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    np = _np()
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (z = 1.96: 95%)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(confidence: float) -> float:
    # Inverse normal CDF by bisection on erf: avoids a scipy dependency.
    target = 1 - (1 - confidence) / 2
    lo, hi = 0.0, 10.0
    for __ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def sign_test_p(n_plus: int, n_minus: int) -> float:
    """Exact two-sided sign-test p-value for ``n_plus`` vs ``n_minus`` discordant pairs."""
    n = n_plus + n_minus
    if n == 0:
        return 1.0
    k = min(n_plus, n_minus)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


# --------------------------------------------------------------------------------------------
# Results of the gate
# --------------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class CheckResult:
    """The outcome of one check at one rate (or task) for one candidate."""

    name: str
    metric: str
    rate: float | None
    statistic: str | None
    status: str
    baseline: float | None = None
    candidate: float | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    tolerance: float | None = None
    reason: str = ""
    limit: float | None = None
    kind: str = "ratio"  # ratio | recovery | difference | absolute | slo
    n_baseline: int | None = None
    n_candidate: int | None = None
    confidence: float = 0.95
    # a load point without an offered rate ("synchronous", "throughput", "concurrent:8")
    point: str | None = None
    dimension: str = ""
    # an SLO's side: "max" (value <= limit) or "min" (value >= limit); None for other kinds
    bound: str | None = None
    # a latency check of one round per variant measured one after the other: its interval
    # cannot see the drift between runs; drift_allowance is the policy's single_round_drift
    # applied to it (None: none set, so the check is inconclusive)
    one_round: bool = False
    drift_allowance: float | None = None

    @property
    def undecided_one_round(self) -> bool:
        """Inconclusive only because one round per variant cannot see the drift between runs
        and the policy sets no single_round_drift."""
        return self.status == "inconclusive" and self.one_round and self.drift_allowance is None

    @property
    def label(self) -> str:
        """Short human name: metric, statistic and rate (or load point)."""
        parts = [self.metric]
        if self.statistic and self.kind in ("ratio", "slo"):
            parts.append(self.statistic)
        if self.rate is not None:
            parts.append(f"@ {float(self.rate)} rps")
        elif self.point is not None:
            parts.append(f"@ {self.point}")
        return " ".join(parts)

    def describe(self, variant: str) -> str:
        """One line with the numbers, e.g. for the failure message of the play."""
        pct = f"{round(self.confidence * 100)}% CI"
        head = f"{variant}: {self.label}"
        have_ci = self.ci_low is not None and self.ci_high is not None
        if self.kind == "ratio" and self.ratio is not None and have_ci and self.limit is not None:
            line = (f"{head} is {self.ratio:.2f}x baseline ({pct} {self.ci_low:.2f}-"
                    f"{self.ci_high:.2f}), limit {self.limit:.2f}x")
            if self.one_round and self.drift_allowance is None:
                return line.replace(f"({pct}", f"(within-run {pct}") + (
                    "; undecided: one round per variant cannot see the drift between runs")
            if self.one_round and self.drift_allowance and self.drift_allowance > 1:
                return line.replace("), limit", f", widened by single_round_drift "
                                    f"{self.drift_allowance:g} for one round), limit")
            return line
        if self.kind == "recovery" and self.ratio is not None and have_ci:
            return (f"{head} recovery is {self.ratio:.3f} ({pct} {self.ci_low:.3f}-"
                    f"{self.ci_high:.3f}), minimum {self.limit:.3f} (baseline {self.baseline:.3f},"
                    f" candidate {self.candidate:.3f}, {self.n_candidate} paired samples)")
        if self.kind == "difference" and self.ratio is not None and have_ci:
            return (f"{head} is {self.candidate:.3f} vs baseline {self.baseline:.3f} "
                    f"(difference {self.ratio:+.3f}, {pct} {self.ci_low:+.3f} to "
                    f"{self.ci_high:+.3f}), limit {self.limit:+.3f}")
        if self.kind == "slo" and self.candidate is not None and have_ci:
            unit = _SLO_UNITS.get(self.metric, "")
            op = "<=" if self.bound == "max" else ">="
            return (f"{variant}: SLO {self.name}: {self.label} is {self.candidate:.4g}{unit} "
                    f"({pct} {self.ci_low:.4g}-{self.ci_high:.4g}), SLO {op} "
                    f"{self.limit:.4g}{unit}")
        if self.kind == "slo":
            return f"{variant}: SLO {self.name}: {self.label}: {self.reason}"
        if self.kind == "absolute" and self.candidate is not None and have_ci:
            return (f"{head} is {self.candidate:.4f} ({pct} {self.ci_low:.4f}-"
                    f"{self.ci_high:.4f}), limit {self.limit:.4f}")
        return f"{head}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data; non-finite numbers become null so the JSON stays standard."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = _finite(value)
        data["label"] = self.label
        return data


@dataclass
class GateVerdict:
    """Every check of one candidate against its baseline, and the verdict.

    ``status``: "fail" when a check failed (or, under ``inconclusive: fail``, was
    inconclusive); "inconclusive" when a dimension the policy names (latency, throughput,
    errors, accuracy, fidelity) has no check that decided "pass" and the policy does not list
    it in ``accept_inconclusive``; "pass" otherwise. ``passed`` is ``status == "pass"``.
    """

    baseline: str
    candidate: str
    checks: list[CheckResult]
    inconclusive_policy: str = "warn"
    notes: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)
    named_dimensions: tuple[str, ...] = ()
    accept_inconclusive: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        """Number of checks per status."""
        return {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    @property
    def dimensions(self) -> dict[str, dict[str, Any]]:
        """Per dimension the policy names: its status, check counts and, when no check
        decided, why (the checks' reasons) and how to get the missing data."""
        named = self.named_dimensions or tuple(
            d for d in DIMENSIONS if any(c.dimension == d for c in self.checks))
        out: dict[str, dict[str, Any]] = {}
        for dim in named:
            checks = [c for c in self.checks if c.dimension == dim]
            counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
            status = "fail" if counts["fail"] else "pass" if counts["pass"] else "inconclusive"
            info: dict[str, Any] = {"status": status, "counts": counts,
                                    "accepted_inconclusive": False}
            if status == "inconclusive":
                info["accepted_inconclusive"] = dim in self.accept_inconclusive
                # one-round checks share one cause (their numbers stay in their reasons)
                one_round = [c.undecided_one_round for c in checks]
                reasons = list(dict.fromkeys(
                    _SINGLE_ROUND_CAUSE if single else c.reason
                    for c, single in zip(checks, one_round, strict=True) if c.reason))
                info["missing"] = "; ".join(reasons[:3]) or "no check ran"
                info["how_to_get"] = (
                    _SINGLE_ROUND_FIX if checks and all(one_round) else
                    f"{_HOW_TO_GET[dim]}; for one round per variant: {_SINGLE_ROUND_FIX}"
                    if any(one_round) else _HOW_TO_GET[dim])
            out[dim] = info
        return out

    @property
    def status(self) -> str:
        """The verdict: pass, fail or inconclusive (see the class docstring)."""
        counts = self.counts
        if counts["fail"] or (self.inconclusive_policy == "fail" and counts["inconclusive"]):
            return "fail"
        if any(d["status"] == "inconclusive" and not d["accepted_inconclusive"]
               for d in self.dimensions.values()):
            return "inconclusive"
        return "pass"

    @property
    def passed(self) -> bool:
        """True only when the verdict is a pass: evidence for every dimension, no failure."""
        return self.status == "pass"

    def blocking(self) -> list[CheckResult]:
        """The checks that make the verdict fail."""
        bad = {"fail", "inconclusive"} if self.inconclusive_policy == "fail" else {"fail"}
        return [c for c in self.checks if c.status in bad]

    def undecided(self) -> list[str]:
        """One line per dimension without evidence (not accepted): what is missing, how to
        get it."""
        return [f"{self.candidate}: {dim}: no check decided ({d['missing']}); to get it: "
                f"{d['how_to_get']}"
                for dim, d in self.dimensions.items()
                if d["status"] == "inconclusive" and not d["accepted_inconclusive"]]

    def failure_message(self) -> str:
        """One line per blocking check, naming it with its numbers, then one per dimension
        without evidence (empty when passed)."""
        lines = [c.describe(self.candidate) for c in self.blocking()]
        if self.status != "pass":
            lines += self.undecided()
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form written to gate.json."""
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "passed": self.passed,
            "status": self.status,
            "counts": self.counts,
            "dimensions": self.dimensions,
            "message": self.failure_message(),
            "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks],
            "policy": self.policy,
        }

    def write_gate_json(self, path: str | Path) -> Path:
        """Write this verdict as JSON; returns the path."""
        return _write_json(path, self.to_dict())

    def write_junit(self, path: str | Path) -> Path:
        """Write JUnit XML: one testcase per check; fail -> failure, inconclusive -> skipped."""
        return _write_junit(path, [self], self.inconclusive_policy)


@dataclass
class RunVerdict:
    """Every candidate of a run against the run's baseline variant."""

    run_id: str
    baseline: str
    verdicts: list[GateVerdict]
    notes: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when the run's verdict is a pass (every candidate passed)."""
        return self.status == "pass"

    @property
    def status(self) -> str:
        """Worst status over the candidates; a run with no candidate is inconclusive."""
        if not self.verdicts:
            return "inconclusive"
        statuses = {v.status for v in self.verdicts}
        for s in ("fail", "inconclusive"):
            if s in statuses:
                return s
        return "pass"

    @property
    def message(self) -> str:
        """The failure message of the play, naming each failed check with its numbers and
        each dimension without evidence."""
        lines = [line for v in self.verdicts for line in v.failure_message().splitlines()]
        status = self.status
        if status == "pass":
            counts = sum(v.counts["inconclusive"] for v in self.verdicts)
            extra = f" ({counts} inconclusive checks, see gate.json)" if counts else ""
            return f"gate passed for run {self.run_id}{extra}"
        if not self.verdicts:
            return f"gate inconclusive for run {self.run_id}: no candidate variant to judge"
        word = "failed" if status == "fail" else "inconclusive"
        return (f"gate {word} for run {self.run_id}: {len(lines)} finding(s)\n"
                + "\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form written to gate.json."""
        return {
            "run_id": self.run_id,
            "baseline": self.baseline,
            "passed": self.passed,
            "status": self.status,
            "message": self.message,
            "notes": self.notes,
            "verdicts": [{k: v for k, v in vd.to_dict().items() if k != "policy"}
                         for vd in self.verdicts],
            "policy": self.policy,
        }

    def write_gate_json(self, path: str | Path) -> Path:
        """Write the run verdict as JSON; returns the path."""
        return _write_json(path, self.to_dict())

    def write_junit(self, path: str | Path) -> Path:
        """Write JUnit XML with one testsuite per candidate and one testcase per check."""
        policy = self.policy.get("inconclusive", "warn") if self.policy else "warn"
        return _write_junit(path, self.verdicts, policy)


def _write_json(path: str | Path, data: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _write_junit(path: str | Path, verdicts: list[GateVerdict], inconclusive_policy: str) -> Path:
    root = ET.Element("testsuites", name="modelgate.gate")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for v in verdicts:
        suite = ET.SubElement(root, "testsuite", name=f"{v.candidate} vs {v.baseline}")
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for c in v.checks:
            case = ET.SubElement(
                suite, "testcase", classname=f"modelgate.gate.{v.candidate}",
                name=f"{c.name}: {c.label}",
            )
            counts["tests"] += 1
            text = c.describe(v.candidate)
            if c.status == "fail" or (c.status == "inconclusive" and inconclusive_policy == "fail"):
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", message=text, type=c.status)
                failure.text = c.reason
            elif c.status == "inconclusive":
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=f"inconclusive: {c.reason}")
            ET.SubElement(case, "system-out").text = json.dumps(c.to_dict(), sort_keys=True)
        # one testcase per dimension: a dimension without evidence fails the suite as the
        # verdict does (exit 3), unless the policy accepts it (skipped)
        for dim, d in v.dimensions.items():
            case = ET.SubElement(suite, "testcase", classname=f"modelgate.gate.{v.candidate}",
                                 name=f"dimension: {dim}")
            counts["tests"] += 1
            if d["status"] == "inconclusive" and d["accepted_inconclusive"]:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped",
                              message=f"inconclusive, accepted by policy: {d['missing']}")
            elif d["status"] == "inconclusive":
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", type="inconclusive",
                                        message=f"{dim}: no check decided")
                failure.text = f"{d['missing']}; to get it: {d['how_to_get']}"
            elif d["status"] == "fail":
                counts["failures"] += 1
                ET.SubElement(case, "failure", type="fail", message=f"{dim}: a check failed")
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("errors", "0")
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("errors", "0")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _decide(lo: float, hi: float, limit: float, upper: bool) -> str:
    """upper: values must stay <= limit; otherwise they must stay >= limit."""
    if upper:
        return "fail" if lo > limit else "pass" if hi <= limit else "inconclusive"
    return "fail" if hi < limit else "pass" if lo >= limit else "inconclusive"


def _at(point: float | str) -> str:
    return f"at {float(point)} rps" if isinstance(point, (int, float)) else f"at {point}"


def _target_rates(check: GateCheck, base: VariantResults, cand: VariantResults,
                  ) -> list[float | str]:
    if check.rates == "all":
        keys = set(base.points) | set(cand.points)
        return [*sorted(k for k in keys if isinstance(k, float)),
                *sorted(k for k in keys if isinstance(k, str))]
    return [_rate_key(r) for r in check.rates]


def _samples_at(variant: VariantResults, rate: float, metric: str,
                ) -> tuple[list[tuple[str, np.ndarray]], list[dict[str, Any]]]:
    """Per-round finite samples of ``metric`` at ``rate``, and the rate entries themselves."""
    np = _np()
    rounds, entries = [], []
    for rnd in variant.rounds:
        entry = rnd.rates.get(rate)
        if entry is None:
            continue
        entries.append(entry)
        raw = (entry.get("samples") or {}).get(metric) or []
        blocks = (entry.get("blocks") or {}).get(metric)
        if not isinstance(blocks, list) or len(blocks) != len(raw):
            blocks = [None] * len(raw)
        # An interleaved round (modelgate.loadtest.split_interleaved) is cut into its time
        # blocks: "r1.b0", "r1.b1", ..., the same blocks for every variant of that round.
        groups: dict[str, list[float]] = {}
        for x, blk in zip(raw, blocks, strict=True):
            if isinstance(x, (int, float)) and math.isfinite(x):
                rid = rnd.round_id if blk is None else f"{rnd.round_id}.b{int(blk)}"
                groups.setdefault(rid, []).append(float(x))
        rounds.extend((rid, np.asarray(vals, dtype=float)) for rid, vals in groups.items())
    return rounds, entries


_NEEDS_SAMPLES_FIX = ("re-run GuideLLM keeping per-request samples (GuideLLM 0.8: "
                      "`--metrics kind=generative,sample_size=N` with N > 0; the default keeps "
                      "them)")


def _summary_estimate(entry: dict[str, Any], metric: str, stat: str,
                      ) -> tuple[float, float, int] | None:
    """(statistic, standard error, n) from GuideLLM's summary of one rate entry.

    mean: std_dev / sqrt(n). p50: the sample median's standard error 1 / (2 f sqrt(n)) with
    the density f at the median estimated from the interquartile range (f ~ 0.5 / IQR), i.e.
    IQR / sqrt(n): distribution-free, and for a normal distribution 8% wider than exact.
    Tail percentiles have no such estimate from a summary: None.
    """
    m = (entry.get("metrics") or {}).get(metric) or {}
    count = m.get("count")
    n = int(count) if isinstance(count, (int, float)) and count > 0 else int(
        (entry.get("requests") or {}).get("successful") or 0)
    value = m.get(stat)
    if not isinstance(value, (int, float)) or n < 2:
        return None
    if stat == "mean":
        sd = m.get("std_dev")
        se = float(sd) / math.sqrt(n) if isinstance(sd, (int, float)) else None
    elif stat == "p50":
        p25, p75 = m.get("p25"), m.get("p75")
        se = ((float(p75) - float(p25)) / math.sqrt(n)
              if isinstance(p25, (int, float)) and isinstance(p75, (int, float)) else None)
    else:
        se = None
    return None if se is None else (float(value), se, n)


def _summary_count(entries: list[dict[str, Any]], metric: str) -> int:
    """Requests GuideLLM's summaries of ``metric`` cover, over all rounds."""
    total = 0
    for e in entries:
        count = ((e.get("metrics") or {}).get(metric) or {}).get("count")
        total += int(count) if isinstance(count, (int, float)) else int(
            (e.get("requests") or {}).get("successful") or 0)
    return total


def _summary_latency_check(check: GateCheck, result: CheckResult,
                           b_entries: list[dict[str, Any]], c_entries: list[dict[str, Any]],
                           stat: str, limit: float, upper: bool, policy: GatePolicy,
                           who: str, logged: bool = False) -> CheckResult:
    """Decide a latency check from GuideLLM's summaries when per-request samples are missing
    (a normal approximation of the log ratio); tail percentiles need samples."""
    b_sum = _summary_value(b_entries, check.metric, stat)
    c_sum = _summary_value(c_entries, check.metric, stat)
    result.baseline, result.candidate = b_sum, c_sum
    result.ratio = None
    if b_sum and c_sum is not None:
        result.ratio = c_sum / b_sum
    lacking = (f"too few logged per-request samples for the {who}" if logged
               else f"no per-request samples for the {who}")
    point = f" (summary ratio {result.ratio:.2f}x)" if result.ratio is not None else ""
    if stat not in ("mean", "p50"):
        result.reason = (f"{check.name} needs per-request samples ({lacking}): a "
                         f"{stat} confidence interval cannot come from GuideLLM's summary"
                         f"{point}; {_NEEDS_SAMPLES_FIX}")
        return result
    sides = []
    for entries in (b_entries, c_entries):
        est = [_summary_estimate(e, check.metric, stat) for e in entries]
        if not est or any(e is None for e in est):
            result.reason = (f"{lacking.replace('samples', check.metric + ' samples')} "
                             f"and its summary lacks what a {stat} interval needs{point}; "
                             f"{_NEEDS_SAMPLES_FIX}")
            return result
        k = len(est)
        sides.append((sum(e[0] for e in est if e) / k,
                      math.sqrt(sum(e[1] ** 2 for e in est if e)) / k,
                      sum(e[2] for e in est if e), k))
    (b, b_se, nb, kb), (c, c_se, nc, kc) = sides
    result.n_baseline, result.n_candidate = nb, nc
    if min(nb, nc) < check.min_samples:
        result.reason = (f"too few requests: baseline {nb}, candidate {nc}, need "
                         f"{check.min_samples} each (summary-based)")
        return result
    if min(kb, kc) < policy.min_rounds:
        result.reason = (f"too few rounds: baseline {kb}, candidate {kc}, policy min_rounds "
                         f"{policy.min_rounds}")
        return result
    if b <= 0 or c <= 0:
        result.reason = f"{stat} is not positive: ratio undefined (summary-based)"
        return result
    z = _z(policy.bootstrap.confidence)
    se_log = math.sqrt((b_se / b) ** 2 + (c_se / c) ** 2)
    log_ratio = math.log(c / b)
    result.ci_low, result.ci_high = math.exp(log_ratio - z * se_log), math.exp(
        log_ratio + z * se_log)
    together = _measured_together(b_entries) and _measured_together(c_entries)
    how = "std_dev / sqrt(n)" if stat == "mean" else "the interquartile range"
    unit = _UNITS.get(check.metric, "")
    _judge_ratio(result, limit, upper, policy,
                 head=(f"summary-based ({lacking}): {stat} {c:.4g} {unit} vs {b:.4g} {unit}: "
                       f"ratio {result.ratio:.3f}"),
                 counts=f"n {nb}/{nc}, rounds {kb}/{kc}; interval from {how}, normal "
                        "approximation, within-run noise only",
                 one_round=_drift_unseen(kb, kc, together))
    return result


def _summary_value(entries: list[dict[str, Any]], metric: str, stat: str) -> float | None:
    vals = [((e.get("metrics") or {}).get(metric) or {}).get(stat) for e in entries]
    vals = [float(v) for v in vals if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def _ratio_limit(check: GateCheck) -> tuple[float, bool]:
    if check.direction == "lower_is_better":
        return 1.0 + check.tolerance, True
    return max(0.0, 1.0 - check.tolerance), False


def _rounds_behind(ids: list[str]) -> int:
    """Load-test rounds behind sample groups: "r1", or an interleaved round's blocks "r1.b0"."""
    return len({rid.split(".b", 1)[0] for rid in ids})


def _measured_together(entries: list[dict[str, Any]]) -> bool:
    """Every entry comes from a run through ``modelgate interleave-proxy`` (split_interleaved)."""
    return bool(entries) and all(isinstance(e.get("interleaved"), dict) for e in entries)


def _drift_unseen(b_rounds: int, c_rounds: int, together: bool) -> bool:
    """True when the interval cannot see the drift of a server between runs: a variant has one
    round and the variants were measured one after the other. Two rounds or more per variant
    put the between-run spread into the hierarchical bootstrap; variants measured together
    share every time block, so the drift falls on both alike."""
    return not together and min(b_rounds, c_rounds) < 2


def _judge_ratio(result: CheckResult, limit: float, upper: bool, policy: GatePolicy,
                 head: str, counts: str, one_round: bool) -> None:
    """Decide a ratio check from the CI in ``result`` and write its reason.

    ``one_round``: the CI covers one run's noise only (see _drift_unseen). Without the
    policy's ``single_round_drift`` such a check is then inconclusive, whatever the interval
    says. With it (factor d) the drift between runs may have moved the ratio by up to d
    either way, so the interval is widened to [low / d, high * d] and decided as usual: FAIL
    only when even d of drift cannot explain the regression, PASS only when the candidate is
    within the limit with d of drift against it. d = 1 trusts the within-run interval.
    """
    assert result.ci_low is not None and result.ci_high is not None
    verbs = {"pass": "within", "fail": "beyond", "inconclusive": "straddles"}
    within = f"CI {result.ci_low:.3f}-{result.ci_high:.3f}"
    result.one_round = one_round
    drift = policy.single_round_drift if one_round else None
    result.drift_allowance = drift
    if one_round and drift is None:
        would = _decide(result.ci_low, result.ci_high, limit, upper)
        result.status = "inconclusive"
        result.reason = (
            f"one round per variant, measured one after the other, cannot see the drift "
            f"between runs (the same server's median moved up to 1.38x from run to run on a "
            f"shared 2-core host): {head}, within-run {within} {verbs[would]} limit "
            f"{limit:.2f}x ({counts}); to decide, {_SINGLE_ROUND_FIX}")
        return
    note = ""
    if drift is not None and drift > 1:
        result.ci_low, result.ci_high = result.ci_low / drift, result.ci_high * drift
        note = (f"; one round per variant, measured one after the other: within-run {within} "
                f"widened by the policy's single_round_drift {drift:g}")
    elif drift is not None:
        note = ("; one round per variant, measured one after the other: the policy's "
                "single_round_drift 1 trusts the within-run interval")
    result.status = _decide(result.ci_low, result.ci_high, limit, upper)
    result.reason = (f"{head}, CI {result.ci_low:.3f}-{result.ci_high:.3f} "
                     f"{verbs[result.status]} limit {limit:.2f}x ({counts}{note})")


def _latency_check(check: GateCheck, base: VariantResults, cand: VariantResults, rate: float,
                   policy: GatePolicy) -> CheckResult:
    np = _np()
    stat = check.statistic or "p50"
    limit, upper = _ratio_limit(check)
    result = CheckResult(
        name=check.name, metric=check.metric, rate=rate, statistic=stat, status="inconclusive",
        tolerance=check.tolerance, limit=limit, kind="ratio",
        confidence=policy.bootstrap.confidence,
    )
    b_rounds, b_entries = _samples_at(base, rate, check.metric)
    c_rounds, c_entries = _samples_at(cand, rate, check.metric)
    for who, entries in (("baseline", b_entries), ("candidate", c_entries)):
        if not entries:
            result.reason = f"no load-test results {_at(rate)} for the {who}"
            return result
    result.n_baseline = sum(len(a) for __, a in b_rounds)
    result.n_candidate = sum(len(a) for __, a in c_rounds)
    if not b_rounds or not c_rounds:
        who = "baseline" if not b_rounds else "candidate"
        return _summary_latency_check(check, result, b_entries, c_entries, stat, limit, upper,
                                      policy, who)
    b_pool = np.concatenate([a for __, a in b_rounds])
    c_pool = np.concatenate([a for __, a in c_rounds])
    result.baseline = _point_stat(b_pool, stat)
    result.candidate = _point_stat(c_pool, stat)
    if result.baseline > 0:
        result.ratio = result.candidate / result.baseline
    n_min = min(result.n_baseline, result.n_candidate)
    k_min = min(len(b_rounds), len(c_rounds))
    if n_min < check.min_samples and all(
            _summary_count(entries, check.metric) >= check.min_samples
            for entries in (b_entries, c_entries)):
        # GuideLLM logged only a few of the requests it summarised (a sampled report, such
        # as 0.3's stripped files): the summary of every request is the better evidence
        who = " and ".join(w for w, n in (("baseline", result.n_baseline),
                                          ("candidate", result.n_candidate))
                           if n < check.min_samples)
        return _summary_latency_check(check, result, b_entries, c_entries, stat, limit, upper,
                                      policy, who, logged=True)
    if n_min < check.min_samples:
        result.reason = (f"too few samples: baseline {result.n_baseline}, candidate "
                         f"{result.n_candidate}, need {check.min_samples} each")
        return result
    if k_min < policy.min_rounds:
        result.reason = (f"too few rounds: baseline {len(b_rounds)}, candidate {len(c_rounds)},"
                         f" policy min_rounds {policy.min_rounds}")
        return result
    if result.baseline <= 0:
        result.reason = f"baseline {stat} is {result.baseline}: ratio undefined"
        return result
    rng = _rng(policy, f"{check.name}|{check.metric}|{stat}|{rate}")
    n_boot = policy.bootstrap.resamples
    # measured together: both variants' samples carry the time blocks of the same run
    blocked = all(any(".b" in rid for rid, __ in rounds) for rounds in (b_rounds, c_rounds))
    if blocked:
        # interleaved blocks pair by id; a block one variant has no sample in (a very low
        # rate) cannot be paired and is left out of the resampling, not of the point ratio
        c_map = dict(c_rounds)
        b_rounds = [(rid, a) for rid, a in b_rounds if rid in c_map]
        c_rounds = [(rid, c_map[rid]) for rid, __ in b_rounds]
    b_ids = [rid for rid, __ in b_rounds]
    paired = len(b_rounds) > 1 and b_ids == [rid for rid, __ in c_rounds]
    choice = rng.integers(0, len(b_rounds), size=(n_boot, len(b_rounds))) if paired else None
    b_star = _resample_stat([a for __, a in b_rounds], stat, rng, n_boot, choice)
    c_star = _resample_stat([a for __, a in c_rounds], stat, rng, n_boot, choice)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(b_star > 0, c_star / b_star, np.inf)
    result.ci_low, result.ci_high = _ci(ratios, policy.bootstrap.confidence)
    design = (f"{len(b_rounds)} paired {'interleaved blocks' if blocked else 'rounds'}"
              if paired else f"rounds {len(b_rounds)}/{len(c_rounds)}")
    unit = _UNITS.get(check.metric, "")
    _judge_ratio(result, limit, upper, policy,
                 head=(f"{stat} {result.candidate:.4g} {unit} vs {result.baseline:.4g} {unit}: "
                       f"ratio {result.ratio:.3f}"),
                 counts=f"n {result.n_baseline}/{result.n_candidate}, {design}",
                 one_round=_drift_unseen(_rounds_behind(b_ids),
                                         _rounds_behind([rid for rid, __ in c_rounds]), blocked))
    saturated = [who for who, entries in (("baseline", b_entries), ("candidate", c_entries))
                 if any(e.get("over_saturated") for e in entries)]
    if saturated:
        # The server could not keep up: GuideLLM stopped early; the samples are real but few.
        result.reason += f"; over-saturated: {' and '.join(saturated)}"
    return result


def _error_rate_check(check: GateCheck, base: VariantResults, cand: VariantResults, rate: float,
                      policy: GatePolicy) -> CheckResult:
    result = CheckResult(
        name=check.name, metric=check.metric, rate=rate, statistic=None, status="inconclusive",
        tolerance=check.tolerance, limit=check.tolerance, kind="difference",
        confidence=policy.bootstrap.confidence,
    )
    counts = []
    for who, variant in (("baseline", base), ("candidate", cand)):
        __, entries = _samples_at(variant, rate, "request_latency_s")
        if not entries:
            result.reason = f"no load-test results {_at(rate)} for the {who}"
            return result
        errored = sum(int((e.get("requests") or {}).get("errored", 0)) for e in entries)
        total = errored + sum(int((e.get("requests") or {}).get("successful", 0))
                              for e in entries)
        counts.append((errored, total))
    (kb, nb), (kc, nc) = counts
    result.n_baseline, result.n_candidate = nb, nc
    if min(nb, nc) < check.min_samples:
        result.reason = (f"too few requests: baseline {nb}, candidate {nc}, need "
                         f"{check.min_samples} each")
        return result
    pb, pc = kb / nb, kc / nc
    result.baseline, result.candidate, result.ratio = pb, pc, pc - pb
    z = _z(policy.bootstrap.confidence)
    lb, ub = wilson_interval(kb, nb, z)
    lc, uc = wilson_interval(kc, nc, z)
    # Newcombe's hybrid score interval for a difference of two proportions.
    result.ci_low = (pc - pb) - math.sqrt((pc - lc) ** 2 + (ub - pb) ** 2)
    result.ci_high = (pc - pb) + math.sqrt((uc - pc) ** 2 + (pb - lb) ** 2)
    if result.ci_low > check.tolerance:
        result.status = "fail"
    elif pc - pb <= check.tolerance:
        result.status = "pass"
    else:
        result.status = "inconclusive"
    result.reason = (f"errors {kc}/{nc} vs baseline {kb}/{nb}: difference {pc - pb:+.4f}, CI "
                     f"{result.ci_low:+.4f} to {result.ci_high:+.4f}, slack {check.tolerance}")
    return result


def _throughput_check(check: GateCheck, base: VariantResults, cand: VariantResults, rate: float,
                      policy: GatePolicy) -> CheckResult:
    np = _np()
    fld = check.metric.split(":", 1)[1] if ":" in check.metric else "output_tokens_per_s"
    limit, upper = _ratio_limit(check)
    result = CheckResult(
        name=check.name, metric=check.metric, rate=rate, statistic="mean",
        status="inconclusive", tolerance=check.tolerance, limit=limit, kind="ratio",
        confidence=policy.bootstrap.confidence,
    )
    per_side = []
    for who, variant in (("baseline", base), ("candidate", cand)):
        vals = []
        for rnd in variant.rounds:
            e = rnd.rates.get(rate)
            v = ((e or {}).get("throughput") or {}).get(fld)
            if isinstance(v, (int, float)) and math.isfinite(v):
                vals.append((rnd.round_id, float(v)))
        if not vals:
            result.reason = f"no {fld} {_at(rate)} for the {who}"
            return result
        per_side.append(vals)
    b_vals, c_vals = per_side
    result.n_baseline, result.n_candidate = len(b_vals), len(c_vals)
    result.baseline = sum(v for __, v in b_vals) / len(b_vals)
    result.candidate = sum(v for __, v in c_vals) / len(c_vals)
    if result.baseline <= 0:
        result.reason = "baseline throughput is 0: ratio undefined"
        return result
    result.ratio = result.candidate / result.baseline
    if min(len(b_vals), len(c_vals)) < max(2, policy.min_rounds):
        result.reason = (f"throughput is one number per round; {len(b_vals)}/{len(c_vals)} rounds"
                         f" give no confidence interval (point ratio {result.ratio:.3f})")
        return result
    rng = _rng(policy, f"{check.name}|{check.metric}|{rate}")
    b_arr = np.array([[v for __, v in b_vals]])
    c_arr = np.array([[v for __, v in c_vals]])
    n_boot = policy.bootstrap.resamples
    paired = [r for r, __ in b_vals] == [r for r, __ in c_vals]
    bi = rng.integers(0, b_arr.shape[1], size=(n_boot, b_arr.shape[1]))
    ci_idx = bi if paired else rng.integers(0, c_arr.shape[1], size=(n_boot, c_arr.shape[1]))
    ratios = c_arr[0][ci_idx].mean(axis=1) / b_arr[0][bi].mean(axis=1)
    result.ci_low, result.ci_high = _ci(ratios, policy.bootstrap.confidence)
    result.status = _decide(result.ci_low, result.ci_high, limit, upper)
    result.reason = (f"{fld} {result.candidate:.4g} vs {result.baseline:.4g}: ratio "
                     f"{result.ratio:.3f}, CI {result.ci_low:.3f}-{result.ci_high:.3f}, limit "
                     f"{limit:.2f}x over {len(b_vals)}/{len(c_vals)} rounds")
    return result


def _tasks(acc: dict[str, Any] | None) -> dict[str, Any]:
    tasks = (acc or {}).get("tasks")
    return tasks if isinstance(tasks, dict) else {}


def _accuracy_check(check: GateCheck, base: VariantResults, cand: VariantResults, task: str,
                    policy: GatePolicy) -> CheckResult:
    np = _np()
    result = CheckResult(
        name=check.name, metric=f"accuracy:{task}", rate=None, statistic=None,
        status="inconclusive", tolerance=check.tolerance, limit=check.tolerance,
        kind="recovery", confidence=policy.bootstrap.confidence,
    )
    entries = []
    for who, variant in (("baseline", base), ("candidate", cand)):
        entry = _tasks(variant.accuracy).get(task)
        if not isinstance(entry, dict):
            result.reason = f"no accuracy results for task {task!r} for the {who}"
            return result
        entries.append(entry)
    b_entry, c_entry = entries
    b_samples = b_entry.get("samples") or {}
    c_samples = c_entry.get("samples") or {}
    common = sorted(set(b_samples) & set(c_samples))
    if not common:
        b_score, c_score = b_entry.get("score"), c_entry.get("score")
        if isinstance(b_score, (int, float)) and isinstance(c_score, (int, float)):
            result.baseline, result.candidate = float(b_score), float(c_score)
            if b_score > 0:
                result.ratio = c_score / b_score
        notes = [e["note"] for e in entries if isinstance(e.get("note"), str)]
        result.reason = ("no per-sample results on common doc ids: paired comparison impossible"
                         + (f" (point recovery {result.ratio:.3f})" if result.ratio else "")
                         + "".join(f"; {n}" for n in dict.fromkeys(notes)))
        return result
    b = np.array([float(b_samples[d]) for d in common])
    c = np.array([float(c_samples[d]) for d in common])
    n = len(common)
    result.n_baseline = result.n_candidate = n
    result.baseline, result.candidate = float(b.mean()), float(c.mean())
    if result.baseline < max(policy.min_baseline_score, 1e-12):
        result.reason = (f"baseline score {result.baseline:.4f} is below min_baseline_score "
                         f"{policy.min_baseline_score}: recovery undefined (e.g. random weights)")
        return result
    result.ratio = result.candidate / result.baseline
    base_only = int(((b > c)).sum())
    cand_only = int(((c > b)).sum())
    p_sign = sign_test_p(cand_only, base_only)
    detail = (f"discordant pairs: {base_only} baseline-only, {cand_only} candidate-only "
              f"(exact sign test p={p_sign:.3g})")
    if n < check.min_samples:
        result.reason = f"too few paired samples: {n}, need {check.min_samples}; {detail}"
        return result
    rng = _rng(policy, f"{check.name}|accuracy:{task}")
    n_boot = policy.bootstrap.resamples
    ratios = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        bm, cm = b[idx].mean(axis=1), c[idx].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start:start + m] = np.where(bm > 0, cm / bm, np.inf)
    result.ci_low, result.ci_high = _ci(ratios, policy.bootstrap.confidence)
    result.status = _decide(result.ci_low, result.ci_high, check.tolerance, upper=False)
    result.reason = (f"score {result.candidate:.4f} vs {result.baseline:.4f} on {n} common docs:"
                     f" recovery {result.ratio:.4f}, CI {result.ci_low:.4f}-"
                     f"{result.ci_high:.4f}, minimum {check.tolerance}; {detail}")
    return result


def _fidelity_check(check: GateCheck, cand: VariantResults, policy: GatePolicy) -> CheckResult:
    np = _np()
    key = check.metric.split(".", 1)[1]
    result = CheckResult(
        name=check.name, metric=check.metric, rate=None, statistic=None, status="inconclusive",
        tolerance=check.tolerance, limit=check.tolerance, kind="absolute",
        confidence=policy.bootstrap.confidence,
    )
    fid = cand.fidelity
    if not isinstance(fid, dict):
        result.reason = "no fidelity.json for the candidate"
        return result
    per_prompt = [p for p in fid.get("per_prompt") or []
                  if isinstance(p, dict) and isinstance(p.get(key), (int, float))
                  and math.isfinite(p[key])]
    top = fid.get(key)
    if per_prompt:
        vals = np.array([float(p[key]) for p in per_prompt])
        weights = np.array([float(p.get("tokens") or 0) for p in per_prompt])
        if not (weights > 0).all():
            weights = np.ones_like(vals)
        point = float(top) if isinstance(top, (int, float)) else float(
            (vals * weights).sum() / weights.sum())
    else:
        point = float(top) if isinstance(top, (int, float)) else None
    result.candidate = point
    result.n_candidate = len(per_prompt)
    if point is None:
        result.reason = f"fidelity.json has no {key}"
        return result
    if len(per_prompt) < check.min_samples:
        result.reason = (f"{key} {point:.4f} (limit {check.tolerance}) from {len(per_prompt)} "
                         f"per-prompt values, need {check.min_samples} for a confidence interval")
        return result
    rng = _rng(policy, f"{check.name}|{check.metric}")
    idx = rng.integers(0, len(vals), size=(policy.bootstrap.resamples, len(vals)))
    means = (vals[idx] * weights[idx]).sum(axis=1) / weights[idx].sum(axis=1)
    result.ci_low, result.ci_high = _ci(means, policy.bootstrap.confidence)
    result.status = _decide(result.ci_low, result.ci_high, check.tolerance, upper=True)
    result.reason = (f"{key} {point:.4f}, CI {result.ci_low:.4f}-{result.ci_high:.4f} over "
                     f"{len(vals)} prompts, limit {check.tolerance}")
    return result


# --------------------------------------------------------------------------------------------
# SLOs: absolute service levels, decided on the candidate alone
# --------------------------------------------------------------------------------------------


def _slo_result(slo: GateSLO, point: float | str | None, policy: GatePolicy) -> CheckResult:
    return CheckResult(
        name=slo.name, metric=slo.metric, rate=point, statistic=slo.statistic,
        status="inconclusive", limit=slo.limit, kind="slo", bound=slo.bound,
        confidence=policy.bootstrap.confidence, dimension=slo.dimension,
    )


def _slo_verdict(result: CheckResult, detail: str) -> CheckResult:
    """Decide from the CI in ``result`` and write the reason."""
    upper = result.bound == "max"
    lo, hi = result.ci_low, result.ci_high
    assert lo is not None and hi is not None and result.limit is not None
    result.status = _decide(lo, hi, result.limit, upper)
    verb = {"pass": "within", "fail": "beyond", "inconclusive": "straddles"}[result.status]
    unit = _SLO_UNITS.get(result.metric, "")
    op = "<=" if upper else ">="
    result.reason = (f"{result.candidate:.4g}{unit}, CI {lo:.4g}-{hi:.4g} {verb} SLO {op} "
                     f"{result.limit:.4g}{unit} ({detail})")
    return result


def _slo_latency(slo: GateSLO, cand: VariantResults, point: float | str,
                 policy: GatePolicy) -> CheckResult:
    np = _np()
    stat = slo.statistic or "p50"
    result = _slo_result(slo, point, policy)
    rounds, entries = _samples_at(cand, point, slo.metric)
    if not entries:
        result.reason = f"no load-test results {_at(point)} for the candidate"
        return result
    n = sum(len(a) for __, a in rounds)
    result.n_candidate = n
    summary_n = _summary_count(entries, slo.metric)
    if not rounds or (n < slo.min_samples <= summary_n):
        # no (or too few logged) per-request samples: GuideLLM's summary, as the relative
        # checks do; a tail statistic cannot get an interval from it
        return _slo_from_summary(slo, result, entries, stat, policy, logged=bool(rounds))
    pool = np.concatenate([a for __, a in rounds])
    result.candidate = _point_stat(pool, stat)
    if n < slo.min_samples:
        result.reason = (f"too few samples: {n}, need {slo.min_samples} (point {stat} "
                         f"{result.candidate:.4g}{_SLO_UNITS[slo.metric]})")
        return result
    if len(rounds) < policy.min_rounds:
        result.reason = (f"too few rounds: {len(rounds)}, policy min_rounds {policy.min_rounds}"
                         f" (point {stat} {result.candidate:.4g}{_SLO_UNITS[slo.metric]})")
        return result
    rng = _rng(policy, f"slo|{slo.name}|{slo.metric}|{stat}|{point}")
    star = _resample_stat([a for __, a in rounds], stat, rng, policy.bootstrap.resamples)
    result.ci_low, result.ci_high = _ci(star, policy.bootstrap.confidence)
    blocked = any(".b" in rid for rid, __ in rounds)
    design = f"{len(rounds)} {'time blocks' if blocked else 'rounds'}"
    return _slo_verdict(result, f"{stat} of {n} requests, {design}")


def _slo_from_summary(slo: GateSLO, result: CheckResult, entries: list[dict[str, Any]],
                      stat: str, policy: GatePolicy, logged: bool) -> CheckResult:
    lacking = ("too few logged per-request samples" if logged
               else "no per-request samples for the candidate")
    value = _summary_value(entries, slo.metric, stat)
    result.candidate = value
    unit = _SLO_UNITS[slo.metric]
    point = f" (summary {stat} {value:.4g}{unit})" if value is not None else ""
    if stat not in ("mean", "p50"):
        result.reason = (f"SLO {slo.name} needs per-request samples ({lacking}): a {stat} "
                         f"confidence interval cannot come from GuideLLM's summary{point}; "
                         f"{_NEEDS_SAMPLES_FIX}")
        return result
    est = [_summary_estimate(e, slo.metric, stat) for e in entries]
    if any(e is None for e in est):
        result.reason = (f"{lacking} and the summary lacks what a {stat} interval needs"
                         f"{point}; {_NEEDS_SAMPLES_FIX}")
        return result
    k = len(est)
    value = sum(e[0] for e in est if e) / k
    se = math.sqrt(sum(e[1] ** 2 for e in est if e)) / k
    n = sum(e[2] for e in est if e)
    result.candidate, result.n_candidate = value, n
    if n < slo.min_samples:
        result.reason = f"too few requests: {n}, need {slo.min_samples} (summary-based)"
        return result
    if k < policy.min_rounds:
        result.reason = f"too few rounds: {k}, policy min_rounds {policy.min_rounds}"
        return result
    z = _z(policy.bootstrap.confidence)
    result.ci_low, result.ci_high = value - z * se, value + z * se
    how = "std_dev / sqrt(n)" if stat == "mean" else "the interquartile range"
    return _slo_verdict(result, f"summary-based ({lacking}): {stat} of {n} requests, interval "
                                f"from {how}, normal approximation, within-run noise only")


def _slo_error_rate(slo: GateSLO, cand: VariantResults, point: float | str,
                    policy: GatePolicy) -> CheckResult:
    result = _slo_result(slo, point, policy)
    __, entries = _samples_at(cand, point, "request_latency_s")
    if not entries:
        result.reason = f"no load-test results {_at(point)} for the candidate"
        return result
    errored = sum(int((e.get("requests") or {}).get("errored", 0)) for e in entries)
    total = errored + sum(int((e.get("requests") or {}).get("successful", 0)) for e in entries)
    result.n_candidate = total
    if total < slo.min_samples:
        result.reason = f"too few requests: {total}, need {slo.min_samples}"
        return result
    result.candidate = errored / total
    lo, hi = wilson_interval(errored, total, _z(policy.bootstrap.confidence))
    # rounding can put a bound of the score interval a hair past the observed share
    result.ci_low, result.ci_high = min(lo, result.candidate), max(hi, result.candidate)
    return _slo_verdict(result, f"{errored}/{total} errored, Wilson interval")


def _attainment_groups(slo: GateSLO, cand: VariantResults, point: float | str,
                       ) -> tuple[dict[str, list[float]] | None, str]:
    """Per round (or time block) one 0/1 value per request: 1 when a successful request
    met every limit; errored requests count 0; incomplete ones are left out. None and the
    reason when the samples cannot say."""
    groups: dict[str, list[float]] = {}
    seen = False
    metrics = [m for m, __ in slo.limits]
    for rnd in cand.rounds:
        entry = rnd.rates.get(point)
        if entry is None:
            continue
        seen = True
        requests = entry.get("requests") or {}
        successful, errored = int(requests.get("successful") or 0), int(
            requests.get("errored") or 0)
        samples = entry.get("samples") or {}
        cols = [samples.get(m) or [] for m in metrics]
        if successful and not any(cols):
            return None, "no per-request samples for the candidate"
        lengths = {len(c) for c in cols}
        if len(lengths) != 1 or entry.get("samples_aligned") is False:
            return None, (f"per-request samples of {', '.join(metrics)} in {rnd.path} are not "
                          "one per request (a request lacked one of them), so a request's "
                          "limits cannot be checked together")
        blocks = (entry.get("blocks") or {}).get(metrics[0])
        if not isinstance(blocks, list) or len(blocks) != len(cols[0]):
            blocks = [None] * len(cols[0])
        ids: list[str] = []
        for i, blk in enumerate(blocks):
            met = all(isinstance(c[i], (int, float)) and math.isfinite(c[i]) and c[i] <= lim
                      for c, (__, lim) in zip(cols, slo.limits, strict=True))
            rid = rnd.round_id if blk is None else f"{rnd.round_id}.b{int(blk)}"
            groups.setdefault(rid, []).append(1.0 if met else 0.0)
            if rid not in ids:
                ids.append(rid)
        # errored requests carry no time block: spread evenly over the round's blocks
        ids = sorted(ids) or [rnd.round_id]
        for j in range(errored):
            groups.setdefault(ids[j % len(ids)], []).append(0.0)
    if not seen:
        return None, f"no load-test results {_at(point)} for the candidate"
    return groups, ""


def _slo_attainment(slo: GateSLO, cand: VariantResults, point: float | str,
                    policy: GatePolicy) -> CheckResult:
    np = _np()
    result = _slo_result(slo, point, policy)
    groups, why = _attainment_groups(slo, cand, point)
    objectives = ", ".join(f"{m} <= {v:g}{_SLO_UNITS[m]}" for m, v in slo.limits)
    if groups is None:
        result.reason = (why if why.startswith("no load-test") else
                         f"SLO {slo.name} needs per-request samples: {why}; "
                         f"{_NEEDS_SAMPLES_FIX}")
        return result
    arrays = [np.asarray(v) for v in groups.values() if v]
    n = sum(len(a) for a in arrays)
    met = int(sum(a.sum() for a in arrays))
    result.n_candidate = n
    if n < slo.min_samples:
        result.reason = f"too few requests: {n}, need {slo.min_samples} ({objectives})"
        return result
    result.candidate = met / n
    if len(arrays) < policy.min_rounds:
        result.reason = (f"too few rounds: {len(arrays)}, policy min_rounds {policy.min_rounds}"
                         f" (attainment {result.candidate:.4f})")
        return result
    lo, hi = wilson_interval(met, n, _z(policy.bootstrap.confidence))
    design = "Wilson interval"
    if len(arrays) > 1:
        # rounds (or blocks) differ: the hierarchical bootstrap sees that spread; the Wilson
        # interval keeps an all-conforming sample from claiming certainty
        rng = _rng(policy, f"slo|{slo.name}|attainment|{point}")
        star = _resample_stat(arrays, "mean", rng, policy.bootstrap.resamples)
        b_lo, b_hi = _ci(star, policy.bootstrap.confidence)
        lo, hi = min(lo, b_lo), max(hi, b_hi)
        design = f"Wilson interval widened by a bootstrap over {len(arrays)} rounds/blocks"
    result.ci_low, result.ci_high = min(lo, result.candidate), max(hi, result.candidate)
    return _slo_verdict(result, f"{met}/{n} requests met {objectives} (errored count as "
                                f"missed); {design}")


def _slo_throughput(slo: GateSLO, cand: VariantResults, point: float | str,
                    policy: GatePolicy) -> CheckResult:
    np = _np()
    fld = slo.metric.split(":", 1)[1] if ":" in slo.metric else "output_tokens_per_s"
    result = _slo_result(slo, point, policy)
    result.statistic = "mean"
    vals = []
    for rnd in cand.rounds:
        v = ((rnd.rates.get(point) or {}).get("throughput") or {}).get(fld)
        if isinstance(v, (int, float)) and math.isfinite(v):
            vals.append(float(v))
    if not vals:
        result.reason = f"no {fld} {_at(point)} for the candidate"
        return result
    result.candidate, result.n_candidate = sum(vals) / len(vals), len(vals)
    if len(vals) < max(2, policy.min_rounds):
        result.reason = (f"throughput is one number per round; {len(vals)} round(s) give no "
                         f"confidence interval (point {result.candidate:.4g}"
                         f"{_SLO_UNITS[slo.metric]})")
        return result
    rng = _rng(policy, f"slo|{slo.name}|{slo.metric}|{point}")
    arr = np.asarray(vals)
    idx = rng.integers(0, len(arr), size=(policy.bootstrap.resamples, len(arr)))
    result.ci_low, result.ci_high = _ci(arr[idx].mean(axis=1), policy.bootstrap.confidence)
    return _slo_verdict(result, f"mean of {len(vals)} rounds, bootstrap over rounds")


def _run_slo(slo: GateSLO, cand: VariantResults, policy: GatePolicy) -> list[CheckResult]:
    """Every load point an SLO names, decided on the candidate's own results."""
    points: list[float | str] = (list(cand.points) if slo.rates == "all"
                                 else [_rate_key(r) for r in slo.rates])
    if not points:
        result = _slo_result(slo, None, policy)
        result.reason = "no load-test results for the candidate"
        return [result]
    fn = {"latency": _slo_latency, "error_rate": _slo_error_rate,
          "attainment": _slo_attainment, "throughput": _slo_throughput}[slo.kind]
    results = [fn(slo, cand, p, policy) for p in points]
    for r in results:
        if isinstance(r.rate, str):
            r.point, r.rate = r.rate, None
    return results


def _run_check(check: GateCheck, base: VariantResults, cand: VariantResults,
               policy: GatePolicy) -> list[CheckResult]:
    results = _run_check_at_points(check, base, cand, policy)
    for r in results:
        r.dimension = check.dimension
        if isinstance(r.rate, str):
            r.point, r.rate = r.rate, None
    return results


def _run_check_at_points(check: GateCheck, base: VariantResults, cand: VariantResults,
                         policy: GatePolicy) -> list[CheckResult]:
    kind = check.kind
    if kind == "fidelity":
        return [_fidelity_check(check, cand, policy)]
    if kind == "accuracy":
        wanted = check.metric.split(":", 1)[1]
        if wanted == "*":
            tasks = sorted(set(_tasks(base.accuracy)) | set(_tasks(cand.accuracy)))
            if not tasks:
                who = [w for w, v in (("baseline", base), ("candidate", cand))
                       if not _tasks(v.accuracy)]
                return [CheckResult(
                    name=check.name, metric=check.metric, rate=None, statistic=None,
                    status="inconclusive", tolerance=check.tolerance, limit=check.tolerance,
                    kind="recovery", reason=f"no accuracy results for the {' and '.join(who)}",
                    confidence=policy.bootstrap.confidence,
                )]
        else:
            tasks = [wanted]
        return [_accuracy_check(check, base, cand, t, policy) for t in tasks]
    rates = _target_rates(check, base, cand)
    if not rates:
        return [CheckResult(
            name=check.name, metric=check.metric, rate=None, statistic=check.statistic,
            status="inconclusive", tolerance=check.tolerance, kind="ratio",
            reason="no load-test results for " + (
                "either variant" if not (base.points or cand.points) else
                "a load point both variants share"
                if check.rates == "all" else "the policy's rates"),
            confidence=policy.bootstrap.confidence,
        )]
    fn = {"latency": _latency_check, "error_rate": _error_rate_check,
          "throughput": _throughput_check}[kind]
    return [fn(check, base, cand, rate, policy) for rate in rates]


def evaluate_variants(base: VariantResults, cand: VariantResults,
                      policy: GatePolicy | dict[str, Any] | str | Path | None = None,
                      ) -> GateVerdict:
    """Run every policy check of ``cand`` against ``base`` (already loaded)."""
    pol = load_policy(policy)
    notes = _guidellm_version_notes(base, cand, pol)
    base, shared = _rounds_measured_with(base, cand)
    if shared:
        notes.append(shared)
    checks = [r for check in pol.checks for r in _run_check(check, base, cand, pol)]
    checks += [r for slo in pol.slos for r in _run_slo(slo, cand, pol)]
    n_rounds = (len(base.rounds), len(cand.rounds))
    if n_rounds[0] and n_rounds[1] and min(n_rounds) < 2:
        notes.append(
            f"{n_rounds[0]}/{n_rounds[1]} load-test round(s) (baseline/candidate): latency "
            "confidence intervals cover within-run noise only; measure 2+ interleaved rounds "
            "per variant on a shared or noisy host"
        )
    if pol.slos and len(cand.rounds) == 1:
        notes.append(
            "1 load-test round of the candidate: SLO confidence intervals cover within-run "
            "noise only; measure 2+ rounds to see run-to-run spread")
    return GateVerdict(
        baseline=base.name, candidate=cand.name, checks=checks,
        inconclusive_policy=pol.inconclusive, notes=notes, policy=pol.to_dict(),
        named_dimensions=pol.dimensions, accept_inconclusive=pol.accept_inconclusive,
    )


def _round_group(rnd: LoadRound) -> set[str] | None:
    """The variants a round was measured together with (``interleaved.variants``), or None
    for a round of one variant alone."""
    names: set[str] = set()
    for entry in rnd.rates.values():
        info = entry.get("interleaved")
        if not isinstance(info, dict):
            return None
        names.update(str(v) for v in info.get("variants") or [])
    return names or None


def _rounds_measured_with(base: VariantResults,
                          cand: VariantResults) -> tuple[VariantResults, str]:
    """The baseline's rounds that were measured together with the candidate.

    With more variants than a host can serve side by side, the baseline is measured with one
    group of candidates after another; a candidate is compared with the rounds it shared
    (the same moments of the host), not with the baseline's rounds of other groups.
    """
    if not cand.rounds or not base.rounds:
        return base, ""
    base_groups = [_round_group(r) for r in base.rounds]
    if None in base_groups or any(_round_group(r) is None for r in cand.rounds):
        return base, ""
    kept = [r for r, g in zip(base.rounds, base_groups, strict=True) if g and cand.name in g]
    # no round names the candidate (results renamed since): nothing tells the groups apart
    if not kept or len(kept) == len(base.rounds):
        return base, ""
    note = (f"baseline rounds measured together with {cand.name}: "
            f"{', '.join(r.round_id for r in kept)} of {len(base.rounds)} (the others were "
            "measured with other candidates)")
    return replace(base, rounds=kept), note


def _guidellm_version_notes(base: VariantResults, cand: VariantResults,
                            policy: GatePolicy) -> list[str]:
    """Refuse load results from both sides of GuideLLM 0.7.4 (token events bounded
    differently) unless the policy allows it; then a note says so."""
    sides = {**{f"baseline {p}": s for p, s in base.guidellm_sides.items()},
             **{f"candidate {p}": s for p, s in cand.guidellm_sides.items()}}
    if len(set(sides.values())) < 2:
        return []
    detail = ", ".join(f"{who}: {side}" for who, side in sorted(sides.items()))
    if not policy.allow_mixed_guidellm_versions:
        raise ModelGateError(
            f"load results come from GuideLLM versions on both sides of "
            f"{_TOKEN_EVENTS_VERSION}, which changed how token events are bounded: TTFT/ITL/"
            f"TPOT are not comparable ({detail})", field="baseline/candidate",
            fix="measure both variants with the same GuideLLM, or accept it explicitly with "
                "--allow-mixed-guidellm-versions (policy: allow_mixed_guidellm_versions: true)")
    return [f"GuideLLM versions on both sides of {_TOKEN_EVENTS_VERSION} accepted by policy "
            f"(allow_mixed_guidellm_versions): token timings may not be comparable ({detail})"]


def evaluate(baseline: str | Path | None, candidate: str | Path,
             policy: GatePolicy | dict[str, Any] | str | Path | None = None) -> GateVerdict:
    """Compare a candidate with a baseline, each a variant folder, guidellm folder or JSON file.

    ``baseline`` may be None when the policy has SLOs and no relative checks: SLOs are
    decided on the candidate alone.
    """
    pol = load_policy(policy)
    if baseline is None:
        if pol.checks:
            raise ModelGateError(
                "the policy's checks compare with a baseline, and none was given",
                field="baseline", fix="pass --baseline, or use a policy with slos only")
        cand = load_variant(candidate, role="candidate")
        return evaluate_variants(VariantResults(name="(none)", source=""), cand, pol)
    base = load_variant(baseline, role="baseline")
    cand = load_variant(candidate, role="candidate")
    return evaluate_variants(base, cand, pol)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a run directory."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise ModelGateError(
            f"run directory {run_dir} has no manifest.json", field="run_dir",
            fix="point at runs/<run_id>/ of a run that the pipeline created",
        )
    data = _read_json(path, "manifest")
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(variants, list) or not all(
        isinstance(v, dict) and isinstance(v.get("name"), str) for v in variants
    ):
        raise ModelGateError(
            f"{path}: 'variants' must be a list of objects with a 'name'",
            field="manifest.variants", fix="re-run the pipeline's provision stage",
        )
    return data


def evaluate_run(run_dir: str | Path,
                 policy: GatePolicy | dict[str, Any] | str | Path | None = None) -> RunVerdict:
    """Gate every candidate of a run against the variant marked ``baseline`` in manifest.json."""
    pol = load_policy(policy)
    root = Path(run_dir)
    manifest = read_manifest(root)
    variants = manifest["variants"]
    baselines = [v["name"] for v in variants if v.get("baseline")]
    if len(baselines) != 1:
        raise ModelGateError(
            f"{root / 'manifest.json'} marks {len(baselines)} variants as baseline, need one",
            field="manifest.variants[].baseline", fix="set baseline: true on exactly one variant",
        )
    base = load_variant(root / baselines[0], role="baseline", name=baselines[0],
                        allow_missing=True)
    notes = []
    if not (base.rounds or base.accuracy):
        notes.append(f"baseline {baselines[0]} has no results: every check against it is "
                     "inconclusive (SLOs are decided on the candidates alone)")
    verdicts = []
    for v in variants:
        if v.get("baseline"):
            continue
        cand = load_variant(root / v["name"], role="candidate", name=v["name"],
                            allow_missing=True)
        verdicts.append(evaluate_variants(base, cand, pol))
    if not verdicts:
        notes.append("the run has no candidate variants: nothing to gate")
    return RunVerdict(
        run_id=str(manifest.get("run_id") or root.name), baseline=baselines[0],
        verdicts=verdicts, notes=notes, policy=pol.to_dict(),
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cli_gate(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    verdict: GateVerdict | RunVerdict
    policy = load_policy(args.policy)
    if args.allow_mixed_guidellm_versions:
        policy = replace(policy, allow_mixed_guidellm_versions=True)
    if args.run_dir:
        if args.baseline or args.candidate:
            raise ModelGateError(
                "--run-dir cannot be combined with --baseline/--candidate", field="run_dir",
                fix="use either --run-dir DIR or --baseline PATH --candidate PATH",
            )
        verdict = evaluate_run(args.run_dir, policy)
        out = args.out or Path(args.run_dir) / "gate.json"
        junit = args.junit or Path(args.run_dir) / "junit.xml"
    else:
        if not args.candidate or not (args.baseline or not policy.checks):
            raise ModelGateError(
                "gate needs --run-dir, or both --baseline and --candidate",
                field="baseline" if not args.baseline else "candidate",
                fix="e.g. modelgate gate --baseline runs/r1/bf16 --candidate runs/r1/w4a16",
            )
        verdict = evaluate(args.baseline, args.candidate, policy)
        out, junit = args.out, args.junit
    # gate.json and junit.xml are written before the exit code can fail anything.
    if out:
        verdict.write_gate_json(out)
    if junit:
        verdict.write_junit(junit)
    emit(verdict.to_dict())
    return EXIT_CODES[verdict.status]


def register_cli(subparsers: Any) -> None:
    """Add ``modelgate gate``."""
    parser = subparsers.add_parser(
        "gate", help="compare candidates with their baseline; exit 1 on a regression, "
                     "3 when inconclusive",
        description="Exit 0: passed (every dimension the policy names has a check that "
                    "passed, none failed); 1: a regression (or an inconclusive check under "
                    "'inconclusive: fail'); 2: bad or unreadable input (a JSON error naming "
                    "the file); 3: inconclusive (a dimension has no deciding check and the "
                    "policy's accept_inconclusive does not list it).",
    )
    parser.add_argument("--baseline", help="baseline variant folder or results JSON (not "
                                           "needed when the policy has slos only)")
    parser.add_argument("--candidate", help="candidate variant folder or results JSON")
    parser.add_argument("--run-dir", help="a run directory: every candidate vs its baseline")
    parser.add_argument("--policy", help="gate policy YAML (default: the packaged policy)")
    parser.add_argument("--junit", help="write JUnit XML here (run-dir default: junit.xml)")
    parser.add_argument("--out", help="write gate.json here (run-dir default: gate.json)")
    parser.add_argument("--allow-mixed-guidellm-versions", action="store_true",
                        help="compare load results from GuideLLM versions on both sides of "
                             "0.7.4 (policy: allow_mixed_guidellm_versions)")
    parser.set_defaults(func=_cli_gate)
