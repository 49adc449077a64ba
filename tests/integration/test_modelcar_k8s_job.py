"""The in-cluster modelcar Job's container, run for real: podman, a registry with a password.

No Kubernetes API server can run here, so the Job's pod is played by podman: the rendered
ConfigMap becomes /etc/modelgate, the checkpoint PVC /mnt/checkpoint, the scratch emptyDir
/work, and the Secret's values the container's environment, exactly as the pod spec maps them.
The container is the one ``render_modelcar_job`` renders (its image here: the vLLM CPU
stand-in, which has python3, as the quantize image has); the init container's skopeo copy of
the base image is played by a busybox base layout (no registry of UBI images is reachable
here). The registry is Debian's docker-registry with htpasswd auth.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from conftest import REPO
from modelgate import modelcar, registry
from modelgate.modelcar_k8s import ModelcarJob, record_from_summary, render_modelcar_job

PORT = int(os.environ.get("MODELGATE_TEST_K8S_REGISTRY_PORT", "18220"))
ADDR = f"127.0.0.1:{PORT}"
KEY = "5a1e" * 16
PASSWORD = "Pod-s3cret-pa55word"
BASE = "registry.access.redhat.com/ubi9/ubi-micro@sha256:" + "0" * 64  # stands in: not pulled

missing = [t for t in ("docker-registry", "podman", "debootstrap") if shutil.which(t) is None]
pytestmark = [pytest.mark.needs_tools,
              pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} installed")]


def _python_image() -> str:
    proc = subprocess.run([str(REPO / "scripts" / "build-vllm-cpu-image.sh")],
                          capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _htpasswd(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt htpasswd lines (libxcrypt)

        path.write_text("robot:" + crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))
                        + "\n")
    return path


def _run_pod_container(job: dict, configmap: dict, secret: dict, image: str, *,
                       pvc: Path, scratch: Path, etc: Path, termlog: Path
                       ) -> subprocess.CompletedProcess[str]:
    """``podman run`` of the Job's container with the volumes and env its pod spec names."""
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for name, text in configmap.get("data", {}).items():
        (etc / name).write_text(text)
    for name, b64 in configmap.get("binaryData", {}).items():
        (etc / name).write_bytes(base64.b64decode(b64))
    hosts = {"scratch": scratch, "checkpoint": pvc, "job": etc}
    argv = ["podman", "run", "--rm", "--network", "host", "--entrypoint", "/bin/sh",
            "-v", f"{termlog}:{container['terminationMessagePath']}"]
    for mount in container["volumeMounts"]:
        ro = ":ro" if mount.get("readOnly") else ""
        argv += ["-v", f"{hosts[mount['name']]}:{mount['mountPath']}{ro}"]
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[item["name"]] = secret["stringData"][ref["key"]]
    for name in env:
        argv += ["--env", name]  # values from the environment, never on the command line
    argv += [image, "-c", container["command"][2]]
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=900, check=False)


def test_the_jobs_container_builds_pushes_and_reports_the_digest(tmp_path: Path) -> None:
    image = _python_image()
    state = tmp_path / "registry-state"
    registry.ensure_registry(ADDR, tmp_path / "registry-data", state,
                             htpasswd=_htpasswd(tmp_path / "htpasswd"))
    try:
        pvc = tmp_path / "pvc"
        ckpt = pvc / "checkpoints" / KEY
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text('{"model_type": "nemotron_h"}\n')
        (ckpt / "model.safetensors").write_bytes(os.urandom(3 << 20))
        scratch, etc = tmp_path / "work", tmp_path / "etc"
        scratch.mkdir(mode=0o777)
        scratch.chmod(0o777)  # the image runs as uid 1001, as an OpenShift pod would
        etc.mkdir()
        # the init container's result: the base image as an OCI layout on the scratch volume
        modelcar.build_busybox_base(scratch / "base")
        subprocess.run(["chmod", "-R", "a+rwX", str(scratch)], check=True)
        termlog = tmp_path / "termination-log"
        termlog.write_text("")
        termlog.chmod(0o666)

        job = ModelcarJob(namespace="modelgate", image=image, skopeo_image="unused", base=BASE,
                          registry=ADDR, repository="modelgate-test/w4a16", tls_verify=False,
                          push_secret="modelgate-registry-push")
        out = render_modelcar_job(job, variant="w4a16", checkpoint=f"pvc://ckpts/checkpoints/{KEY}",
                                  key=KEY, provenance={"source_model": "tiny", "recipe_hash": "r"})
        secret = {"metadata": {"name": "modelgate-registry-push"},
                  "stringData": {"username": "robot", "password": PASSWORD}}
        proc = _run_pod_container(out["job"], out["configmap"], secret, image,
                                  pvc=pvc, scratch=scratch, etc=etc, termlog=termlog)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        record = record_from_summary(termlog.read_text())
        data = record["data"]
        assert data["ref"] == out["ref"] and data["tag"] == f"w4a16-{KEY[:16]}"
        assert data["ref_by_digest"] == f"{ADDR}/modelgate-test/w4a16@{data['digest']}"
        # the registry holds exactly the checkpoint, under the digest the Job reported
        verify = modelcar.verify_pushed(data["ref_by_digest"], ckpt, tls_verify=False,
                                        username="robot", password=PASSWORD)
        assert verify.ok, verify.to_dict()
        labels = json.loads(proc.stdout)["labels"]
        assert labels["io.modelgate.source.model"] == "tiny"
        # the password reached the push through the environment only
        assert PASSWORD not in proc.stdout + proc.stderr + termlog.read_text()
        assert PASSWORD not in json.dumps(out)

        # a retried pod (same Job) pushes nothing new and reports the same image
        termlog.write_text("")
        again = _run_pod_container(out["job"], out["configmap"], secret, image,
                                   pvc=pvc, scratch=scratch, etc=etc, termlog=termlog)
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        assert record_from_summary(termlog.read_text())["data"]["digest"] == data["digest"]
        assert json.loads(again.stdout)["push"]["uploaded_layers"] == 0
    finally:
        registry.stop_registry(ADDR, state)
