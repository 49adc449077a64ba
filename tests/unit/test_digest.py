"""Unit tests for content digests of model and checkpoint trees, including symlinked ones.

The Hugging Face cache stores a snapshot as links into a blob store
(``snapshots/<rev>/<file> -> ../../blobs/<sha>``); its digest must be that of the content.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from modelgate.digest import file_digests, tree_digest, tree_files
from modelgate.errors import ModelGateError
from modelgate.quantize import model_digest
from modelgate.serving import model_fingerprint

FILES = {
    "config.json": b'{"model_type": "nemotron_h"}\n',
    "model.safetensors": b"weights-A",
    "tokenizer/tokenizer.json": b'{"version": "1.0"}\n',
}


def hf_snapshot(cache: Path, files: dict[str, bytes], rev: str = "0123abc") -> Path:
    """A Hugging Face cache repo: every snapshot file a relative link to its blob."""
    snapshot = cache / "snapshots" / rev
    for rel, data in files.items():
        blob = cache / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def plain_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_symlinked_snapshots_with_different_blobs_get_different_digests(tmp_path):
    a = hf_snapshot(tmp_path / "models--org--a", FILES)
    b = hf_snapshot(tmp_path / "models--org--b", {**FILES, "model.safetensors": b"weights-B"})
    assert sorted(file_digests(a)) == sorted(FILES)  # the links are listed, not skipped
    assert model_digest(a) != model_digest(b)
    assert tree_digest(a) != tree_digest(b)


def test_links_and_plain_files_with_the_same_content_get_the_same_digest(tmp_path):
    # The modelcar packs link targets as plain files, so its extracted copy must digest the same.
    linked = hf_snapshot(tmp_path / "cache", FILES)
    plain = plain_tree(tmp_path / "plain", FILES)
    assert file_digests(linked) == file_digests(plain)
    assert model_digest(linked) == model_digest(plain)


def test_tree_files_names_files_by_link_and_reads_the_target(tmp_path):
    snapshot = hf_snapshot(tmp_path / "cache", FILES)
    listed = dict(tree_files(snapshot))
    assert sorted(listed) == sorted(FILES)
    assert listed["model.safetensors"].read_bytes() == b"weights-A"


# every walk of a model directory goes through tree_files: the digests, and the fingerprint a
# running local server is recognised by
WALKS = pytest.mark.parametrize("walk", [file_digests, model_fingerprint],
                                ids=["file_digests", "model_fingerprint"])


@WALKS
def test_dangling_link_is_a_clear_error(tmp_path, walk):
    snapshot = hf_snapshot(tmp_path / "cache", FILES)
    (snapshot / "model.safetensors").resolve().unlink()  # blob gone, link left
    with pytest.raises(ModelGateError, match=r"model\.safetensors is a dangling symlink"):
        walk(snapshot)


@WALKS
def test_link_to_a_directory_is_an_error(tmp_path, walk):
    root = plain_tree(tmp_path / "model", FILES)
    other = plain_tree(tmp_path / "elsewhere", {"extra.bin": b"x"})
    (root / "linked").symlink_to(other, target_is_directory=True)
    with pytest.raises(ModelGateError, match="symlink to a directory"):
        walk(root)


def test_server_fingerprint_follows_file_links_like_the_digest(tmp_path):
    linked = hf_snapshot(tmp_path / "cache", FILES)
    plain = plain_tree(tmp_path / "plain", FILES)
    assert model_fingerprint(linked) == model_fingerprint(plain)
    other = hf_snapshot(tmp_path / "other", {**FILES, "model.safetensors": b"weights-B"})
    assert model_fingerprint(other) != model_fingerprint(linked)


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(ModelGateError, match="is not a directory"):
        file_digests(tmp_path / "absent")


def test_a_second_digest_of_an_unchanged_tree_reads_no_bytes(tmp_path, monkeypatch):
    from modelgate import digest

    monkeypatch.setenv("MODELGATE_DIGEST_CACHE", str(tmp_path / "cache"))
    tree = plain_tree(tmp_path / "ckpt", FILES)
    first = file_digests(tree)
    before = digest.bytes_read()
    assert file_digests(tree) == first
    assert digest.bytes_read() == before  # remembered, not read
    # a changed file is read again (its size or times changed), the others are not
    (tree / "model.safetensors").write_bytes(b"weights-B")
    again = file_digests(tree)
    assert digest.bytes_read() - before == len(b"weights-B")
    assert again["model.safetensors"] == hashlib.sha256(b"weights-B").hexdigest()
    assert {k: v for k, v in again.items() if k != "model.safetensors"} == {
        k: v for k, v in first.items() if k != "model.safetensors"}
    # without the cache, or with an unreadable record, every file is hashed
    assert file_digests(tree, cache=False) == again
    for record in (tmp_path / "cache").iterdir():
        record.write_text("not json")
    assert file_digests(tree) == again


def test_the_digest_cache_tells_two_trees_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELGATE_DIGEST_CACHE", str(tmp_path / "cache"))
    a = hf_snapshot(tmp_path / "a", FILES)
    b = hf_snapshot(tmp_path / "b", {**FILES, "model.safetensors": b"weights-B"})
    assert tree_digest(a) != tree_digest(b)
    assert tree_digest(a) == tree_digest(a, file_digests(a, cache=False))
