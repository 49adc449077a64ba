"""The variant set of a run, checked as a whole before any stage runs.

One decision at the start of every run: unique names, exactly one baseline, known recipes, and,
on vLLM CPU, recipes the serving host's kernel library can run. A variant marked
``if_servable: true`` that the host cannot serve is left out with the reason (the embedded
default lists W4A16 that way: AVX2-only CPUs have no W4A16 kernel); any other unservable
variant stops the run here, before a minute of quantizing is spent on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate.cpu_kernels import CpuKernelLibrary, servable
from modelgate.errors import ModelGateError
from modelgate.recipes import build_recipe

# Keys a variant may have; the stages read the first five, the set check the last.
VARIANT_KEYS = ("name", "recipe", "group_size", "ignore", "baseline", "serving_overrides",
                "if_servable", "load_delay_ms")


@dataclass
class VariantSet:
    """The variants the run builds, those left out and why, and the kernels decided from."""

    variants: list[dict[str, Any]]
    left_out: list[dict[str, str]] = field(default_factory=list)
    kernels: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: the module's result and the manifest's record."""
        return {"variants": self.variants, "left_out": self.left_out, "kernels": self.kernels}

    @property
    def summary(self) -> str:
        """One line per decision, for the play's output."""
        names = ", ".join(v["name"] for v in self.variants)
        lines = [f"variants: {names}"]
        lines += [f"left out {d['name']}: {d['reason']}" for d in self.left_out]
        return "\n".join(lines)


def _field(index: int, key: str) -> str:
    return f"modelgate_variants[{index}].{key}"


def check_variant_set(variants: Any, *, backend: str | None = None,
                      kernels: CpuKernelLibrary | None = None,
                      stored_baseline: bool = False) -> VariantSet:
    """Check ``variants`` (the inventory's list) and decide which this run builds.

    ``kernels`` is the serving host's vLLM CPU library (``cpu_kernels.detect``), used when
    ``backend`` is ``vllm-cpu``. With ``stored_baseline`` the baseline comes from a result file,
    so the list needs no baseline variant. Raises ModelGateError naming the variant and the fix.
    """
    if not isinstance(variants, list) or not variants:
        raise ModelGateError("no variants to build", field="modelgate_variants",
                             fix="list at least a baseline and one candidate")
    seen: set[str] = set()
    recipes = []
    for i, v in enumerate(variants):
        if not isinstance(v, dict):
            raise ModelGateError(f"variant {i} is not a mapping", field=f"modelgate_variants[{i}]",
                                 fix="write each variant as {name: ..., recipe: ...}")
        unknown = sorted(set(v) - set(VARIANT_KEYS))
        if unknown:
            raise ModelGateError(f"variant {v.get('name', i)!r} has unknown keys {unknown}",
                                 field=_field(i, unknown[0]),
                                 fix=f"use only {', '.join(VARIANT_KEYS)}")
        name = v.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ModelGateError(f"variant {i} has no name", field=_field(i, "name"),
                                 fix="give every variant a name, e.g. w4a16")
        if name in seen:
            raise ModelGateError(f"two variants are named {name!r}", field=_field(i, "name"),
                                 fix="give every variant its own name")
        seen.add(name)
        if "recipe" not in v:
            raise ModelGateError(f"variant {name!r} has no recipe", field=_field(i, "recipe"),
                                 fix="set recipe: none for the baseline, or w4a16, "
                                 "w8a8-int8, fp8-dynamic, or a recipe YAML file")
        delay = v.get("load_delay_ms")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                                  or delay < 0):
            raise ModelGateError(f"variant {name!r}: load_delay_ms must be a number of ms >= 0,"
                                 f" got {delay!r}", field=_field(i, "load_delay_ms"),
                                 fix="e.g. load_delay_ms: 40, or leave it out")
        try:
            recipes.append(build_recipe(str(v["recipe"]), group_size=v.get("group_size"),
                                        ignore=v.get("ignore")))
        except ModelGateError as exc:
            raise ModelGateError(f"variant {name!r}: {exc.message}", field=_field(i, "recipe"),
                                 fix=exc.fix) from exc
    baselines = [v["name"] for v in variants if v.get("baseline")]
    if len(baselines) > 1:
        raise ModelGateError(f"{len(baselines)} variants are baselines ({', '.join(baselines)})",
                             field="modelgate_variants",
                             fix="mark exactly one variant baseline: true")
    if not baselines and not stored_baseline:
        raise ModelGateError("no variant is the baseline", field="modelgate_variants",
                             fix="mark one variant (usually recipe: none) baseline: true, or "
                             "give a stored baseline (modelgate_stored_baseline)")
    check_kernels = backend == "vllm-cpu" and kernels is not None
    kept: list[dict[str, Any]] = []
    left_out: list[dict[str, str]] = []
    names = [str(v["recipe"]) for v in variants]
    for v, recipe in zip(variants, recipes, strict=True):
        clean = {k: val for k, val in v.items() if k != "if_servable"}
        verdict = servable(recipe, kernels, names) if check_kernels else None  # type: ignore[arg-type]
        if verdict is None or verdict.servable:
            kept.append(clean)
        elif v.get("if_servable"):
            left_out.append({"name": v["name"], "recipe": str(v["recipe"]),
                             "reason": verdict.reason})
        else:
            raise ModelGateError(
                f"variant {v['name']!r} cannot be served here: {verdict.reason}",
                field=f"modelgate_variants ({v['name']})",
                fix="change its recipe or target, or mark it if_servable: true to leave it "
                "out where it cannot be served")
    if not kept:
        raise ModelGateError(
            "every variant was left out (" + "; ".join(d["reason"] for d in left_out) + ")",
            field="modelgate_variants", fix="add a variant this host can serve")
    if not any(not v.get("baseline") for v in kept) and not stored_baseline:
        raise ModelGateError(
            "no candidate is left to compare with the baseline"
            + (f" ({'; '.join(d['reason'] for d in left_out)})" if left_out else ""),
            field="modelgate_variants", fix="add a candidate this host can serve")
    return VariantSet(kept, left_out, kernels.to_dict() if check_kernels and kernels else None)


# --------------------------------------------------------------------- the run's other inputs

# Where each stage can run; a target is a serve_<target> role, a runner a quantize runner.
TARGETS = ("local", "rhaiis", "kserve")
QUANTIZE_RUNNERS = ("local", "podman", "kubernetes")
# Upper bounds that catch a slipped digit, not limits of any model: 2**20 tokens is beyond
# every published context length; more calibration samples or rounds than these is hours.
MAX_TOKENS = 1 << 20
MAX_SAMPLES = 100_000
MAX_ROUNDS = 100


def _integer(value: Any, fld: str, low: int, high: int, fix: str) -> int:
    """``value`` as an int in [low, high]: a digit string (an extra var) counts, ``two``,
    ``1.5``, ``true`` or an empty value does not."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None:
        raise ModelGateError(f"{fld} must be a whole number, got {value!r}", field=fld, fix=fix)
    if not low <= number <= high:
        raise ModelGateError(f"{fld} must be between {low} and {high}, got {number}",
                             field=fld, fix=fix)
    return number


def _mapping(value: Any, fld: str, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelGateError(f"{fld} must be a mapping, got {value!r}", field=fld,
                             fix=f"e.g. {fld}: {example}")
    return value


def check_run_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Check the run's inputs other than the variants, before any stage does work.

    ``inputs`` holds the pipeline's variables without the ``modelgate_`` prefix (``target``,
    ``quantize_runner``, ``serving``, ``calibration``, ``validate_rounds``, ``load_profile``,
    ``load_overrides``, ``gate_policy``, ``gate_tolerances``, ``model``, ``runs_dir`` with
    ``run_id``: the run to continue must exist); a key left out is not checked. Ranges,
    choices, the gate policy (parsed by the gate's own parser) and the load profile are
    decided here, so a wrong value fails in the first seconds of the play rather
    than after the variants were quantized and served. Returns what was decided (the policy's
    source, the profile's name, the model files checked); raises ModelGateError naming the
    input and the fix.
    """
    decided: dict[str, Any] = {}
    if "target" in inputs and inputs["target"] not in TARGETS:
        raise ModelGateError(f"modelgate_target {inputs['target']!r} is not built",
                             field="modelgate_target", fix=f"use one of {', '.join(TARGETS)}")
    runner = inputs.get("quantize_runner")
    if runner is not None and runner not in QUANTIZE_RUNNERS:
        raise ModelGateError(f"modelgate_quantize_runner {runner!r} is not built",
                             field="modelgate_quantize_runner",
                             fix=f"use one of {', '.join(QUANTIZE_RUNNERS)}")
    if "serving" in inputs:
        serving = _mapping(inputs["serving"], "modelgate_serving",
                           "{port: 8000, max_model_len: 4096}")
        if "port" in serving:
            _integer(serving["port"], "modelgate_serving.port", 1, 65535,
                     "a free TCP port, e.g. 8000 (each further variant takes the next one)")
        if "max_model_len" in serving:
            _integer(serving["max_model_len"], "modelgate_serving.max_model_len", 1, MAX_TOKENS,
                     "the longest prompt plus output a request may have, e.g. 4096")
        overrides = serving.get("overrides")
        if overrides is not None:
            _mapping(overrides, "modelgate_serving.overrides", "{enforce-eager: true}")
    if "calibration" in inputs:
        calib = _mapping(inputs["calibration"], "modelgate_calibration",
                         "{num_samples: 256, max_seq_length: 1024}")
        unknown = sorted(set(calib) - {"num_samples", "max_seq_length"})
        if unknown:
            raise ModelGateError(f"modelgate_calibration has an unknown key {unknown[0]!r}",
                                 field=f"modelgate_calibration.{unknown[0]}",
                                 fix="use num_samples and max_seq_length")
        if "num_samples" in calib:
            _integer(calib["num_samples"], "modelgate_calibration.num_samples", 1, MAX_SAMPLES,
                     "e.g. num_samples: 256")
        if "max_seq_length" in calib:
            _integer(calib["max_seq_length"], "modelgate_calibration.max_seq_length", 1,
                     MAX_TOKENS, "e.g. max_seq_length: 1024")
    if "validate_rounds" in inputs:
        _integer(inputs["validate_rounds"], "modelgate_validate_rounds", 1, MAX_ROUNDS,
                 "measure at least one round (2, the default, lets the gate decide latency)")
    if "load_profile" in inputs:
        from modelgate.loadtest import get_profile

        overrides = _mapping(inputs.get("load_overrides") or {}, "modelgate_load_overrides",
                             "{max_seconds: 20}")
        try:
            profile = get_profile(str(inputs["load_profile"]))
        except ModelGateError as exc:
            raise ModelGateError(exc.message, field="modelgate_load_profile",
                                 fix=exc.fix) from exc
        known = set(vars(profile))
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ModelGateError(f"modelgate_load_overrides has an unknown field {unknown[0]!r}",
                                 field=f"modelgate_load_overrides.{unknown[0]}",
                                 fix=f"use some of {', '.join(sorted(known))}")
        try:
            get_profile(str(inputs["load_profile"]), **overrides)
        except (TypeError, ValueError) as exc:
            raise ModelGateError(f"modelgate_load_overrides: {exc}",
                                 field="modelgate_load_overrides",
                                 fix="give rates as a list of numbers, counts as integers") from exc
        decided["load_profile"] = profile.name
    if "gate_policy" in inputs or "gate_tolerances" in inputs:
        from modelgate.gate import load_policy, with_tolerances

        source = inputs.get("gate_policy") or None
        try:
            policy = with_tolerances(load_policy(source), dict(inputs.get("gate_tolerances") or {}))
        except ModelGateError as exc:
            fld = "modelgate_gate_policy" if exc.field in (None, "policy") or source else \
                "modelgate_gate_tolerances"
            if exc.field and exc.field.startswith("tolerances."):
                fld = {"tolerances.latency": "modelgate_gate_latency_tolerance",
                       "tolerances.accuracy": "modelgate_gate_accuracy_recovery"}.get(
                           exc.field, exc.field)
            elif exc.field and exc.field != "policy":
                fld = f"modelgate_gate_policy ({exc.field})"
            raise ModelGateError(exc.message, field=fld, fix=exc.fix) from exc
        decided["gate_policy"] = policy.source
    if inputs.get("runs_dir"):
        from modelgate.rundir import resolve_run_id

        decided["run_id"] = resolve_run_id(Path(str(inputs["runs_dir"])),
                                           inputs.get("run_id") or None)
    model = inputs.get("model")
    if isinstance(model, dict) and model.get("source") == "local" and model.get("path"):
        from modelgate.geometry import check_model_files

        path = Path(str(model["path"]))
        if not path.is_dir():
            raise ModelGateError(f"model directory {path} does not exist",
                                 field="modelgate_model.path",
                                 fix="point it at a checkpoint directory (config.json and "
                                 "*.safetensors)")
        decided["model_files"] = check_model_files(path)
    return decided
