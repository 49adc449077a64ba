"""The run directory: where every stage of one run writes what it produced.

``runs/<run_id>/manifest.json`` records the run's inputs, tool versions, host facts and every
artifact's digest; stages add to it under a file lock, so a stage that runs alone (with
``--tags``) or a re-run after a failure continues the same record instead of replacing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError

MANIFEST = "manifest.json"
LATEST = "latest"


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a short random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


class RunDir:
    """One run's directory and its manifest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name

    @classmethod
    def open(cls, runs_dir: Path, run_id: str | None = None) -> tuple[RunDir, bool]:
        """Open ``run_id`` (``latest`` = the newest run), or create a new run when None.

        Returns the run and whether it was created.
        """
        runs_dir.mkdir(parents=True, exist_ok=True)
        created = False
        if run_id == LATEST:
            link = runs_dir / LATEST
            if not link.exists():
                raise ModelGateError(
                    f"there is no run in {runs_dir} to continue",
                    field="modelgate_run_id",
                    fix="run site.yml first, or leave modelgate_run_id unset to start a new run",
                )
            run_id = link.resolve().name
        if not run_id:
            run_id = new_run_id()
        if "/" in run_id or run_id.startswith("."):
            raise ModelGateError(f"invalid run id {run_id!r}", field="modelgate_run_id",
                                 fix="use letters, digits, '-' and '_' only")
        path = runs_dir / run_id
        if not path.exists():
            path.mkdir(parents=True)
            created = True
        run = cls(path)
        if not (path / MANIFEST).exists():
            _atomic_write_json(path / MANIFEST, {
                "run_id": run_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": {"node": platform.node(), "machine": platform.machine(),
                         "system": platform.system(), "release": platform.release(),
                         "python": platform.python_version(), "cpus": os.cpu_count()},
                "inputs": {}, "tools": {}, "variants": [], "artifacts": {}, "stages": {},
            })
        link = runs_dir / LATEST
        tmp_link = runs_dir / f".{LATEST}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        tmp_link.symlink_to(run_id)
        tmp_link.replace(link)
        return run, created

    def manifest(self) -> dict[str, Any]:
        """The manifest as it is now."""
        return json.loads((self.path / MANIFEST).read_text())

    def update(self, **sections: Any) -> dict[str, Any]:
        """Merge top-level sections (dicts are merged one level deep, others replaced)."""
        mpath = self.path / MANIFEST
        with _locked(mpath):
            data = json.loads(mpath.read_text())
            for key, value in sections.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key].update(value)
                else:
                    data[key] = value
            _atomic_write_json(mpath, data)
        return data

    def record(self, variant: str, stage: str, data: dict[str, Any]) -> Path:
        """Write ``<variant>/<stage>.json`` and register its content in the manifest."""
        vdir = self.variant_dir(variant)
        out = vdir / f"{stage}.json"
        _atomic_write_json(out, data)
        mpath = self.path / MANIFEST
        with _locked(mpath):
            manifest = json.loads(mpath.read_text())
            manifest.setdefault("artifacts", {}).setdefault(variant, {})[stage] = data
            manifest.setdefault("stages", {})[f"{variant}/{stage}"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            _atomic_write_json(mpath, manifest)
        return out

    def read(self, variant: str, stage: str) -> dict[str, Any]:
        """Read what a stage recorded for a variant; a clear error when it has not run."""
        path = self.path / variant / f"{stage}.json"
        if not path.exists():
            raise ModelGateError(
                f"run {self.run_id} has no {stage} record for variant {variant!r} ({path})",
                field="modelgate_run_id",
                fix=f"run the {stage} stage for this run first (or the whole site.yml)",
            )
        return json.loads(path.read_text())

    def variant_dir(self, variant: str) -> Path:
        """``<run>/<variant>/``, created on first use."""
        d = self.path / variant
        d.mkdir(parents=True, exist_ok=True)
        return d
