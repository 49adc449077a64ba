"""Quantization recipes: named presets (and user files) rendered as LLM Compressor YAML.

The YAML is what ``llmcompressor.oneshot(recipe=...)`` parses (``Recipe.create_instance``):
``<name>_stage: {<group>_modifiers: {<ModifierClass>: {args}}}``. Schemes are written as
explicit ``config_groups`` (compressed-tensors ``QuantizationScheme`` fields) rather than preset
names, so the recipe digest pins every quantization argument, not a name whose meaning can
change between releases.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelgate.digest import sha256_json
from modelgate.errors import ModelGateError

PRESETS = ("w4a16", "fp8-dynamic", "w8a8-int8", "none")
DEFAULT_GROUP_SIZE = 128
DEFAULT_TARGETS = ("Linear",)
# Never quantized: the output head (accuracy-critical, and vLLM keeps it unquantized).
DEFAULT_IGNORE = ("lm_head",)
# Extra for hybrid / MoE models: the Mamba depthwise conv (not a GEMM, and tiny), and each
# family's MoE routers and gates (a quantized router changes which experts fire; vLLM builds
# them as unquantized ReplicatedLinear / gate layers). ``re:`` patterns are re.match'ed
# against module names (compressed_tensors.utils.match.match_name).
HYBRID_IGNORE = (
    "re:.*conv1d",  # Mamba-2 and gated-delta-net depthwise convs
    "re:.*mlp\\.gate$",  # Qwen-MoE / DeepSeek routers
    "re:.*mixer\\.gate$",  # Nemotron-H MoE router
    "re:.*block_sparse_moe\\.gate$",  # Mixtral router
    "re:.*mlp\\.router$",  # gpt-oss router
    "re:.*router\\.layer$",  # Granite-4.0-H router
    "re:.*feed_forward\\.router$",  # Jamba router
    "re:.*shared_expert_gate$",  # Qwen-MoE / Qwen3-Next shared-expert gate (hidden -> 1)
)

# The LLM Compressor modifiers that need no calibration data (weights rounded as they are).
NO_CALIBRATION_MODIFIERS = ("QuantizationModifier",)

# LLM Compressor 0.14 swaps the weight observer "mse" for "memoryless_mse" with a warning
# (llmcompressor/modifiers/quantization/calibration.py); name the one that actually runs.
MSE_WEIGHT_OBSERVER = "memoryless_mse"
# compressed-tensors 0.19 removed actorder "group"/True; "weight" is the current spelling
# ("static" is its alias): reorder columns during GPTQ only, no g_idx in the checkpoint.
ACTORDER = "weight"


@dataclass
class Recipe:
    """A quantization recipe: its name, the LLM Compressor stage dict, and what preflight needs.

    ``weight_bits``/``weight_strategy``/``group_size``/``activation_bits`` summarise the main
    scheme for the preflight rules; ``stages`` is the exact dict written as YAML.
    """

    name: str
    stages: dict[str, Any]
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    ignore: list[str] = field(default_factory=list)
    weight_bits: int | None = None
    weight_type: str | None = None
    weight_strategy: str | None = None
    group_size: int | None = None
    block_structure: list[int] | None = None  # weights strategy "block": [block_n, block_k]
    activation_bits: int | None = None
    needs_calibration: bool = False
    source_file: str | None = None

    @property
    def is_baseline(self) -> bool:
        """True for the ``none`` recipe: the variant is the source model itself."""
        return not self.stages

    @property
    def is_weight_only_int4(self) -> bool:
        """True for W4A16-style schemes, served by vLLM's mixed-precision (WNA16) kernels."""
        return (self.weight_bits == 4 and self.weight_type == "int"
                and self.activation_bits is None)

    def to_yaml(self) -> str:
        """The recipe as LLM Compressor YAML ('' for the baseline)."""
        if self.is_baseline:
            return ""
        return yaml.safe_dump(self.stages, sort_keys=False, default_flow_style=False)

    @property
    def digest(self) -> str:
        """Content digest of what the recipe does (independent of YAML formatting)."""
        return "sha256:" + sha256_json({"stages": self.stages})

    def to_dict(self) -> dict[str, Any]:
        """Plain-data summary for JSON output and provenance."""
        return {
            "name": self.name, "digest": self.digest, "targets": self.targets,
            "ignore": self.ignore, "weight_bits": self.weight_bits,
            "weight_type": self.weight_type, "weight_strategy": self.weight_strategy,
            "group_size": self.group_size, "block_structure": self.block_structure,
            "activation_bits": self.activation_bits,
            "needs_calibration": self.needs_calibration, "source_file": self.source_file,
        }


def default_ignore() -> list[str]:
    """The ignore list a preset uses when the user gives none.

    The hybrid patterns match nothing in a plain decoder, so one list serves every model.
    """
    return [*DEFAULT_IGNORE, *HYBRID_IGNORE]


def build_recipe(
    name: str,
    *,
    group_size: int | None = None,
    ignore: list[str] | None = None,
    targets: list[str] | None = None,
) -> Recipe:
    """Build a named preset, or load a user recipe when ``name`` is a path to a YAML file.

    ``ignore`` replaces the default ignore list; ``targets`` defaults to all Linear layers.
    """
    path = Path(name)
    if name not in PRESETS and (path.suffix in (".yaml", ".yml", ".json") or path.is_file()):
        return load_recipe_file(path)
    if name not in PRESETS:
        raise ModelGateError(
            f"unknown recipe {name!r}", field="recipe",
            fix=f"use one of {', '.join(PRESETS)} or a path to an LLM Compressor recipe YAML",
        )
    tgts = list(targets or DEFAULT_TARGETS)
    ign = list(ignore) if ignore is not None else default_ignore()
    if name == "none":
        return Recipe(name="none", stages={}, targets=tgts, ignore=ign)
    if group_size is not None and name != "w4a16":
        raise ModelGateError(
            f"recipe {name} quantizes weights per channel; group_size does not apply",
            field="group_size", fix="drop --group-size, or use recipe w4a16",
        )
    if name == "w4a16":
        gs = DEFAULT_GROUP_SIZE if group_size is None else int(group_size)
        if gs <= 0 or gs % 2:
            raise ModelGateError(f"group_size {gs} is not a positive even number",
                                 field="group_size", fix="use 32, 64 or 128")
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                   "group_size": gs, "observer": MSE_WEIGHT_OBSERVER, "actorder": ACTORDER}
        modifier = {"GPTQModifier": {
            "targets": tgts, "ignore": ign, "block_size": 128, "dampening_frac": 0.01,
            "config_groups": {"group_0": {"targets": tgts, "weights": weights,
                                          "input_activations": None,
                                          "output_activations": None}},
        }}
        return Recipe(name="w4a16", stages={"quant_stage": {"quant_modifiers": modifier}},
                      targets=tgts, ignore=ign, weight_bits=4, weight_type="int",
                      weight_strategy="group", group_size=gs, needs_calibration=True)
    if name == "fp8-dynamic":
        # compressed-tensors FP8_DYNAMIC: static per-channel FP8 weights, dynamic per-token
        # FP8 activations; no calibration data needed.
        scheme = {
            "targets": tgts,
            "weights": {"num_bits": 8, "type": "float", "symmetric": True,
                        "strategy": "channel", "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                                  "strategy": "token", "dynamic": True},
        }
        modifier = {"QuantizationModifier": {"targets": tgts, "ignore": ign,
                                             "config_groups": {"group_0": scheme}}}
        return Recipe(name="fp8-dynamic", stages={"quant_stage": {"quant_modifiers": modifier}},
                      targets=tgts, ignore=ign, weight_bits=8, weight_type="float",
                      weight_strategy="channel", activation_bits=8)
    # w8a8-int8: compressed-tensors INT8_W8A8 (per-channel int8 weights by GPTQ,
    # dynamic per-token int8 activations).
    scheme = {
        "targets": tgts,
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                    "dynamic": False, "observer": MSE_WEIGHT_OBSERVER},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                              "strategy": "token", "dynamic": True},
    }
    modifier = {"GPTQModifier": {"targets": tgts, "ignore": ign, "block_size": 128,
                                 "dampening_frac": 0.01, "config_groups": {"group_0": scheme}}}
    return Recipe(name="w8a8-int8", stages={"quant_stage": {"quant_modifiers": modifier}},
                  targets=tgts, ignore=ign, weight_bits=8, weight_type="int",
                  weight_strategy="channel", activation_bits=8, needs_calibration=True)


def load_recipe_file(path: Path | str) -> Recipe:
    """Load a user's LLM Compressor recipe (YAML/JSON) and summarise its first quant scheme."""
    path = Path(path)
    if not path.is_file():
        raise ModelGateError(f"recipe file {path} does not exist", field="recipe",
                             fix="give an existing recipe YAML or a preset name")
    try:
        stages = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelGateError(f"recipe file {path} is not text (byte {exc.start} is not UTF-8)",
                             field="recipe",
                             fix="give an LLM Compressor recipe YAML, or a preset name") from exc
    except OSError as exc:
        raise ModelGateError(f"cannot read recipe file {path}: {exc.strerror}", field="recipe",
                             fix="give a readable recipe YAML, or a preset name") from exc
    except yaml.YAMLError as exc:
        raise ModelGateError(f"recipe file {path} is not valid YAML: {exc}", field="recipe",
                             fix="fix the YAML syntax") from exc
    if not isinstance(stages, dict) or not any(str(k).endswith("_stage") for k in stages):
        raise ModelGateError(
            f"recipe file {path} has no '<name>_stage' mapping", field="recipe",
            fix="write it as <name>_stage: {<group>_modifiers: {GPTQModifier: {...}}}",
        )
    recipe = Recipe(name=f"file:{path.name}", stages=stages, source_file=str(path.resolve()))
    # Every modifier but round-to-nearest quantization learns from activations: GPTQ, AWQ,
    # SmoothQuant, and the pruning ones (SparseGPT, Wanda) as well.
    modifiers = _modifiers(stages)
    recipe.needs_calibration = any(cls not in NO_CALIBRATION_MODIFIERS for cls, __ in modifiers)
    for __, args in modifiers:
        if not isinstance(args, dict) or not ("config_groups" in args or "scheme" in args):
            continue
        recipe.ignore = list(args.get("ignore") or [])
        targets = args.get("targets") or list(DEFAULT_TARGETS)
        recipe.targets = [targets] if isinstance(targets, str) else list(targets)
        groups = args.get("config_groups") or {}
        scheme = next(iter(groups.values()), None) if groups else None
        if isinstance(scheme, dict):
            weights = scheme.get("weights") or {}
            acts = scheme.get("input_activations")
            recipe.weight_bits = weights.get("num_bits")
            recipe.weight_type = str(weights.get("type", "int")).lower()
            recipe.group_size = weights.get("group_size")
            recipe.weight_strategy = weights.get("strategy") or (
                "group" if (recipe.group_size or 0) > 0 else None)
            recipe.activation_bits = acts.get("num_bits") if isinstance(acts, dict) else None
            block = weights.get("block_structure")
            if isinstance(block, list) and len(block) == 2:
                recipe.block_structure = [int(block[0]), int(block[1])]
        elif isinstance(args.get("scheme"), str) and args["scheme"].upper() == "W4A16":
            recipe.weight_bits, recipe.weight_type = 4, "int"
            recipe.weight_strategy, recipe.group_size = "group", 128
        break
    return recipe


def _modifiers(stages: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every (ModifierClass, args) in a recipe dict, in order."""
    found = []
    for stage_key, stage in stages.items():
        if not (stage_key.endswith("_stage") and isinstance(stage, dict)):
            continue
        for group_key, group in stage.items():
            if group_key.endswith("_modifiers") and isinstance(group, dict):
                found += list(group.items())
    return found


def recipe_with_ignore(recipe: Recipe, extra_ignore: list[str]) -> Recipe:
    """A copy of ``recipe`` whose modifiers also ignore ``extra_ignore`` patterns."""
    new = copy.deepcopy(recipe)
    for _cls, args in _modifiers(new.stages):
        if isinstance(args, dict):
            args["ignore"] = list(args.get("ignore") or []) + [
                p for p in extra_ignore if p not in (args.get("ignore") or [])]
    new.ignore = list(recipe.ignore) + [p for p in extra_ignore if p not in recipe.ignore]
    return new
