"""Recipe preflight: will this recipe quantize this model, and will the result serve?

Checked from shapes alone (``ModelGeometry``), in milliseconds, before any calibration or GPU
time: LLM Compressor's group-size divisibility, and the shape rules of the vLLM kernels that
will run the quantized layers on the chosen backend.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.cpu_kernels import CpuKernelLibrary, servable
from modelgate.errors import ModelGateError
from modelgate.geometry import LinearLayer, ModelGeometry, check_model_files
from modelgate.recipes import Recipe, build_recipe, default_ignore

BACKENDS = ("vllm-cuda", "vllm-cpu")
# Group sizes tried when suggesting a fix, largest first.
CANDIDATE_GROUP_SIZES = (1024, 512, 256, 128, 64, 32)
# vLLM shards these along their input dimension under tensor parallelism (RowParallelLinear);
# all other projections are sharded along the output dimension.
_ROW_PARALLEL_SUFFIXES = (".o_proj", ".down_proj", ".out_proj", ".fc2_latent_proj")

# --- vLLM CUDA mixed-precision (W4A16) kernels, as chosen on Hopper (SM90) ---------------
HOPPER_W4A16_KERNELS = ("machete", "marlin")  # other architectures: Marlin alone
# Constants as in vLLM 0.32's source (checked in the installed vllm-cpu 0.32.0 package).
# vllm/model_executor/layers/quantization/utils/machete_utils.py:
#   MACHETE_PREPACKED_BLOCK_SHAPE = [64, 128]; check_machete_supports_shape(in, out) needs
#   in_features % 64 == 0 and out_features % 128 == 0; query_machete_supported_group_sizes
#   (bf16/fp16 activations) = [-1, 64, 128]. Machete needs SM90
#   (vllm/model_executor/kernels/linear/mixed_precision/machete.py, can_implement).
MACHETE_MIN_IN, MACHETE_MIN_OUT = 64, 128
MACHETE_GROUP_SIZES = (-1, 64, 128)
# vllm/model_executor/layers/quantization/utils/marlin_utils.py:
#   GPTQ_MARLIN_MIN_THREAD_N = 64 (out_features), GPTQ_MARLIN_MIN_THREAD_K = 128 (in_features),
#   MARLIN_SUPPORTED_GROUP_SIZES = [-1, 32, 64, 128], and in_features % group_size == 0 when
#   group_size < in_features (verify_marlin_supports_shape). vLLM tries Machete first, then
#   Marlin (vllm/model_executor/kernels/linear/__init__.py, the CUDA mixed-precision kernel
#   list); each layer needs one of the two, the fallbacks after them are far slower.
MARLIN_MIN_IN, MARLIN_MIN_OUT = 128, 64
MARLIN_GROUP_SIZES = (-1, 32, 64, 128)
# --- vLLM CPU: CPUWNA16LinearKernel (vllm/model_executor/kernels/linear/mixed_precision/cpu.py)
#   input and output sizes multiples of 32, group size even. Field notes: a layer whose
#   output is not a multiple of 32 fails to load on vLLM CPU.
CPU_WNA16_MULTIPLE = 32
# --- vLLM CUDA fused MoE: expert layers run in one fused kernel, not as separate linears.
#   W4A16 from compressed-tensors (compressed_tensors_moe_wna16.py selects the backend with
#   allow_tile_padding=True): fused Marlin MoE takes hidden_size % 128 == 0, group size in
#   [-1, 32, 64, 128] and intermediate_size_per_partition % group_size == 0
#   (check_moe_marlin_supports_config, quantization/utils/marlin_utils.py); otherwise
#   vLLM falls through to its Triton WNA16 MoE kernel (fused_moe/oracle/int_wna16.py): slower,
#   not a failure, so it is a note.
MOE_MARLIN_HIDDEN = 128
# --- FP8 block quantization (weights strategy "block", block_structure [block_n, block_k]):
#   validate_fp8_block_shape in vllm/model_executor/layers/quantization/utils/fp8_utils.py:
#   a row-parallel shard's in_features % block_k under TP, every output partition of a
#   TP-split or merged GEMM (q/k/v, gate/up; the last of a merged group excepted) % block_n;
#   validate_fp8_block_shape_moe: experts' intermediate_size_per_partition % block_n (and
#   % block_k under TP).
_MERGED_NOT_LAST = (".q_proj", ".k_proj", ".gate_proj", ".w1")
# --- FP8 channel / INT8 W8A8 (cutlass_scaled_mm, vllm/_custom_ops.py): the weight's both
#   dimensions multiples of 16, else vLLM falls back to a slower Triton kernel (not an error).
CUTLASS_MULTIPLE = 16


@dataclass
class Finding:
    """One problem with one layer, and how to fix it."""

    layer: str
    problem: str
    fix: str


@dataclass
class PreflightReport:
    """The verdict: ``ok`` is False when the recipe cannot work on this model and backend."""

    ok: bool
    findings: list[Finding]
    summary: str
    checked_layers: int = 0
    ignored_layers: list[str] = field(default_factory=list)
    suggested_group_size: int | None = None
    notes: list[str] = field(default_factory=list)  # works, but slower than it could

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output."""
        return asdict(self)


def matches(name: str, module_class: str, pattern: str) -> bool:
    """compressed-tensors target matching: exact name, ``re:`` prefix (re.match), or class."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return pattern in (name, module_class)


def quantized_layers(geometry: ModelGeometry,
                     recipe: Recipe) -> tuple[list[LinearLayer], list[str]]:
    """Split the layers into (quantized, ignored names) the way LLM Compressor would."""
    quantized, ignored = [], []
    for lin in geometry.linear_layers:
        if not any(matches(lin.name, lin.module_class, t) for t in recipe.targets):
            continue
        if any(matches(lin.name, lin.module_class, p) for p in recipe.ignore):
            ignored.append(lin.name)
        else:
            quantized.append(lin)
    return quantized, ignored


def _partition(lin: LinearLayer, tp: int) -> tuple[int, int]:
    """(in, out) features of one tensor-parallel shard of ``lin``."""
    if lin.name.endswith(_ROW_PARALLEL_SUFFIXES):
        return lin.in_features // tp, lin.out_features
    return lin.in_features, lin.out_features // tp


def _family_pattern(name: str) -> str:
    """An ignore pattern for every layer of this name's family, e.g. ``re:.*\\.down_proj$``."""
    return "re:.*\\." + re.escape(name.rsplit(".", 1)[-1]) + "$"


def _machete_problem(k: int, n: int, gs: int) -> str | None:
    if gs not in MACHETE_GROUP_SIZES:
        return f"group size {gs} not in Machete's {list(MACHETE_GROUP_SIZES)}"
    if k % MACHETE_MIN_IN:
        return f"in_features {k} not a multiple of {MACHETE_MIN_IN} (Machete)"
    if n % MACHETE_MIN_OUT:
        return f"out_features {n} not a multiple of {MACHETE_MIN_OUT} (Machete)"
    return None


def _marlin_problem(k: int, n: int, full_k: int, gs: int) -> str | None:
    if gs not in MARLIN_GROUP_SIZES:
        return f"group size {gs} not in Marlin's {list(MARLIN_GROUP_SIZES)}"
    if n % MARLIN_MIN_OUT:
        return f"out_features {n} not a multiple of {MARLIN_MIN_OUT} (Marlin)"
    if k % MARLIN_MIN_IN:
        return f"in_features {k} not a multiple of {MARLIN_MIN_IN} (Marlin)"
    if 0 < gs < full_k and k % gs:
        return f"in_features {k} not a multiple of group size {gs} (Marlin)"
    return None


def _check(geometry: ModelGeometry, recipe: Recipe, backend: str | None,
           tp: int, cuda_kernels: Sequence[str] = HOPPER_W4A16_KERNELS
           ) -> tuple[list[Finding], int, list[str], list[str]]:
    """(findings, layers checked, ignored names, slow-path notes) for one recipe."""
    layers, ignored = quantized_layers(geometry, recipe)
    findings: list[Finding] = []
    notes: list[str] = []
    grouped = recipe.weight_strategy == "group" and recipe.group_size
    gs = int(recipe.group_size or -1) if grouped else -1
    for lin in layers:
        problems: list[str] = []
        if grouped and lin.in_features % gs:
            # compressed-tensors: group quantization requires columns % group_size == 0
            # (llmcompressor/modifiers/quantization/group_size_validation.py)
            problems.append(
                f"in_features {lin.in_features} is not divisible by group size {gs}")
        if recipe.is_weight_only_int4 and backend == "vllm-cpu":
            k, n = _partition(lin, tp)
            if n % CPU_WNA16_MULTIPLE:
                problems.append(f"out_features {n} is not a multiple of {CPU_WNA16_MULTIPLE} "
                                "(vLLM CPU WNA16 kernel)")
            if k % CPU_WNA16_MULTIPLE:
                problems.append(f"in_features {k} is not a multiple of {CPU_WNA16_MULTIPLE} "
                                "(vLLM CPU WNA16 kernel)")
        if lin.kind == "moe_expert" and backend == "vllm-cuda":
            moe_problems, moe_notes = _moe_expert_problems(lin, recipe, gs, tp)
            problems += moe_problems
            notes += [f"{lin.name}: {n}" for n in moe_notes]
            for problem in problems:
                findings.append(Finding(lin.name, problem, ""))
            continue
        if recipe.block_structure and backend == "vllm-cuda":
            problems += _fp8_block_problems(lin, recipe.block_structure, tp)
        if recipe.is_weight_only_int4 and backend == "vllm-cuda":
            k, n = _partition(lin, tp)
            tried = {"machete": _machete_problem(k, n, gs),
                     "marlin": _marlin_problem(k, n, lin.in_features, gs)}
            why = [tried[kern] for kern in cuda_kernels if kern in tried]
            if all(why):
                gpu = "Hopper" if "machete" in cuda_kernels else "this GPU's"
                problems.append(f"no vLLM {gpu} W4A16 kernel fits: {'; '.join(why)}")
        for problem in problems:
            findings.append(Finding(lin.name, problem, ""))
    return findings, len(layers), ignored, notes


_EXPERT_FUSED_UP = ("gate_up_proj", "input_linear")  # gate and up in one: 2 x intermediate
_EXPERT_DOWN = ("down_proj", "w2", "output_linear")


def _expert_dims(lin: LinearLayer) -> tuple[int, int]:
    """(hidden, intermediate) of the fused-MoE layer an expert projection belongs to."""
    name = lin.name.rsplit(".", 1)[-1]
    if name in _EXPERT_DOWN:
        return lin.out_features, lin.in_features
    if name in _EXPERT_FUSED_UP:
        return lin.in_features, lin.out_features // 2
    return lin.in_features, lin.out_features


def _moe_expert_problems(lin: LinearLayer, recipe: Recipe, gs: int,
                         tp: int) -> tuple[list[str], list[str]]:
    """(problems, slow-path notes) of vLLM's fused MoE kernels for one expert projection."""
    if lin.name.endswith("_latent_proj"):
        return [], []  # Nemotron-H latent projections are plain linears around the experts
    hidden, inter = _expert_dims(lin)
    inter_tp = inter // tp
    problems: list[str] = []
    notes: list[str] = []
    if recipe.is_weight_only_int4:
        why = []
        if gs not in MARLIN_GROUP_SIZES:
            why.append(f"group size {gs} not in {list(MARLIN_GROUP_SIZES)}")
        if hidden % MOE_MARLIN_HIDDEN:
            why.append(f"hidden size {hidden} not a multiple of {MOE_MARLIN_HIDDEN}")
        if gs > 0 and inter_tp % gs:
            why.append(f"intermediate size {inter_tp} per TP shard not a multiple of {gs}")
        if why:
            notes.append("fused Marlin MoE does not fit (" + "; ".join(why) + "): vLLM serves "
                         "the experts with its Triton WNA16 MoE kernel (slower)")
    if recipe.block_structure:
        block_n, block_k = recipe.block_structure
        if inter_tp % block_n:
            problems.append(f"expert intermediate size {inter_tp} per TP shard not divisible "
                            f"by FP8 block_n {block_n} (validate_fp8_block_shape_moe)")
        if tp > 1 and inter_tp % block_k:
            problems.append(f"expert intermediate size {inter_tp} per TP shard not divisible "
                            f"by FP8 block_k {block_k} (validate_fp8_block_shape_moe)")
    return problems, notes


def _fp8_block_problems(lin: LinearLayer, block: list[int], tp: int) -> list[str]:
    """validate_fp8_block_shape for one dense linear layer."""
    block_n, block_k = block
    k, n = _partition(lin, tp)
    out: list[str] = []
    row_parallel = lin.name.endswith(_ROW_PARALLEL_SUFFIXES)
    if tp > 1 and row_parallel and k % block_k:
        out.append(f"in_features {k} per TP shard not divisible by FP8 block_k {block_k}")
    if not row_parallel and (tp > 1 or lin.name.endswith(_MERGED_NOT_LAST)) and n % block_n:
        out.append(f"out_features {n} per TP shard not divisible by FP8 block_n {block_n}")
    return out


def cutlass_notes(geometry: ModelGeometry, recipe: Recipe, tp: int) -> list[str]:
    """FP8-channel / INT8 layers that vLLM runs on its Triton fallback (slower, not wrong)."""
    if recipe.weight_bits != 8 or recipe.block_structure or recipe.activation_bits != 8:
        return []
    slow = []
    for lin in quantized_layers(geometry, recipe)[0]:
        if lin.kind == "moe_expert":
            continue
        k, n = _partition(lin, tp)
        if k % CUTLASS_MULTIPLE or n % CUTLASS_MULTIPLE:
            slow.append(lin.name)
    if not slow:
        return []
    return [f"{len(slow)} layers (e.g. {slow[0]}) have a dimension that is not a multiple of "
            f"{CUTLASS_MULTIPLE}: vLLM serves them with its Triton scaled-mm fallback instead "
            "of CUTLASS (slower, same result)"]


def suggest_group_size(geometry: ModelGeometry, recipe: Recipe, backend: str | None,
                       tensor_parallel_size: int = 1,
                       cuda_kernels: Sequence[str] = HOPPER_W4A16_KERNELS) -> int | None:
    """The largest of 1024/512/.../32 with which the recipe passes every check (or None)."""
    if recipe.weight_strategy != "group":
        return None
    for gs in CANDIDATE_GROUP_SIZES:
        trial = Recipe(**{**recipe.__dict__, "group_size": gs})
        if not _check(geometry, trial, backend, tensor_parallel_size, cuda_kernels)[0]:
            return gs
    return None


def run_preflight(geometry: ModelGeometry, recipe: Recipe, backend: str | None = None,
                  tensor_parallel_size: int = 1,
                  kernels: CpuKernelLibrary | None = None,
                  cuda_kernels: Sequence[str] = ()) -> PreflightReport:
    """Check ``recipe`` against every quantized layer of ``geometry`` for ``backend``.

    ``backend`` is ``vllm-cuda`` (Hopper kernels, or ``cuda_kernels``: the W4A16 kernels of the
    serving GPU's architecture, as the gpu_host role reads it), ``vllm-cpu`` or None
    (quantization only).
    Layers matched by the recipe's ignore list are skipped. With ``kernels`` (the serving
    host's vLLM CPU library, ``cpu_kernels.detect``), a ``vllm-cpu`` recipe whose kernel that
    library lacks is refused before any layer is looked at.
    """
    if backend is not None and backend not in BACKENDS:
        raise ModelGateError(f"unknown backend {backend!r}", field="backend",
                             fix=f"use one of {', '.join(BACKENDS)}")
    if tensor_parallel_size < 1:
        raise ModelGateError("tensor_parallel_size must be >= 1", field="tensor_parallel_size",
                             fix="use 1 or the number of GPUs")
    if recipe.is_baseline:
        return PreflightReport(True, [], "recipe none: nothing is quantized", 0, [])
    if backend == "vllm-cpu" and kernels is not None:
        verdict = servable(recipe, kernels)
        if not verdict.servable:
            problem, __, fix = verdict.reason.partition(" Fix: ")
            return PreflightReport(False, [Finding("*", problem, fix)],
                                   f"recipe {recipe.name} cannot be served here: {problem}")
    gpu = tuple(cuda_kernels) or HOPPER_W4A16_KERNELS
    findings, checked, ignored, notes = _check(geometry, recipe, backend,
                                               tensor_parallel_size, gpu)
    suggested = None
    if findings:
        suggested = suggest_group_size(geometry, recipe, backend, tensor_parallel_size, gpu)
        for f in findings:
            options = []
            if suggested and suggested != recipe.group_size:
                options.append(f"use group size {suggested} (largest that fits every layer)")
            options.append(f"or keep this layer unquantized: ignore "
                           f"'{_family_pattern(f.layer)}' (or '{f.layer}')")
            f.fix = " ".join(options)
    bad_layers = sorted({f.layer for f in findings})
    where = f" for {backend}" if backend else ""
    if findings:
        families = sorted({n.rsplit(".", 1)[-1] for n in bad_layers})
        summary = (f"recipe {recipe.name} cannot work{where}: {len(bad_layers)} of {checked} "
                   f"quantized layers fail ({', '.join(families)})")
        if suggested:
            summary += f"; group size {suggested} fits every layer"
    else:
        summary = (f"recipe {recipe.name} fits all {checked} quantized layers{where} "
                   f"({len(ignored)} ignored)")
    if notes:  # one line per kind of slow path, not one per expert
        first = notes[0].split(": ", 1)[1]
        notes = [f"{len(notes)} expert projections (e.g. {notes[0].split(': ')[0]}): {first}"]
    if backend == "vllm-cuda":
        notes += cutlass_notes(geometry, recipe, tensor_parallel_size)
    return PreflightReport(not findings, findings, summary, checked, ignored, suggested, notes)


# ------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: Any) -> None:
    """Add ``modelgate preflight``."""
    p = subparsers.add_parser(
        "preflight", help="check a quantization recipe against a model's layer shapes",
        description="Exit 0 when the recipe fits, 1 when it cannot work, 2 on bad input.")
    p.add_argument("--model-config", required=True,
                   help="a model directory or its config.json")
    p.add_argument("--recipe", required=True,
                   help="w4a16 | fp8-dynamic | w8a8-int8 | none | path to a recipe YAML")
    p.add_argument("--group-size", type=int, default=None, help="w4a16 group size")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="also check the serving kernels of this backend")
    p.add_argument("--ignore", nargs="*", default=None, metavar="PATTERN",
                   help="extra module names / re: patterns to leave unquantized "
                   "(added to the defaults)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--serve-python", default=None, metavar="PYTHON",
                   help="with --backend vllm-cpu: the Python of the virtualenv that serves "
                   "(its torch and vLLM decide the kernel library; default: this Python's)")
    p.set_defaults(func=_cli_preflight)


def check_weight_files(model: Path | str) -> list[str]:
    """Check a model directory's safetensors files against their headers and index (a
    truncated shard fails here, naming it, not inside the quantize job); a bare config.json
    or a directory without weights has none to check."""
    path = Path(model)
    folder = path.parent if path.is_file() else path
    return check_model_files(folder) if any(folder.glob("*.safetensors")) else []


def _cli_preflight(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    geometry = ModelGeometry.from_model_dir(args.model_config)
    check_weight_files(args.model_config)
    ignore = default_ignore() + list(args.ignore or [])
    recipe = build_recipe(args.recipe, group_size=args.group_size, ignore=ignore)
    if recipe.source_file and (args.group_size or args.ignore):
        raise ModelGateError("--group-size/--ignore do not apply to a recipe file",
                             field="recipe", fix="edit the recipe file instead")
    kernels = None
    if args.backend == "vllm-cpu":
        from modelgate.cpu_kernels import detect

        kernels = detect(args.serve_python)
    report = run_preflight(geometry, recipe, args.backend, args.tensor_parallel_size, kernels)
    emit({**report.to_dict(), "kernels": kernels.to_dict() if kernels else None})
    return 0 if report.ok else 1
