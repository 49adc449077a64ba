"""Content digests: the fingerprints that make every stage idempotent."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError

_CHUNK = 1 << 20
# Bytes hashed by this process: a stage reports how much it read (a second run reads none).
_bytes_read = 0


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    global _bytes_read
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            _bytes_read += len(chunk)
    return h.hexdigest()


def bytes_read() -> int:
    """How many bytes :func:`sha256_file` has read in this process."""
    return _bytes_read


def sha256_json(data: Any) -> str:
    """Return the hex sha256 of a value's canonical JSON form (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file under ``root``, sorted by relative path.

    A symlink to a file counts as that file, under the link's name: the Hugging Face cache
    stores a snapshot as links (``snapshots/<rev>/x -> ../../blobs/<sha>``), so the links'
    targets, inside ``root`` or not, are the model. A dangling link, a link to a directory
    (following it could loop or pull in a whole other tree) and a special file are errors:
    skipping them would give two different trees the same digest.
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelGateError(f"{root} is not a directory", field=str(root),
                             fix="give the model or checkpoint directory")
    out: list[tuple[str, Path]] = []
    # os.walk without followlinks lists a link to a directory in ``dirs`` and never enters it
    for dirpath, dirs, names in os.walk(root):
        base = Path(dirpath)
        for name in dirs:
            if (base / name).is_symlink():
                raise ModelGateError(
                    f"{base / name} is a symlink to a directory", field=str(root),
                    fix="replace it with a real directory (links to files are followed)")
        for name in names:
            p = base / name
            if not p.is_file():  # follows links: False for a dangling one
                what = (f"a dangling symlink (-> {os.readlink(p)})" if p.is_symlink()
                        else "not a regular file")
                raise ModelGateError(f"{p} is {what}", field=str(root),
                                     fix="restore or remove it (re-download the model if it "
                                         "is a Hugging Face cache snapshot)")
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def digest_cache_dir() -> Path:
    """Where file digests are remembered: ``$MODELGATE_DIGEST_CACHE``, else the user's cache."""
    env = os.environ.get("MODELGATE_DIGEST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelgate" / "digests"


def _stat_key(path: Path) -> list[int]:
    # ctime cannot be set back by a tool that rewrites a file and restores its mtime
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def file_digests(root: Path, cache: bool = True) -> dict[str, str]:
    """Map each file under ``root`` (relative POSIX path) to the sha256 of its content.

    Symlinks to files are digested by their targets' content (see :func:`tree_files`), so the
    same files give the same digests whether they are links or copies.

    A file whose size, mtime, ctime and inode are those recorded the last time it was hashed is
    not read again (``cache``): the digests come from the stage that first hashed the tree,
    so a second run of the pipeline reads no checkpoint bytes. The record is one JSON file per
    directory under :func:`digest_cache_dir`; a record that cannot be read or written is
    ignored (the files are then hashed).
    """
    files = tree_files(root)
    record = digest_cache_dir() / (sha256_json(str(Path(root).resolve())) + ".json")
    known: dict[str, list[Any]] = {}
    if cache:
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
    out: dict[str, str] = {}
    entries: dict[str, list[Any]] = {}
    for rel, path in files:
        key = _stat_key(path)
        hit = known.get(rel)
        digest = hit[-1] if isinstance(hit, list) and hit[:-1] == key else sha256_file(path)
        out[rel] = digest
        entries[rel] = [*key, digest]
    if cache and entries != known:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, sort_keys=True))
            tmp.replace(record)
        except OSError:
            pass
    return out


def tree_digest(root: Path, files: dict[str, str] | None = None) -> str:
    """Return one digest for a directory tree: its paths and their contents, order-independent."""
    return "sha256:" + sha256_json(files if files is not None else file_digests(root))
