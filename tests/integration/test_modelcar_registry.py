"""The modelcar contract, end to end, against a real local registry and podman.

Drives real tools: Debian's docker-registry (started by ``modelgate.registry`` on
127.0.0.1:18210 / :18211 with its data in tmp), skopeo, podman (runc) and /bin/busybox
(busybox-static). Pushes use the native client (modelgate.oci_push) unless a test says
``client="skopeo"``; pulls and verification use skopeo. Each test is skipped, with the
reason, when a tool is missing.
Environment: MODELGATE_TEST_REGISTRY_PORT overrides the first port (the second is +1).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelgate import modelcar, registry
from modelgate.errors import ModelGateError

PORT = int(os.environ.get("MODELGATE_TEST_REGISTRY_PORT", "18210"))
ADDR = f"127.0.0.1:{PORT}"
AUTH_ADDR = f"127.0.0.1:{PORT + 1}"
MIB = 1 << 20

missing = [t for t in ("docker-registry", "skopeo", "podman") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} installed"),
    pytest.mark.skipif(not Path("/bin/busybox").is_file(),
                       reason="needs /bin/busybox (busybox-static)"),
]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _blobs(data_dir: Path) -> set[str]:
    """Blob digests the registry stores (its filesystem driver layout)."""
    root = data_dir / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {p.name for p in root.glob("*/*")} if root.exists() else set()


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False,
                          timeout=300)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("registry")
    data, state = root / "data", root / "state"
    started = registry.ensure_registry(ADDR, data, state)
    try:
        yield {"data": data, "state": state, **started}
    finally:
        registry.stop_registry(ADDR, state)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("base") / "oci"
    modelcar.build_busybox_base(layout)
    return layout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt") / "model"
    _write(root / "config.json", b'{"model_type": "nemotron_h"}\n')
    _write(root / "tokenizer.json", b'{"version": "1.0"}\n')
    _write(root / "model-00001-of-00002.safetensors", os.urandom(17 * MIB))
    _write(root / "model-00002-of-00002.safetensors", os.urandom(2 * MIB))
    return root


@pytest.fixture(scope="module")
def pushed(reg: dict, base: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict]:
    out = tmp_path_factory.mktemp("layout") / "oci"
    image = modelcar.build_modelcar(checkpoint, base, out, modelcar.provenance_labels(
        modelcar.Provenance(title="tiny", source_model="local/tiny")))
    ref = f"{ADDR}/modelgate-test/tiny:{image.tag}"
    result = modelcar.push_modelcar(out, ref, tls_verify=False)
    try:
        yield {"image": image, "ref": ref, "push": result, "layout": out}
    finally:
        _podman("rmi", "--force", ref)


def test_registry_is_idempotent_and_answers(reg):
    assert reg["changed"]
    again = registry.ensure_registry(ADDR, reg["data"], reg["state"])
    assert again["changed"] is False and again["pid"] == reg["pid"]
    assert registry.probe_v2(ADDR) == 200
    assert registry.registry_status(ADDR, reg["state"])["running"]


def test_port_held_by_something_else_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ModelGateError, match="not a registry") as exc:
            registry.ensure_registry(addr, tmp_path / "d", tmp_path / "s")
        assert exc.value.field == "addr"


def test_push_then_podman_runs_sh_and_lists_models(pushed, checkpoint):
    assert pushed["push"].changed
    assert pushed["push"].digest == pushed["image"].manifest_digest
    assert modelcar.remote_digest(pushed["ref"], tls_verify=False) == pushed["push"].digest
    run = _podman("run", "--rm", "--tls-verify=false", pushed["ref"], "sh", "-c",
                  "ls -l /models")
    assert run.returncode == 0, run.stderr
    for name in sorted(p.name for p in checkpoint.iterdir()):
        assert name in run.stdout
    assert "-rw-r--r--" in run.stdout


def test_image_mount_in_another_container_as_uid_1001(pushed, checkpoint):
    # the way RHAIIS consumes a modelcar: the image's root mounted at /mnt/models
    # (podman 4 has no subpath= for image mounts, so the files are under /mnt/models/models)
    run = _podman("run", "--rm", "--tls-verify=false", "--user", "1001:0",
                  "--mount", f"type=image,source={pushed['ref']},destination=/mnt/models",
                  pushed["ref"], "sh", "-c",
                  "ls /mnt/models/models && sha256sum /mnt/models/models/config.json")
    assert run.returncode == 0, run.stderr
    assert "model-00001-of-00002.safetensors" in run.stdout
    expected = modelcar.hashlib.sha256((checkpoint / "config.json").read_bytes()).hexdigest()
    assert expected in run.stdout


def test_repush_unchanged_uploads_nothing(pushed, reg):
    blobs_before = _blobs(reg["data"])
    again = modelcar.push_modelcar(pushed["layout"], pushed["ref"], tls_verify=False)
    assert again.changed is False
    assert again.uploaded_bytes == 0 and again.uploaded_layers == 0
    assert _blobs(reg["data"]) == blobs_before


def test_one_shard_change_reuploads_only_that_layer(pushed, reg, base, checkpoint, tmp_path):
    changed_ck = tmp_path / "model"
    shutil.copytree(checkpoint, changed_ck)
    shard = changed_ck / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))
    image = modelcar.build_modelcar(changed_ck, base, tmp_path / "oci",
                                    modelcar.provenance_labels(modelcar.Provenance(
                                        title="tiny", source_model="local/tiny")))
    old = {layer.digest for layer in pushed["image"].layers}
    new_layers = [layer for layer in image.layers if layer.digest not in old]
    assert [layer.files for layer in new_layers] == [["model-00001-of-00002.safetensors"]]
    blobs_before = _blobs(reg["data"])
    ref = f"{ADDR}/modelgate-test/tiny:{image.tag}"
    result = modelcar.push_modelcar(tmp_path / "oci", ref, tls_verify=False)
    assert result.changed
    assert result.uploaded_layers == 1
    assert result.uploaded_bytes == new_layers[0].size
    # the registry gained exactly that layer, the new config and the new manifest
    added = _blobs(reg["data"]) - blobs_before
    assert new_layers[0].digest.removeprefix("sha256:") in added
    assert len(added) == 3


def test_cross_repo_mount_sends_no_layer_bytes(pushed, reg):
    # the same image into another repository: every layer is mounted from the first one
    ref = f"{ADDR}/modelgate-test/other:{pushed['image'].tag}"
    blobs_before = _blobs(reg["data"])
    result = modelcar.push_modelcar(pushed["layout"], ref, tls_verify=False,
                                    mount_from=["modelgate-test/tiny"])
    layers = modelcar.read_layout_manifest(pushed["layout"])[1]["layers"]
    assert result.changed and result.digest == pushed["push"].digest
    assert result.uploaded_bytes == 0 and result.uploaded_layers == 0
    assert result.mounted_layers == len(layers) == result.skipped_layers
    assert _blobs(reg["data"]) == blobs_before
    assert modelcar.remote_digest(ref, tls_verify=False) == pushed["push"].digest


def test_skopeo_and_native_clients_push_the_same_image(pushed):
    # skopeo stays available (client="skopeo"); both keep the layout's manifest digest
    ref = f"{ADDR}/modelgate-test/via-skopeo:{pushed['image'].tag}"
    result = modelcar.push_modelcar(pushed["layout"], ref, tls_verify=False, client="skopeo")
    assert result.changed and result.digest == pushed["push"].digest
    assert modelcar.remote_digest(ref, tls_verify=False) == pushed["push"].digest
    again = modelcar.push_modelcar(pushed["layout"], ref, tls_verify=False)  # native
    assert again.changed is False and again.uploaded_bytes == 0


@pytest.mark.parametrize("client", ["skopeo", "native"])
def test_verify_pushed_matches_checkpoint_and_catches_a_difference(pushed, checkpoint,
                                                                   tmp_path, client):
    # native: the in-cluster modelcar Job's pull-back, over HTTP (that pod has no skopeo)
    ok = modelcar.verify_pushed(pushed["ref"], checkpoint, tls_verify=False, client=client)
    assert ok.ok and ok.files_checked == 4 and ok.manifest_digest == pushed["push"].digest
    by_digest = pushed["ref"].rpartition(":")[0] + "@" + pushed["push"].digest
    assert modelcar.verify_pushed(by_digest, checkpoint, tls_verify=False, client=client).ok
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    (other / "config.json").write_text("{}")
    (other / "extra.txt").write_text("x")
    bad = modelcar.verify_pushed(pushed["ref"], other, tls_verify=False, client=client)
    assert not bad.ok
    assert bad.mismatched == ["config.json"] and bad.missing == ["extra.txt"]


def test_extract_models_gives_back_the_checkpoint_idempotently(pushed, checkpoint, tmp_path):
    dest = tmp_path / "served"
    out = modelcar.extract_models(pushed["ref"], dest, tls_verify=False)
    assert out == dest.resolve()
    from modelgate.digest import file_digests

    got = {k: v for k, v in file_digests(dest).items() if k != modelcar.EXTRACT_MARKER}
    assert got == file_digests(checkpoint)
    assert modelcar.extracted_digest(dest) == pushed["push"].digest
    mtime = (dest / "config.json").stat().st_mtime_ns
    modelcar.extract_models(pushed["ref"], dest, tls_verify=False)  # skipped: same digest
    assert (dest / "config.json").stat().st_mtime_ns == mtime


def test_password_never_appears_in_errors_or_results(base, checkpoint, tmp_path):
    password = "Sup3r-s3cret-pa55word"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt htpasswd lines (libxcrypt); deprecated, fine on 3.11/3.12

        line = "alice:" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(line + "\n")
    state = tmp_path / "state"
    registry.ensure_registry(AUTH_ADDR, tmp_path / "data", state, htpasswd=htpasswd)
    try:
        assert registry.probe_v2(AUTH_ADDR) == 401
        image = modelcar.build_modelcar(checkpoint, base, tmp_path / "oci")
        ref = f"{AUTH_ADDR}/private/tiny:{image.tag}"
        wrong = password[::-1]
        with pytest.raises(modelcar.RegistryAuthError) as exc:
            modelcar.push_modelcar(tmp_path / "oci", ref, username="alice", password=wrong,
                                   tls_verify=False, retries=0)
        err = exc.value
        text = " ".join([str(err), repr(err), json.dumps(err.to_dict()),
                         "".join(traceback.format_exception(err))])
        assert "401" in text or "unauthorized" in text.lower()
        assert wrong not in text
        assert err.__cause__ is None and err.__context__ is None
        result = modelcar.push_modelcar(tmp_path / "oci", ref, username="alice",
                                        password=password, tls_verify=False)
        assert result.changed
        assert password not in json.dumps(result.to_dict())
        verify = modelcar.verify_pushed(ref, checkpoint, tls_verify=False, username="alice",
                                        password=password)
        assert verify.ok and password not in json.dumps(verify.to_dict())
    finally:
        registry.stop_registry(AUTH_ADDR, state)


def test_pull_base_by_digest_is_idempotent(reg, base, tmp_path):
    # production pulls a UBI micro base by digest; here our own base stands in for it
    pushed = modelcar.push_modelcar(base, f"{ADDR}/modelgate-test/base:v1", tls_verify=False)
    ref = f"{ADDR}/modelgate-test/base@{pushed.digest}"
    layout = tmp_path / "base"
    # skopeo may re-encode the manifest (it compresses layers for an oci: destination), so
    # the layout's digest is its own; what must hold is the same content and a stable digest
    digest = modelcar.pull_base(ref, layout, tls_verify=False)
    marker = layout / "modelgate-source.json"
    mtime = marker.stat().st_mtime_ns
    assert modelcar.pull_base(ref, layout, tls_verify=False) == digest
    assert marker.stat().st_mtime_ns == mtime  # second call pulled nothing

    def diff_ids(layout_dir: Path) -> list[str]:
        manifest = modelcar.read_layout_manifest(layout_dir)[1]
        blob = layout_dir / "blobs" / "sha256" / manifest["config"]["digest"][7:]
        return json.loads(blob.read_bytes())["rootfs"]["diff_ids"]

    assert diff_ids(layout) == diff_ids(base)


def test_unreachable_registry_is_retried_then_reported(tmp_path, base):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(modelcar.TransientRegistryError, match="connection refused") as exc:
        modelcar.push_modelcar(base, f"127.0.0.1:{port}/x/y:z", tls_verify=False, retries=1)
    assert exc.value.fix
