"""Where the CPU build of torch comes from: pip's sources, else the CPU index, else a clear stop.

Real pip, against wheel folders and a file:// index made here (a minimal valid wheel named like
PyTorch's CPU build), with this machine's pip configuration switched off.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.toolchain import VenvSpec, pinned_torch, torch_cpu_args

VERSION = "9.9.9"  # no real torch can answer for this one


def _wheel(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / name, "w") as zf:
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return folder / name


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    empty = tmp_path / "empty-index"
    empty.mkdir()
    cpu_index = tmp_path / "cpu-index"
    _wheel(cpu_index / "torch", f"{VERSION}+cpu")
    (cpu_index / "torch" / "index.html").write_text(
        f'<a href="torch-{VERSION}+cpu-py3-none-any.whl">torch-{VERSION}+cpu</a>')
    req = tmp_path / "requirements.txt"
    req.write_text(f"# a tool\ntorch=={VERSION}\npyyaml>=6\n")
    return {"empty": empty, "cpu_index": cpu_index, "req": req, "tmp": tmp_path}


def _pip(index: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
            "--index-url", index.as_uri(), *extra]


def _spec(sources: dict[str, Path], mode: str, index: str | None) -> VenvSpec:
    return VenvSpec(name="serve", path=sources["tmp"] / "venv", requirements=[sources["req"]],
                    torch_cpu=mode, torch_cpu_index=index)


def test_pinned_version_drops_the_local_label(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.0\ntorch==2.13.0+cpu  # the CPU build\n")
    assert pinned_torch([lock]) == "2.13.0"
    assert pinned_torch([]) is None


def test_a_find_links_folder_with_the_wheel_needs_no_index(sources: dict[str, Path]) -> None:
    folder = sources["tmp"] / "wheels"
    _wheel(folder, f"{VERSION}+cpu")
    pip = _pip(sources["empty"], "--find-links", str(folder))
    assert torch_cpu_args(_spec(sources, "required", "file:///nowhere"), pip,
                          sources["tmp"] / "probe.log") == []


def test_otherwise_the_cpu_index_is_added(sources: dict[str, Path]) -> None:
    index = (sources["cpu_index"]).as_uri()
    args = torch_cpu_args(_spec(sources, "required", index), _pip(sources["empty"]),
                          sources["tmp"] / "probe.log")
    assert args == ["--extra-index-url", index]


def test_required_stops_before_installing_and_preferred_takes_pypi(
        sources: dict[str, Path]) -> None:
    nowhere = (sources["tmp"] / "no-index").as_uri()
    with pytest.raises(ModelGateError) as err:
        torch_cpu_args(_spec(sources, "required", nowhere), _pip(sources["empty"]),
                       sources["tmp"] / "probe.log")
    assert f"torch=={VERSION}+cpu" in str(err.value) and err.value.fix
    assert err.value.field == "toolchain_torch_cpu_index"
    assert torch_cpu_args(_spec(sources, "preferred", nowhere), _pip(sources["empty"]),
                          sources["tmp"] / "probe.log") == []
    assert torch_cpu_args(_spec(sources, "none", nowhere), _pip(sources["empty"]),
                          sources["tmp"] / "probe.log") == []
