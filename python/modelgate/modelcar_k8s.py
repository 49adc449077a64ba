"""The modelcar stage inside the cluster: a Job that builds and pushes one variant's modelcar.

With the kubernetes quantize runner the checkpoints are on a PVC, and nothing large should pass
through the controller. So the Job reads the checkpoint from that PVC, builds the image with the
same code the controller would run (``modelcar.publish_modelcar``: the same layers, labels and
verification), and pushes it to the configured registry:

- an init container with skopeo copies the base image (pinned by digest) into an OCI layout
  on the scratch volume;
- the main container (any image with ``python3``; the quantize image has one) unpacks
  ModelGate's own package from the Job's ConfigMap and runs ``modelgate modelcar publish``,
  which writes a short summary (ref, digest, tag) to the termination message, where the
  controller reads it from the pod status.

The image's tag is the variant's quantize content key (``<variant>-<key[:16]>``), known before
the Job runs: the rendered serving manifests can name it even when nothing is applied, the Job
is named after it (applying it again is a no-op), and a re-run finds the image already pushed.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate import k8s
from modelgate.errors import ModelGateError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds modelgate/
SOURCE_ARCHIVE = "modelgate-src.tar.gz"
# ConfigMaps hold at most 1 MiB (base64 of binaryData included).
CONFIGMAP_LIMIT = 1024 * 1024
SCRATCH = "/work"
CHECKPOINT_MOUNT = "/mnt/checkpoint"
_PVC_URI = re.compile(r"^pvc://(?P<pvc>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)(?:/(?P<sub>.*))?$")


def parse_pvc_uri(uri: str) -> tuple[str, str]:
    """``pvc://<claim>/<subpath>`` -> (claim, subpath)."""
    m = _PVC_URI.match(uri or "")
    if not m:
        raise ModelGateError(f"{uri!r} is not a pvc://<claim>/<path> location",
                             field="checkpoint",
                             fix="run the quantize stage with the kubernetes runner first")
    return m.group("pvc"), (m.group("sub") or "").strip("/")


def image_tag(variant: str, key: str) -> str:
    """``<variant>-<key[:16]>``: an OCI tag (at most 128 characters of [A-Za-z0-9_.-])."""
    if not re.fullmatch(r"[0-9a-f]{16,}", key):
        raise ModelGateError(f"content key {key!r} is not hex", field="key",
                             fix="pass the quantize record's key")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", variant).strip("-.") or "variant"
    return f"{stem[:100]}-{key[:16]}"


def source_archive(package_root: Path = PACKAGE_ROOT) -> bytes:
    """The ``modelgate`` package as a reproducible .tar.gz (sorted, no mtimes, no caches)."""
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted((package_root / "modelgate").rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            info = tarfile.TarInfo(str(path.relative_to(package_root)))
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


@dataclass(frozen=True)
class ModelcarJob:
    """Where the Job runs and what it pushes."""

    namespace: str
    image: str                  # python3 (the quantize image)
    skopeo_image: str           # copies the base image
    base: str                   # the modelcar base, pinned by digest
    registry: str
    repository: str
    tls_verify: bool = True
    push_secret: str = ""       # Secret with `username` and `password` keys (empty: anonymous)
    scratch_pvc: str = ""       # the layouts' volume; empty: an emptyDir of scratch_size
    scratch_size: str = "64Gi"
    cpu: str = "2"
    memory: str = "8Gi"
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    service_account: str = ""
    timeout_s: int = 7200

    def validate(self) -> None:
        """Name the field and the fix before anything is rendered."""
        for fld in ("namespace", "image", "skopeo_image", "registry", "repository"):
            if not getattr(self, fld):
                raise ModelGateError(f"no {fld} given for the in-cluster modelcar build",
                                     field=f"modelcar_k8s_{fld}",
                                     fix=f"set modelcar_k8s_{fld} (or the pipeline's input)")
        if self.base == "busybox" or "@sha256:" not in self.base:
            raise ModelGateError(
                f"modelcar base {self.base!r} is not an image pinned by digest; in the cluster "
                "the base is copied by skopeo, which needs one", field="modelgate_modelcar_base",
                fix="e.g. registry.access.redhat.com/ubi9/ubi-micro@sha256:<digest>")


def _publish_script(job: ModelcarJob, *, variant: str, checkpoint: str, tag: str) -> str:
    argv = ["python3", "-m", "modelgate", "modelcar", "publish",
            "--checkpoint", checkpoint, "--variant", variant,
            "--layout-dir", f"{SCRATCH}/oci", "--base-layout", f"{SCRATCH}/base",
            "--registry", job.registry, "--repository", job.repository, "--tag", tag,
            "--provenance-file", "/etc/modelgate/provenance.json",
            "--summary-file", "/dev/termination-log", "--verify-client", "native"]
    if not job.tls_verify:
        argv.append("--insecure")
    if job.push_secret:
        argv += ["--username-env", "MODELGATE_REGISTRY_USERNAME",
                 "--password-env", "MODELGATE_REGISTRY_PASSWORD"]
    return "\n".join([
        "set -eu",
        "mkdir -p /tmp/modelgate-src",
        f"tar -xzf /etc/modelgate/{SOURCE_ARCHIVE} -C /tmp/modelgate-src",
        "export PYTHONPATH=/tmp/modelgate-src",
        " ".join(shlex.quote(a) for a in argv),
    ])


def _base_script(job: ModelcarJob) -> str:
    tls = "" if job.tls_verify else " --src-tls-verify=false"
    return "\n".join([
        "set -eu",
        # a layout a finished copy left behind is kept (a retried pod does not copy again)
        f'if [ -f {SCRATCH}/base/index.json ]; then echo "base layout present"; exit 0; fi',
        f"rm -rf {SCRATCH}/base.tmp",
        f"skopeo --override-os linux --override-arch amd64 copy{tls} "
        f"docker://{shlex.quote(job.base)} oci:{SCRATCH}/base.tmp",
        f"mv {SCRATCH}/base.tmp {SCRATCH}/base",
    ])


def render_modelcar_job(job: ModelcarJob, *, variant: str, checkpoint: str, key: str,
                        provenance: dict[str, Any] | None = None,
                        source: bytes | None = None) -> dict[str, Any]:
    """The ConfigMap and Job that publish one variant's modelcar, and the ref it will push.

    ``checkpoint`` is the quantize record's ``pvc://<claim>/<path>``. Returns ``{"name",
    "tag", "ref", "configmap", "job"}``.
    """
    job.validate()
    claim, sub = parse_pvc_uri(checkpoint)
    tag = image_tag(variant, key)
    name = k8s.dns_label(f"modelgate-modelcar-{variant}-{key[:12]}")
    archive = source if source is not None else source_archive()
    prov_json = json.dumps(provenance or {}, indent=1, sort_keys=True)
    size = len(base64.b64encode(archive)) + len(prov_json)
    if size > CONFIGMAP_LIMIT:
        raise ModelGateError(f"the Job's ConfigMap would hold {size} bytes, over 1 MiB",
                             field="provenance", fix="pass fewer provenance entries")
    labels = k8s.labels("modelcar", variant=variant, key=key[:16])
    configmap = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": job.namespace, "labels": labels},
        "data": {"provenance.json": prov_json},
        "binaryData": {SOURCE_ARCHIVE: base64.b64encode(archive).decode()},
    }
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"},
                                 {"name": "HOME", "value": "/tmp"}]
    if job.push_secret:
        env += [{"name": f"MODELGATE_REGISTRY_{k.upper()}", "valueFrom": {
            "secretKeyRef": {"name": job.push_secret, "key": k}}} for k in ("username", "password")]
    mounts = [{"name": "scratch", "mountPath": SCRATCH}]
    scratch: dict[str, Any] = (
        {"name": "scratch", "persistentVolumeClaim": {"claimName": job.scratch_pvc}}
        if job.scratch_pvc else {"name": "scratch", "emptyDir": {"sizeLimit": job.scratch_size}})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": [{
            "name": "base", "image": job.skopeo_image,
            "command": ["/bin/sh", "-c", _base_script(job)],
            "env": [{"name": "HOME", "value": "/tmp"}],
            "volumeMounts": mounts,
            "securityContext": k8s.restricted_security_context(),
        }],
        "containers": [{
            "name": "publish", "image": job.image,
            "command": ["/bin/sh", "-c", _publish_script(
                job, variant=variant, checkpoint=f"{CHECKPOINT_MOUNT}/{sub}".rstrip("/"),
                tag=tag)],
            "env": env,
            "resources": k8s.resources(cpu=job.cpu, memory=job.memory),
            "volumeMounts": [*mounts,
                             {"name": "checkpoint", "mountPath": CHECKPOINT_MOUNT,
                              "readOnly": True},
                             {"name": "job", "mountPath": "/etc/modelgate", "readOnly": True}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": k8s.restricted_security_context(),
        }],
        "volumes": [scratch,
                    {"name": "checkpoint", "persistentVolumeClaim": {"claimName": claim,
                                                                     "readOnly": True}},
                    {"name": "job", "configMap": {"name": name}}],
        **k8s.pod_placement(tolerations=job.tolerations, node_selector=job.node_selector,
                            service_account=job.service_account),
    }
    manifest = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": job.namespace, "labels": labels,
                     "annotations": {"modelgate.io/ref": f"{job.registry}/{job.repository}:{tag}"}},
        "spec": {"backoffLimit": 1, "activeDeadlineSeconds": job.timeout_s,
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }
    return {"name": name, "tag": tag, "ref": f"{job.registry}/{job.repository}:{tag}",
            "configmap": configmap, "job": manifest}


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """What fits the 4 KiB termination message: the pushed image, not its layer list."""
    keys = ("variant", "ref", "ref_by_digest", "digest", "tag", "checkpoint_digest")
    return {k: data[k] for k in keys if k in data}


def record_from_summary(message: str) -> dict[str, Any]:
    """The modelcar run record of a finished Job, from its termination message."""
    from modelgate.rundir import stage_record

    try:
        data = json.loads(message)
    except (TypeError, json.JSONDecodeError):
        raise ModelGateError("the modelcar Job left no summary in its termination message",
                             field="termination message",
                             fix="read the Job's pod log (oc logs job/<name>)") from None
    missing = [k for k in ("variant", "ref", "ref_by_digest", "digest") if not data.get(k)]
    if missing:
        raise ModelGateError(f"the modelcar Job's summary lacks {missing}",
                             field="termination message", fix="read the Job's pod log")
    return stage_record(str(data["variant"]), "modelcar", {**data, "built_in": "cluster"})
