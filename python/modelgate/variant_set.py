"""The variant set of a run, checked as a whole before any stage runs.

One decision at the start of every run: unique names, exactly one baseline, known recipes, and,
on vLLM CPU, recipes the serving host's kernel library can run. A variant marked
``if_servable: true`` that the host cannot serve is left out with the reason (the embedded
default lists W4A16 that way: AVX2-only CPUs have no W4A16 kernel); any other unservable
variant stops the run here, before a minute of quantizing is spent on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
