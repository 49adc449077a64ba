"""Unit tests for modelcar building: reproducibility, layer split, labels, tar metadata.

No registry or container runtime: images are written to OCI layouts in tmp_path and read back.
The base image is built from Debian's static busybox (/bin/busybox, package busybox-static).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from modelgate import modelcar
from modelgate.errors import ModelGateError

BUSYBOX = Path("/bin/busybox")
needs_busybox = pytest.mark.skipif(not BUSYBOX.is_file(),
                                   reason="needs /bin/busybox (Debian package busybox-static)")
MIB = 1 << 20


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_checkpoint(root: Path, shard_mib: int = 17, seed: int = 1) -> Path:
    """A checkpoint with two shards over the threshold and small files (one in a subdir)."""
    _write(root / "config.json", b'{"model_type": "nemotron_h"}\n')
    _write(root / "tokenizer" / "tokenizer.json", b'{"version": "1.0"}\n')
    _write(root / "model-00001-of-00002.safetensors", bytes([seed]) * (shard_mib * MIB))
    _write(root / "model-00002-of-00002.safetensors", bytes([seed + 1]) * (shard_mib * MIB + 3))
    return root


@pytest.fixture(scope="module")
def base_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUSYBOX.is_file():
        pytest.skip("needs /bin/busybox (Debian package busybox-static)")
    layout = tmp_path_factory.mktemp("base") / "oci"
    modelcar.build_busybox_base(layout, BUSYBOX)
    return layout


def _manifest(layout: Path) -> dict:
    return modelcar.read_layout_manifest(layout)[1]


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([("a", 1), ("b", 2)], [["a", "b"]]),
        ([("w2", 16 * MIB), ("cfg", 10), ("w1", 20 * MIB)], [["cfg"], ["w1"], ["w2"]]),
        ([("w", 16 * MIB - 1)], [["w"]]),  # just under the threshold: a small file
        ([("w", 16 * MIB)], [["w"]]),
        ([("z/tok", 5), ("a/cfg", 5), ("m", 40 * MIB)], [["a/cfg", "z/tok"], ["m"]]),
    ],
)
def test_plan_layers_one_layer_per_shard_small_files_together(files, expected):
    assert modelcar.plan_layers(files) == expected


def test_image_tag_derives_from_checkpoint_digest():
    digest = "sha256:" + "ab" * 32
    assert modelcar.image_tag(digest) == "sha256-" + "ab" * 32
    assert modelcar.image_tag("ab" * 32) == modelcar.image_tag(digest)
    with pytest.raises(ModelGateError, match="not a sha256 digest"):
        modelcar.image_tag("sha256:xyz")


def test_provenance_labels_standard_and_provenance_keys():
    prov = modelcar.Provenance.from_dict({
        "title": "nemotron-w4a16", "source": "https://example.com/m", "revision": "abc",
        "version": "1", "created": "2026-11-30T00:00:00Z", "source_model": "org/model",
        "source_revision": "r1", "recipe_hash": "sha256:r", "calibration_digest": "sha256:c",
        "checkpoint_digest": "sha256:k", "tool_versions": {"llmcompressor": "0.14.0.1"},
        "unknown_key": "ignored",
    })
    labels = modelcar.provenance_labels(prov)
    assert labels["org.opencontainers.image.created"] == "2026-11-30T00:00:00Z"
    assert labels["org.opencontainers.image.title"] == "nemotron-w4a16"
    assert labels["org.opencontainers.image.source"] == "https://example.com/m"
    assert labels["io.modelgate.source.model"] == "org/model"
    assert labels["io.modelgate.recipe.sha256"] == "sha256:r"
    assert labels["io.modelgate.calibration.digest"] == "sha256:c"
    assert labels["io.modelgate.tool.llmcompressor"] == "0.14.0.1"
    # empty values are left out rather than written as ""
    assert "org.opencontainers.image.title" not in modelcar.provenance_labels(
        modelcar.Provenance())


@needs_busybox
def test_busybox_base_is_reproducible_and_has_sh(tmp_path):
    d1 = modelcar.build_busybox_base(tmp_path / "a", BUSYBOX)
    d2 = modelcar.build_busybox_base(tmp_path / "b", BUSYBOX)
    assert d1 == d2
    manifest = _manifest(tmp_path / "a")
    with tarfile.open(_blob(tmp_path / "a", manifest["layers"][0]["digest"])) as tar:
        sh = tar.getmember("bin/sh")
        assert sh.issym() and sh.linkname == "busybox"
        assert tar.getmember("bin/busybox").mode == 0o755


def test_build_is_reproducible_across_copies_and_mtimes(tmp_path, base_layout):
    ck1 = make_checkpoint(tmp_path / "ck1")
    ck2 = tmp_path / "ck2"
    shutil.copytree(ck1, ck2)
    for p in ck2.rglob("*"):  # other mtimes, same content
        os.utime(p, (1_000_000, 1_000_000))
    img1 = modelcar.build_modelcar(ck1, base_layout, tmp_path / "out1", {"k": "v"})
    img2 = modelcar.build_modelcar(ck2, base_layout, tmp_path / "out2", {"k": "v"})
    assert img1.manifest_digest == img2.manifest_digest
    assert img1.config_digest == img2.config_digest
    assert img1.checkpoint_digest == img2.checkpoint_digest
    assert img1.tag == modelcar.image_tag(img1.checkpoint_digest)
    # the layout's index points at the manifest we report
    assert modelcar.read_layout_manifest(tmp_path / "out1")[0] == img1.manifest_digest
    # different labels -> a different image
    img3 = modelcar.build_modelcar(ck1, base_layout, tmp_path / "out3", {"k": "other"})
    assert img3.manifest_digest != img1.manifest_digest


def test_parallel_build_gives_the_same_image_and_keeps_no_temp_files(tmp_path, base_layout):
    ck = make_checkpoint(tmp_path / "ck")
    serial = modelcar.build_modelcar(ck, base_layout, tmp_path / "serial", workers=1)
    parallel = modelcar.build_modelcar(ck, base_layout, tmp_path / "parallel", workers=3)
    assert parallel.manifest_digest == serial.manifest_digest
    assert [layer.files for layer in parallel.layers] == [layer.files for layer in serial.layers]
    assert not list((tmp_path / "parallel" / "blobs" / "sha256").glob(".layer-*"))


def test_failed_layer_leaves_no_partial_blob(tmp_path, base_layout, monkeypatch):
    ck = make_checkpoint(tmp_path / "ck")
    real_add = modelcar._LayerWriter.add_file

    def flaky(self, name, src, mtime, mode=0o644):
        if src.name == "model-00002-of-00002.safetensors":
            raise OSError("disk full")
        return real_add(self, name, src, mtime, mode)

    monkeypatch.setattr(modelcar._LayerWriter, "add_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        modelcar.build_modelcar(ck, base_layout, tmp_path / "out", workers=2)
    assert not list((tmp_path / "out" / "blobs" / "sha256").glob(".layer-*"))


def test_layer_split_and_tar_metadata(tmp_path, base_layout):
    ck = make_checkpoint(tmp_path / "ck")
    img = modelcar.build_modelcar(ck, base_layout, tmp_path / "out",
                                  created="2026-11-30T00:00:00Z")
    assert [layer.files for layer in img.layers] == [
        ["config.json", "tokenizer/tokenizer.json"],
        ["model-00001-of-00002.safetensors"],
        ["model-00002-of-00002.safetensors"],
    ]
    manifest = _manifest(tmp_path / "out")
    base_layers = _manifest(base_layout)["layers"]
    assert manifest["layers"][: len(base_layers)] == base_layers
    ours = manifest["layers"][len(base_layers):]
    assert [d["digest"] for d in ours] == [layer.digest for layer in img.layers]
    assert all(d["mediaType"] == modelcar.MT_LAYER for d in ours)  # uncompressed
    expected_mtime = modelcar._epoch("2026-11-30T00:00:00Z")
    for layer in img.layers:
        blob = _blob(tmp_path / "out", layer.digest)
        assert blob.stat().st_size == layer.size
        with tarfile.open(blob) as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        assert names[0] == "models"  # parent directories come first
        for m in members:
            assert (m.uid, m.gid, m.mtime) == (0, 0, expected_mtime)
            # readable by UID 1001 / GID 0 through the "other" bits
            assert m.mode == (0o755 if m.isdir() else 0o644)
        files = sorted(m.name.removeprefix("models/") for m in members if m.isfile())
        assert files == layer.files
    small = img.layers[0]
    assert small.file_digests["config.json"] == modelcar.hashlib.sha256(
        (ck / "config.json").read_bytes()).hexdigest()


def test_labels_in_config_and_annotations_in_manifest(tmp_path, base_layout):
    ck = make_checkpoint(tmp_path / "ck", shard_mib=1)
    labels = modelcar.provenance_labels(modelcar.Provenance(
        title="m", source_model="org/m", created="2026-01-02T03:04:05Z"))
    img = modelcar.build_modelcar(ck, base_layout, tmp_path / "out", labels,
                                  {"extra.annotation": "x"})
    manifest = _manifest(tmp_path / "out")
    config = json.loads(_blob(tmp_path / "out", manifest["config"]["digest"]).read_bytes())
    got = config["config"]["Labels"]
    assert got["org.opencontainers.image.title"] == "m"
    assert got["io.modelgate.source.model"] == "org/m"
    assert got["io.modelgate.checkpoint.digest"] == img.checkpoint_digest
    # created comes from the label: the config's own time agrees with it
    assert config["created"] == "2026-01-02T03:04:05Z"
    assert manifest["annotations"]["extra.annotation"] == "x"
    assert manifest["annotations"]["io.modelgate.source.model"] == "org/m"
    # the base's settings (sh as command, PATH) survive
    assert config["config"]["Cmd"] == ["sh"]
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    assert len(config["history"]) == len(manifest["layers"])


def test_rebuild_same_layout_unchanged_and_one_shard_change(tmp_path, base_layout):
    ck = make_checkpoint(tmp_path / "ck")
    out = tmp_path / "out"
    first = modelcar.build_modelcar(ck, base_layout, out)
    again = modelcar.build_modelcar(ck, base_layout, out)
    assert first.changed and not again.changed
    assert again.manifest_digest == first.manifest_digest
    shard = ck / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[123] ^= 0xFF
    shard.write_bytes(bytes(data))
    changed = modelcar.build_modelcar(ck, base_layout, out)
    assert changed.changed and changed.manifest_digest != first.manifest_digest
    before = [layer.digest for layer in first.layers]
    after = [layer.digest for layer in changed.layers]
    assert before[:2] == after[:2] and before[2] != after[2]
    # blobs of the replaced image are pruned: only the current image's blobs remain
    manifest = _manifest(out)
    kept = {p.name for p in (out / "blobs" / "sha256").iterdir()}
    wanted = {d["digest"].removeprefix("sha256:") for d in manifest["layers"]}
    wanted |= {manifest["config"]["digest"].removeprefix("sha256:"),
               changed.manifest_digest.removeprefix("sha256:")}
    assert kept == wanted


def test_build_rejects_empty_checkpoint(tmp_path, base_layout):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelGateError, match="empty"):
        modelcar.build_modelcar(tmp_path / "empty", base_layout, tmp_path / "out")


@pytest.mark.parametrize("name", ["models/../../etc/passwd", "/abs"])
def test_extract_refuses_entries_escaping_models(name):
    with pytest.raises(ModelGateError, match="escapes"):
        modelcar._safe_member(tarfile.TarInfo(name), name)


def test_symlinked_checkpoint_packs_target_content_and_matches_plain_copy(tmp_path, base_layout):
    # A Hugging Face cache snapshot: files are links into blobs/, outside the snapshot.
    plain = make_checkpoint(tmp_path / "plain")
    snapshot = tmp_path / "cache" / "snapshots" / "rev"
    for p in sorted(plain.rglob("*")):
        if p.is_file():
            rel = p.relative_to(plain)
            blob = tmp_path / "cache" / "blobs" / rel.as_posix().replace("/", "_")
            _write(blob, p.read_bytes())
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    from_links = modelcar.build_modelcar(snapshot, base_layout, tmp_path / "out-links")
    from_plain = modelcar.build_modelcar(plain, base_layout, tmp_path / "out-plain")
    assert from_links.manifest_digest == from_plain.manifest_digest
    # the tag the module computes before building names the same checkpoint
    from modelgate.digest import tree_digest
    assert from_links.checkpoint_digest == tree_digest(snapshot) == tree_digest(plain)
    small_files = _blob(tmp_path / "out-links", from_links.layers[0].digest)
    with tarfile.open(small_files) as tar:
        member = tar.getmember(f"{modelcar.MODELS_DIR}/config.json")
        assert member.isfile()
        assert tar.extractfile(member).read() == (plain / "config.json").read_bytes()


def test_build_rejects_dangling_link(tmp_path, base_layout):
    ck = make_checkpoint(tmp_path / "ck")
    (ck / "generation_config.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(ModelGateError, match="dangling symlink"):
        modelcar.build_modelcar(ck, base_layout, tmp_path / "out")
