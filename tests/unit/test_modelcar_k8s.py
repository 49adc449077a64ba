"""The in-cluster modelcar Job: its manifests (strict core schemas) and its summary record."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
from k8s_schemas import validate_all
from modelgate.errors import ModelGateError
from modelgate.modelcar_k8s import (
    ModelcarJob,
    image_tag,
    parse_pvc_uri,
    record_from_summary,
    render_modelcar_job,
    source_archive,
    summary,
)

BASE = "registry.access.redhat.com/ubi9/ubi-micro@sha256:" + "c" * 64
KEY = "0123456789abcdef" * 4


def _job(**kw):
    fields = {"namespace": "modelgate", "image": "quay.example.com/acme/llmc@sha256:" + "d" * 64,
              "skopeo_image": "quay.io/skopeo/stable:v1.20", "base": BASE,
              "registry": "quay.example.com", "repository": "acme/nemotron", **kw}
    return ModelcarJob(**fields)


def test_the_job_reads_the_pvc_and_pushes_the_keyed_tag():
    out = render_modelcar_job(_job(push_secret="modelgate-registry-push"), variant="w4a16",
                              checkpoint="pvc://modelgate-checkpoints/checkpoints/" + KEY,
                              key=KEY, provenance={"source_model": "nemotron"})
    assert validate_all([out["configmap"], out["job"]]) == {"ConfigMap": 1, "Job": 1}
    assert out["tag"] == "w4a16-0123456789abcdef"
    assert out["ref"] == "quay.example.com/acme/nemotron:w4a16-0123456789abcdef"
    pod = out["job"]["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "checkpoint")
    assert claim["persistentVolumeClaim"] == {"claimName": "modelgate-checkpoints",
                                              "readOnly": True}
    (init,) = pod["initContainers"]
    assert f"docker://{BASE}" in init["command"][2]
    (main,) = pod["containers"]
    script = main["command"][2]
    assert f"--checkpoint /mnt/checkpoint/checkpoints/{KEY}" in script
    assert "--tag w4a16-0123456789abcdef" in script and "--insecure" not in script
    assert "--summary-file /dev/termination-log" in script
    # the credentials come from the Secret, never from the manifest
    assert {e["name"] for e in main["env"] if "valueFrom" in e} == {
        "MODELGATE_REGISTRY_USERNAME", "MODELGATE_REGISTRY_PASSWORD"}
    assert json.loads(out["configmap"]["data"]["provenance.json"]) == {"source_model": "nemotron"}


def test_the_configmap_carries_the_package_that_runs_the_build():
    out = render_modelcar_job(_job(), variant="bf16", checkpoint="pvc://models/nemotron",
                              key=KEY)
    data = base64.b64decode(out["configmap"]["binaryData"]["modelgate-src.tar.gz"])
    import gzip
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = tar.getnames()
    assert "modelgate/modelcar.py" in names and "modelgate/oci_push.py" in names
    assert not any("__pycache__" in n for n in names)
    assert source_archive() == source_archive()  # reproducible: the Job's name never drifts


def test_bad_input_names_the_field():
    with pytest.raises(ModelGateError) as exc:
        render_modelcar_job(_job(), variant="x", checkpoint="/srv/ckpt", key=KEY)
    assert exc.value.field == "checkpoint"
    with pytest.raises(ModelGateError) as exc:
        _job(base="busybox").validate()
    assert exc.value.field == "modelgate_modelcar_base"
    with pytest.raises(ModelGateError) as exc:
        ModelcarJob(namespace="modelgate", image="", skopeo_image="s", base=BASE,
                    registry="r", repository="p").validate()
    assert exc.value.field == "modelcar_k8s_image"
    assert parse_pvc_uri("pvc://models") == ("models", "")
    with pytest.raises(ModelGateError):
        image_tag("x", "not-hex")


def test_the_summary_fits_a_termination_message_and_becomes_the_record():
    data = {"variant": "w4a16", "ref": "q/a:t", "ref_by_digest": "q/a@sha256:" + "e" * 64,
            "digest": "sha256:" + "e" * 64, "tag": "t", "checkpoint_digest": "sha256:" + "f" * 64,
            "layers": [{"files": ["model.safetensors"] * 500}]}
    message = json.dumps(summary(data))
    assert len(message) < 4096
    record = record_from_summary(message)
    assert record["variant"] == "w4a16" and record["stage"] == "modelcar"
    assert record["data"]["ref_by_digest"] == data["ref_by_digest"]
    with pytest.raises(ModelGateError, match="no summary"):
        record_from_summary("")
    with pytest.raises(ModelGateError, match="lacks"):
        record_from_summary(json.dumps({"variant": "w4a16"}))
