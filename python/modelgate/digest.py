"""Content digests: the fingerprints that make every stage idempotent."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def file_digests(root: Path) -> dict[str, str]:
    """Map each file under ``root`` (relative POSIX path) to the sha256 of its content.

    Symlinks to files are digested by their targets' content (see :func:`tree_files`), so the
    same files give the same digests whether they are links or copies.
    """
    return {rel: sha256_file(p) for rel, p in tree_files(root)}


def tree_digest(root: Path, files: dict[str, str] | None = None) -> str:
    """Return one digest for a directory tree: its paths and their contents, order-independent."""
    return "sha256:" + sha256_json(files if files is not None else file_digests(root))
