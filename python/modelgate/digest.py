"""Content digests: the fingerprints that make every stage idempotent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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


def file_digests(root: Path) -> dict[str, str]:
    """Map each regular file under ``root`` (relative POSIX path) to its sha256."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def tree_digest(root: Path, files: dict[str, str] | None = None) -> str:
    """Return one digest for a directory tree: its paths and their contents, order-independent."""
    return "sha256:" + sha256_json(files if files is not None else file_digests(root))
