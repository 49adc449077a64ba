"""Where a quantize job runs: the podman command line and the Kubernetes Job, as plain data.

The local runner needs nothing here (``modelgate.quantize.quantize_variant`` runs the job in the
quantize virtualenv). The two others wrap the same job, ``modelgate.quantize_job``, which needs
only the standard library plus torch/transformers/llmcompressor, so any image with LLM
Compressor can run it; ModelGate's own code travels with the job:

- **podman**: ``podman_job_argv`` renders ``podman run`` with CDI GPU devices, the model
  (read-only) and the checkpoint store mounted at the *same paths* as on the host, and the
  ``modelgate`` package mounted read-only on ``PYTHONPATH``. The host computes the content key
  and keeps the atomic rename, so a podman run and a local run share one store and one key
  scheme (the tool versions are probed inside the image).
- **kubernetes**: ``render_k8s_quantize`` renders a ConfigMap (the job spec, the job's source
  file and the calibration samples) and a Job that reads the model from one PVC and writes the
  checkpoint to another, renaming ``.tmp-<key>-k8s`` to ``<key>`` only when complete. The Job's
  name carries the key, so applying it again is a no-op, and a re-created Job whose checkpoint
  already exists exits at once.

It also reads what the play needs to show progress: the async job's result file and the
job's progress lines (``parse_progress``/``progress_message``/``read_async_result``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate import k8s
from modelgate.container_tools import run_container_tool
from modelgate.errors import ModelGateError, ToolError

# The directory that holds the ``modelgate`` package (mounted into containers read-only).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CONTAINER_PACKAGE_ROOT = "/opt/modelgate/python"
# Everything offline: the job reads only the mounted model and calibration files.
JOB_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# ConfigMaps hold at most 1 MiB; leave room for the spec and the job's source.
CONFIGMAP_CALIBRATION_LIMIT = 900 * 1024


# ------------------------------------------------------------------------------------ podman


@dataclass(frozen=True)
class PodmanRunner:
    """How to run the job under podman: image, CDI devices and extra ``podman run`` flags."""

    image: str
    devices: tuple[str, ...] = ("nvidia.com/gpu=all",)
    podman: str = "podman"
    python: str = "python3"
    shm_size: str = "16g"
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        """Raise ModelGateError naming the bad input."""
        if not self.image:
            raise ModelGateError("no image given for the podman runner", field="image",
                                 fix="set quantize_image to an image with python3 and "
                                     "llmcompressor (ModelGate's code is mounted into it)")
        for dev in self.devices:
            if "=" not in dev and not dev.startswith("/dev/"):
                raise ModelGateError(
                    f"device {dev!r} is neither a CDI name nor a /dev path", field="devices",
                    fix="use CDI names such as nvidia.com/gpu=all or nvidia.com/gpu=0")


def podman_mounts(model_dir: Path, store_dir: Path, calibration_files: list[Path]) -> list[str]:
    """``-v`` values: model and calibration read-only, the store read-write, at host paths.

    Identical paths inside and outside mean the job spec written on the host needs no
    translation. Directories are deduplicated so a calibration file inside the model dir
    does not mount twice.
    """
    ro: list[str] = []
    for d in [model_dir, *(Path(f).resolve().parent for f in calibration_files)]:
        s = str(Path(d).resolve())
        if s not in ro:
            ro.append(s)
    store = str(Path(store_dir).resolve())
    vols = [f"{d}:{d}:ro" for d in ro if d != store]
    vols.append(f"{store}:{store}:rw")
    vols.append(f"{PACKAGE_ROOT / 'modelgate'}:{CONTAINER_PACKAGE_ROOT}/modelgate:ro")
    return vols


def podman_argv(runner: PodmanRunner, job_args: list[str], volumes: list[str],
                name: str | None = None) -> list[str]:
    """``podman run`` for ``python -m modelgate.quantize_job <job_args>`` in ``runner.image``."""
    argv = [runner.podman, "run", "--rm", "--pull=missing",
            # label=disable: the model and store keep their SELinux labels (relabelling a
            # many-GB tree on every run is slow), as NVIDIA's CDI instructions do.
            "--security-opt=label=disable", f"--shm-size={runner.shm_size}"]
    if name:
        argv += ["--name", name, "--replace"]
    argv += [f"--device={d}" for d in runner.devices]
    argv += [f"--volume={v}" for v in volumes]
    env = {**JOB_ENV, "PYTHONPATH": CONTAINER_PACKAGE_ROOT, **dict(runner.env)}
    argv += [f"--env={k}={v}" for k, v in sorted(env.items())]
    argv += list(runner.extra_args)
    argv += [runner.image, runner.python, "-m", "modelgate.quantize_job", *job_args]
    return argv


def podman_job_argv(runner: PodmanRunner, spec_path: Path, volumes: list[str]) -> list[str]:
    """The argv that runs one quantize job spec (``store/.spec-<key>.json``) in a container."""
    key = spec_path.stem.removeprefix(".spec-")
    return podman_argv(runner, ["--spec", str(spec_path)], volumes,
                       name=f"modelgate-quantize-{key[:12]}")


def probe_podman_tool_versions(runner: PodmanRunner) -> dict[str, str]:
    """The tool versions inside the image (they are part of the checkpoint's key)."""
    runner.validate()
    volumes = [f"{PACKAGE_ROOT / 'modelgate'}:{CONTAINER_PACKAGE_ROOT}/modelgate:ro"]
    argv = podman_argv(runner, ["--versions"], volumes)
    # no GPU needed to read package versions, and a GPU-less probe also works on the controller
    argv = [a for a in argv if not a.startswith("--device=")]
    proc = run_container_tool("podman", argv[1:], executable=runner.podman, timeout=900,
                              check=False)
    if proc.returncode != 0:
        raise ToolError(f"{shlex.join(argv)} failed: {proc.stderr[-2000:]}", field="image",
                        fix="use an image with python3 and llmcompressor")
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    if versions.get("llmcompressor") == "absent":
        raise ModelGateError(f"llmcompressor is not installed in {runner.image}", field="image",
                             fix="use an image with llmcompressor")
    return versions


# -------------------------------------------------------------------------------- kubernetes


@dataclass(frozen=True)
class KubernetesRunner:
    """Where and how the Job runs on the cluster."""

    namespace: str
    image: str
    model_pvc: str
    output_pvc: str
    model_subpath: str = ""
    output_subpath: str = "checkpoints"
    gpu_count: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    service_account: str = ""
    python: str = "python3"
    timeout_s: int = 21600

    def validate(self) -> None:
        """Raise ModelGateError naming the bad input."""
        for fld, value in (("namespace", self.namespace), ("image", self.image),
                           ("model_pvc", self.model_pvc), ("output_pvc", self.output_pvc)):
            if not value:
                raise ModelGateError(f"no {fld} given for the kubernetes runner", field=fld,
                                     fix=f"set quantize_k8s_{fld} (see the role's README)")
        if self.gpu_count < 0:
            raise ModelGateError("gpu_count must be >= 0", field="gpu_count",
                                 fix="use 1 for one GPU (0 runs on CPU)")
        if self.timeout_s < 60:
            raise ModelGateError("timeout must be at least 60 s", field="timeout",
                                 fix="give the Job the seconds a quantization needs")


def k8s_job_name(variant: str, key: str) -> str:
    """``modelgate-quantize-<variant>-<key[:12]>``, DNS-1123 and at most 63 characters."""
    suffix = f"-{key[:12]}"
    stem = k8s.label_value(f"modelgate-quantize-{variant}")
    return stem[:k8s.NAME_MAX - len(suffix)].rstrip("-") + suffix


def _job_script(out_root: str, key: str, python: str) -> str:
    """The container's shell: skip when done, run into .tmp, rename, report provenance.

    The provenance goes to the termination message (<= 4 KiB, it is about 1.5 KiB), so the
    controller reads the result from the pod status without parsing logs.
    """
    final = f"{out_root}/{key}"
    tmp = f"{out_root}/.tmp-{key}-k8s"
    return "\n".join([
        "set -eu",
        f"final={shlex.quote(final)}",
        f"tmp={shlex.quote(tmp)}",
        'if [ -f "$final/provenance.json" ] && [ -f "$final/config.json" ]; then',
        '  echo "progress: done (checkpoint exists)"',
        '  cat "$final/provenance.json" > /dev/termination-log',
        "  exit 0",
        "fi",
        'rm -rf "$tmp"',
        'mkdir -p "$tmp"',
        f"{shlex.quote(python)} /etc/modelgate/quantize_job.py --spec /etc/modelgate/spec.json",
        'test -f "$tmp/provenance.json"',
        'rm -rf "$final"',
        'mv "$tmp" "$final"',
        'cat "$final/provenance.json" > /dev/termination-log',
    ])


def render_k8s_quantize(runner: KubernetesRunner, *, variant: str, job_spec: dict[str, Any],
                        job_source: str, calibration_jsonl: str) -> dict[str, Any]:
    """The ConfigMap and Job for one variant, plus where the checkpoint will be.

    ``job_spec`` is the spec ``modelgate.quantize_job`` reads, with ``key``, digests and the
    recipe already filled in; this sets its paths to the PVC mounts. Returns ``{"name",
    "configmap", "job", "checkpoint_path"}`` (``checkpoint_path`` is inside the output PVC).
    """
    runner.validate()
    if len(calibration_jsonl.encode()) > CONFIGMAP_CALIBRATION_LIMIT:
        raise ModelGateError(
            f"the calibration samples are {len(calibration_jsonl.encode())} bytes; a ConfigMap "
            f"holds at most {CONFIGMAP_CALIBRATION_LIMIT}", field="calibration",
            fix="use fewer or shorter calibration samples")
    key = str(job_spec["key"])
    name = k8s_job_name(variant, key)
    model_dir = "/mnt/model" + (f"/{runner.model_subpath.strip('/')}"
                                if runner.model_subpath.strip("/") else "")
    out_root = "/mnt/output" + (f"/{runner.output_subpath.strip('/')}"
                                if runner.output_subpath.strip("/") else "")
    spec = dict(job_spec)
    spec["model_dir"] = model_dir
    spec["output_dir"] = f"{out_root}/.tmp-{key}-k8s"
    if spec.get("calibration"):
        spec["calibration"] = {**spec["calibration"],
                               "files": ["/etc/modelgate/calibration.jsonl"]}
    labels = k8s.labels("quantize", variant=variant, key=key[:16])
    annotations = {"modelgate.io/key": key, "modelgate.io/variant": variant}
    configmap = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": runner.namespace, "labels": labels,
                     "annotations": annotations},
        "data": {"spec.json": json.dumps(spec, indent=2, sort_keys=True),
                 "quantize_job.py": job_source, "calibration.jsonl": calibration_jsonl},
    }
    resources = k8s.resources(cpu=runner.cpu, memory=runner.memory, gpus=runner.gpu_count,
                              gpu_resource=runner.gpu_resource)
    env = {**JOB_ENV, "HOME": "/tmp", "HF_HOME": "/tmp/hf"}
    container = {
        "name": "quantize",
        "image": runner.image,
        "command": ["/bin/sh", "-c", _job_script(out_root, key, runner.python)],
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": resources,
        "volumeMounts": [
            {"name": "model", "mountPath": "/mnt/model", "readOnly": True},
            {"name": "output", "mountPath": "/mnt/output"},
            {"name": "job", "mountPath": "/etc/modelgate", "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": k8s.restricted_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "model", "persistentVolumeClaim": {"claimName": runner.model_pvc,
                                                        "readOnly": True}},
            {"name": "output", "persistentVolumeClaim": {"claimName": runner.output_pvc}},
            {"name": "job", "configMap": {"name": name}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": runner.shm_size}},
        ],
        **k8s.pod_placement(tolerations=runner.tolerations, node_selector=runner.node_selector,
                            service_account=runner.service_account),
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": runner.namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {
            # a failed quantization is not retried blindly: the play reports it with the log
            "backoffLimit": 0,
            "activeDeadlineSeconds": runner.timeout_s,
            "template": {"metadata": {"labels": labels, "annotations": annotations},
                         "spec": pod_spec},
        },
    }
    return {"name": name, "configmap": configmap, "job": job,
            "checkpoint_path": f"{out_root}/{key}",
            "pvc_path": f"{runner.output_subpath.strip('/')}/{key}".lstrip("/")}


def calibration_samples_jsonl(texts: list[str], num_samples: int) -> str:
    """The first ``num_samples`` texts as JSONL: exactly what the job would read from files."""
    return "".join(json.dumps({"text": t}) + "\n" for t in texts[:num_samples])


def k8s_job_state(job: dict[str, Any] | None) -> str:
    """``absent`` | ``running`` | ``succeeded`` | ``failed`` from a Job object's status."""
    if not job:
        return "absent"
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    if status.get("succeeded"):
        return "succeeded"
    if status.get("failed"):
        return "failed"
    return "running"


# ---------------------------------------------------------------------------------- progress

_PROGRESS_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (?P<msg>.*)$")
_LAYER = re.compile(r"^layer (?P<i>\d+)/(?P<n>\d+)")


@dataclass
class Progress:
    """What the progress file says: the latest message, the layer counter, when it started."""

    latest: str = ""
    layer: int | None = None
    layers: int | None = None
    started: float | None = None
    lines: list[str] = field(default_factory=list)


def parse_progress(text: str) -> Progress:
    """Parse ``<ISO time> <message>`` lines (as ``modelgate.quantize`` writes them)."""
    prog = Progress()
    for raw in text.splitlines():
        m = _PROGRESS_LINE.match(raw.strip())
        if not m:
            continue
        msg = m.group("msg")
        prog.lines.append(msg)
        if prog.started is None:
            prog.started = time.mktime(time.strptime(m.group("ts"), "%Y-%m-%dT%H:%M:%S"))
        prog.latest = msg
        lm = _LAYER.match(msg)
        if lm:
            prog.layer, prog.layers = int(lm.group("i")), int(lm.group("n"))
    return prog


def progress_message(label: str, prog: Progress, now: float | None = None) -> str:
    """One line for the play: ``w4a16: layer 4/6, 21 s`` (or the latest phase)."""
    now = time.time() if now is None else now
    elapsed = "" if prog.started is None else f", {max(0, round(now - prog.started))} s"
    if not prog.latest:
        return f"{label}: starting"
    if prog.layer is not None and prog.latest.startswith("layer "):
        return f"{label}: layer {prog.layer}/{prog.layers}{elapsed}"
    # drop the job's own "elapsed 1.2s" suffix: the wall-clock figure replaces it
    phase = re.sub(r"\s*elapsed [\d.]+s$", "", prog.latest)
    return f"{label}: {phase}{elapsed}"


def async_dir_default() -> Path:
    """Where ansible's async_wrapper writes job results (``ANSIBLE_ASYNC_DIR`` or default)."""
    return Path(os.path.expanduser(os.environ.get("ANSIBLE_ASYNC_DIR", "~/.ansible_async")))


def read_async_result(async_dir: Path, jid: str) -> dict[str, Any] | None:
    """The async job's final result, or None while it runs.

    async_wrapper writes ``{"started": true, "finished": false, ...}`` first and replaces it
    (atomically) with the module's result, which has no ``started`` key.
    """
    if not re.fullmatch(r"[0-9A-Za-z._-]+", jid):
        raise ModelGateError(f"bad async job id {jid!r}", field="jid",
                             fix="pass the ansible_job_id of an async task")
    path = async_dir / jid
    if not path.is_file():
        raise ModelGateError(f"no async job {jid} in {async_dir}", field="jid",
                             fix="pass the ansible_job_id registered by the async task "
                                 "(and async_dir when ANSIBLE_ASYNC_DIR is set elsewhere)")
    text = path.read_text()
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None  # a result still being written by a non-atomic writer
    if data.get("started") and not data.get("finished"):
        return None
    return data


_INTERNAL_KEYS = ("invocation", "started", "finished", "ansible_job_id", "results_file",
                  "_ansible_suppress_tmpdir_delete", "_ansible_no_log", "warnings",
                  "deprecations")


def job_outcome(data: dict[str, Any]) -> dict[str, Any]:
    """The module's own result from an async result file, without async bookkeeping."""
    return {k: v for k, v in data.items() if k not in _INTERNAL_KEYS}


# ------------------------------------------------------------- kubernetes: plan and record


def _k8s_runner(params: dict[str, Any]) -> KubernetesRunner:
    return KubernetesRunner(
        namespace=params["namespace"], image=params["image"], model_pvc=params["model_pvc"],
        output_pvc=params["output_pvc"], model_subpath=params.get("model_subpath") or "",
        output_subpath=params.get("output_subpath") or "",
        gpu_count=int(params.get("gpu_count", 1)),
        gpu_resource=params.get("gpu_resource") or "nvidia.com/gpu",
        cpu=str(params.get("cpu") or "8"), memory=str(params.get("memory") or "64Gi"),
        tolerations=tuple(params.get("tolerations") or ()),
        node_selector=tuple(sorted((str(k), str(v)) for k, v in
                                   (params.get("node_selector") or {}).items())),
        service_account=params.get("service_account") or "",
        python=params.get("python") or "python3",
        timeout_s=int(params.get("timeout", 21600)))


def plan_k8s_quantize(params: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Key and manifests for one variant (the quantize_k8s_job module's parameters).

    The key is computed as the local runner does, from the controller's copy of the model
    (the PVC must hold the same files); the image reference stands in for the tool versions
    unless ``tool_versions`` is given. Talks to no cluster; writes only the built-in corpus
    (to a temporary directory in check mode).
    """
    import tempfile

    from modelgate.model_source import write_corpus
    from modelgate.quantize import CalibrationSpec, model_digest, quantization_key
    from modelgate.quantize_job import read_calibration_texts
    from modelgate.recipes import build_recipe

    runner = _k8s_runner(params)
    runner.validate()
    recipe = build_recipe(params["recipe"], group_size=params.get("group_size"),
                          ignore=params.get("ignore"))
    m_digest = model_digest(Path(params["model"]).resolve())
    if recipe.is_baseline:
        sub = runner.model_subpath.strip("/")
        return {"changed": False, "name": "", "key": m_digest.removeprefix("sha256:"),
                "path": f"pvc://{runner.model_pvc}/{sub}".rstrip("/"),
                "configmap": None, "job": None}
    with tempfile.TemporaryDirectory(prefix="modelgate-k8s-") as scratch:
        files = [Path(f) for f in params.get("calibration_files") or []]
        if not files and recipe.needs_calibration:
            corpus_dir = Path(scratch) if check_mode else Path(params["calibration_dir"])
            corpus = corpus_dir / "modelgate-corpus.jsonl"
            if not corpus.exists():
                write_corpus(corpus)
            files = [corpus]
        calibration = CalibrationSpec(files, int(params.get("num_samples", 64)),
                                      int(params.get("max_seq_length", 512)))
        c_digest = None
        jsonl = ""
        if recipe.needs_calibration:
            calibration.validate()
            c_digest = calibration.digest
            jsonl = calibration_samples_jsonl(
                read_calibration_texts([str(f) for f in files]), calibration.num_samples)
    versions = {str(k): str(v) for k, v in (params.get("tool_versions") or {}).items()} or {
        "image": runner.image}
    key = quantization_key(m_digest, recipe, c_digest, versions)
    spec = {
        "model_dir": "", "model_digest": m_digest, "output_dir": "",
        "recipe_name": recipe.name, "recipe_digest": recipe.digest,
        "recipe_yaml": recipe.to_yaml(), "needs_calibration": recipe.needs_calibration,
        "calibration": ({"files": [], "num_samples": calibration.num_samples,
                         "max_seq_length": calibration.max_seq_length}
                        if recipe.needs_calibration else None),
        "calibration_digest": c_digest, "key": key,
    }
    job_source = (PACKAGE_ROOT / "modelgate" / "quantize_job.py").read_text()
    rendered = render_k8s_quantize(runner, variant=params["variant"], job_spec=spec,
                                   job_source=job_source, calibration_jsonl=jsonl)
    return {"changed": False, "name": rendered["name"], "key": key,
            "path": f"pvc://{runner.output_pvc}/{rendered['pvc_path']}",
            "configmap": rendered["configmap"], "job": rendered["job"],
            "tool_versions": versions}


def record_k8s_result(params: dict[str, Any]) -> dict[str, Any]:
    """A finished Job's result as a quantize record, as the local runner returns it.

    ``params["provenance"]`` is the Job's termination message (its provenance.json); the
    caller (the controller) stores the returned ``record`` and ``files`` in the run directory.
    """
    from modelgate.quantize import QuantizeResult, quantize_record
    from modelgate.recipes import build_recipe

    prov = dict(params["provenance"])
    key = str(prov.get("key") or "")
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ModelGateError("the Job's provenance has no content key", field="provenance",
                             fix="pass the terminated container's message (provenance.json)")
    sub = (params.get("output_subpath") or "").strip("/")
    path = f"pvc://{params['output_pvc']}/" + (f"{sub}/{key}" if sub else key)
    recipe = build_recipe(params["recipe"], group_size=params.get("group_size"),
                          ignore=params.get("ignore"))
    result = QuantizeResult(path=path, key=key, changed=bool(params.get("built")),
                            provenance=prov)
    return {"changed": False, "path": path, "key": key, "provenance": prov,
            **quantize_record(params["variant"], recipe, result)}
