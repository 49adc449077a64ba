"""The run directory: where every stage of one run writes what it produced.

``runs/<run_id>/manifest.json`` records the run's inputs, tool versions, host facts and every
artifact's digest; stages add to it under a file lock, so a stage that runs alone (with
``--tags``) or a re-run after a failure continues the same record instead of replacing it.

The run directory lives on the controller and this class is its only writer: a stage that runs
on a target host returns its record, and the controller stores it here (the ``run_dir``
module); bulky files a target produced are fetched into ``<run>/<variant>/`` by the play.
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


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(_dumps(data))
    tmp.replace(path)


def _merged(data: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``sections`` merged in (dicts one level deep, other values replaced)."""
    out = json.loads(json.dumps(data, default=str))
    for key, value in json.loads(json.dumps(sections, default=str)).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def resolve_run_id(runs_dir: Path, run_id: str | None, create: bool = False) -> str | None:
    """The existing run ``run_id`` names (``latest``: the newest), or None for a new run.

    Raises ModelGateError for an id that names no run, listing the runs there: a typo must
    not start a run of its own (only a new run, no id, is created), unless ``create`` says
    that a new run gets this name (tools that name their runs: Molecule, the benches).
    Writes nothing.
    """
    if not run_id:
        return None
    if run_id == LATEST:
        link = runs_dir / LATEST
        if not link.exists():
            raise ModelGateError(
                f"there is no run in {runs_dir} to continue",
                field="modelgate_run_id",
                fix="run site.yml first, or leave modelgate_run_id unset to start a new run",
            )
        run_id = link.resolve().name
    if "/" in run_id or run_id.startswith("."):
        raise ModelGateError(f"invalid run id {run_id!r}", field="modelgate_run_id",
                             fix="use letters, digits, '-' and '_' only")
    if not (runs_dir / run_id / MANIFEST).is_file() and not (create and run_id != LATEST):
        existing = sorted(p.parent.name for p in runs_dir.glob("*/" + MANIFEST))
        raise ModelGateError(
            f"there is no run {run_id!r} in {runs_dir}"
            + (f" (runs there: {', '.join(existing[-5:])})" if existing else " (no runs yet)"),
            field="modelgate_run_id",
            fix="give an existing run id, latest for the newest, or leave modelgate_run_id "
            "unset to start a new run")
    return run_id


class RunDir:
    """One run's directory and its manifest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name

    @classmethod
    def open(cls, runs_dir: Path, run_id: str | None = None,
             dry_run: bool = False, create: bool = False) -> tuple[RunDir, bool]:
        """Open ``run_id`` (``latest`` = the newest run), or create a new run when None (or,
        with ``create``, when no run has that id).

        Returns the run and whether it was (or, with ``dry_run``, would be) created. A dry run
        (check mode) writes nothing: no directory, no manifest, ``latest`` left where it is.
        """
        created = False
        given = resolve_run_id(runs_dir, run_id, create=create)
        run_id = given or new_run_id()
        path = runs_dir / run_id
        if dry_run:
            return cls(path), not (path / MANIFEST).exists()
        runs_dir.mkdir(parents=True, exist_ok=True)
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
        if not (link.is_symlink() and os.readlink(link) == run_id):
            tmp_link = runs_dir / f".{LATEST}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            tmp_link.symlink_to(run_id)
            tmp_link.replace(link)
        return run, created

    @classmethod
    def existing(cls, path: Path, dry_run: bool = False) -> RunDir:
        """A run that must exist already (a dry run accepts one that check mode did not make)."""
        if not (path / MANIFEST).exists() and not dry_run:
            raise ModelGateError(f"{path} is not a run directory (it has no {MANIFEST})",
                                 field="run_path",
                                 fix="open the run first (playbooks/run_dir.yml does)")
        return cls(path)

    def manifest(self) -> dict[str, Any]:
        """The manifest as it is now (an empty one for a run not created yet)."""
        mpath = self.path / MANIFEST
        if not mpath.exists():
            return {"run_id": self.run_id, "inputs": {}, "tools": {}, "variants": [],
                    "artifacts": {}, "stages": {}}
        return json.loads(mpath.read_text())

    def would_update(self, **sections: Any) -> bool:
        """Whether :meth:`update` with these sections would change the manifest."""
        data = self.manifest()
        merged = _merged(data, sections)
        return _canonical(merged) != _canonical(data)

    def update(self, **sections: Any) -> dict[str, Any]:
        """Merge top-level sections (dicts are merged one level deep, others replaced)."""
        mpath = self.path / MANIFEST
        with _locked(mpath):
            data = json.loads(mpath.read_text())
            merged = _merged(data, sections)
            if _canonical(merged) != _canonical(data):
                _atomic_write_json(mpath, merged)
        return merged

    def record(self, variant: str, stage: str, data: dict[str, Any],
               files: dict[str, Any] | None = None, dry_run: bool = False) -> bool:
        """Store a stage's record as ``<variant>/<stage>.json`` and in the manifest.

        ``files`` are small text files that came with the record (``{relative path: text, or
        data written as JSON}``), written under ``<variant>/``. A record equal to the stored
        one changes nothing (not even its timestamp), so a second run reports ``ok``. Returns
        whether anything changed (with ``dry_run``: would change).
        """
        vdir = self.path / variant
        data = json.loads(json.dumps(data, default=str))
        wanted: dict[Path, str] = {vdir / f"{stage}.json": _dumps(data)}
        for rel, content in (files or {}).items():
            target = (vdir / rel).resolve()
            if not target.is_relative_to(vdir.resolve()) or rel.startswith("/"):
                raise ModelGateError(f"record file {rel!r} is outside <run>/{variant}/",
                                     field="records.files",
                                     fix="give paths relative to the variant's directory")
            wanted[vdir / rel] = content if isinstance(content, str) else _dumps(content)
        stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
        stored = self.manifest().get("artifacts", {}).get(variant, {}).get(stage)
        changed = bool(stale) or _canonical(stored) != _canonical(data)
        if dry_run or not changed:
            return changed
        for p in stale:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            tmp.write_text(wanted[p])
            tmp.replace(p)
        mpath = self.path / MANIFEST
        with _locked(mpath):
            manifest = json.loads(mpath.read_text())
            manifest.setdefault("artifacts", {}).setdefault(variant, {})[stage] = data
            manifest.setdefault("stages", {})[f"{variant}/{stage}"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            _atomic_write_json(mpath, manifest)
        return True

    def records(self) -> dict[str, dict[str, Any]]:
        """Every stored record: ``{variant: {stage: record}}``."""
        return self.manifest().get("artifacts", {})

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

    def workflow_artifacts(self) -> dict[str, Any]:
        """What the next node of an AAP workflow reads from this run, as ``set_stats`` data
        (a job's artifacts become the extra variables of the nodes after it): the run to
        continue, each variant's modelcar by digest and endpoint, and the gate's verdict with
        the report's location. A stage that has not run yet publishes ``{}`` / ``None``."""
        records = self.records()
        gate_path = self.path / "gate.json"
        gate = json.loads(gate_path.read_text()) if gate_path.is_file() else None
        report = self.path / "report.html"
        return {
            "modelgate_run_id": self.run_id,
            "modelgate_modelcars": {v: r["modelcar"]["ref_by_digest"] for v, r in records.items()
                                    if r.get("modelcar", {}).get("ref_by_digest")},
            "modelgate_endpoints": {v: r["deploy"]["endpoint"] for v, r in records.items()
                                    if r.get("deploy", {}).get("endpoint")},
            "modelgate_gate": None if gate is None else {
                "passed": gate["passed"], "status": gate["status"], "message": gate["message"],
                "gate": str(gate_path), "junit": str(self.path / "junit.xml"),
                "report": str(report) if report.is_file() else None,
            },
        }


def stage_record(variant: str, stage: str, data: dict[str, Any],
                 files: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stage's record as a module returns it, for :func:`store_records` on the controller."""
    return {"variant": variant, "stage": stage, "data": data, "files": dict(files or {})}


def store_records(run: RunDir, records: list[dict[str, Any]], dry_run: bool = False) -> bool:
    """Store stage records as modules return them (``{variant, stage, data, files?}``).

    Every entry is checked before any is written, so a malformed list writes nothing.
    """
    for i, entry in enumerate(records):
        missing = [k for k in ("variant", "stage", "data") if not entry.get(k)]
        if missing or not isinstance(entry.get("data"), dict):
            raise ModelGateError(
                f"records[{i}] lacks {', '.join(missing) or 'a data dict'}", field="records",
                fix="give each record as {variant, stage, data} (data: the module's record)")
        if "/" in entry["variant"] or "/" in entry["stage"]:
            raise ModelGateError(f"records[{i}]: variant and stage are names, not paths",
                                 field="records")
    changed = False
    for entry in records:
        changed = run.record(entry["variant"], entry["stage"], entry["data"],
                             files=entry.get("files") or None, dry_run=dry_run) or changed
    return changed


def unpack_measurements(run: RunDir, variant: str, archive: Path,
                        dry_run: bool = False) -> bool:
    """Write the files of a fetched measurement archive into ``<run>/<variant>/``.

    Members must be plain files with relative paths inside the variant's directory; a file
    equal to the one there is not rewritten. The archive (a fetched copy) is removed after.
    Returns whether anything changed (with ``dry_run``: would change).
    """
    import tarfile

    vdir = (run.path / variant).resolve()
    changed = False
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (vdir / m.name).resolve()
            if not m.isfile() or m.name.startswith("/") or not target.is_relative_to(vdir):
                raise ModelGateError(f"{archive}: member {m.name!r} is not a file inside "
                                     f"<run>/{variant}/", field="archives",
                                     fix="give the archive the measure module wrote")
        for m in members:
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            target = vdir / m.name
            if target.is_file() and target.read_bytes() == data:
                continue
            changed = True
            if not dry_run:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                tmp.replace(target)
    if not dry_run:
        archive.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the fetch's landing directory, once empty
            archive.parent.rmdir()
    return changed
