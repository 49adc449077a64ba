"""KServe serving on OpenShift AI: one variant's manifests, and what the cluster's answers mean.

Two serving shapes, both served by vLLM from the variant's modelcar (``oci://`` by digest):

- **inferenceservice**: a vLLM ``ServingRuntime`` (serving.kserve.io/v1alpha1) per variant, with
  the arguments of the same derivation the other targets use (``serving.derive_serving_args``:
  max-model-len, the Mamba SSM cache dtype of hybrids, overrides), and an ``InferenceService``
  (v1beta1, RawDeployment: OpenShift AI 3 has no Serverless mode) whose predictor names that
  runtime and the modelcar.
- **llminferenceservice**: an ``LLMInferenceService`` (v1alpha1, or v1alpha2 where the
  cluster's KServe serves it; the llm-d based path), the
  modelcar in ``spec.model.uri``, the vLLM container ``main`` in ``spec.template``, and the
  router (gateway, route, scheduler) when asked for.

The runtime can start before the modelcar is ready (KServe's modelcar race; its init container
narrows it and the pod may restart a few times), so the vLLM container has a startup probe that
waits as long as the weights need (``serving.startup_timeout_s``), and the readiness of the
whole service is read from its ``Ready`` condition, not from a pod.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate import k8s
from modelgate.errors import ModelGateError
from modelgate.serving import ServingArgs, derive_serving_args, startup_timeout_s

SHAPES = ("inferenceservice", "llminferenceservice")
LLMISVC_VERSIONS = ("v1alpha1", "v1alpha2")
API_GROUP = "serving.kserve.io"
RUNTIME_PORT = 8080
MODEL_MOUNT = "/mnt/models"  # where KServe puts the modelcar's /models
# The LLMInferenceService presets (LLMInferenceServiceConfig kserve-config-llm-template) run
# `vllm serve /mnt/models` on 8000 with TLS from a self-signed secret the controller makes;
# a template's args replace the preset's, so ours repeat the port and TLS flags.
LLMISVC_PORT = 8000
LLMISVC_TLS_ARGS = ("--enable-ssl-refresh", "--ssl-certfile", "/etc/ssl/certs/tls.crt",
                    "--ssl-keyfile", "/etc/ssl/certs/tls.key")
PROBE_PERIOD_S = 10
# ISVC names become Service (<name>-predictor) and Route host names: stay well inside 63.
NAME_LIMIT = 40
HF_TOKEN_KEY = "HF_TOKEN"
# Waiting reasons that no amount of waiting cures: the play stops at once and says why.
FATAL_WAITING = ("InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull")


@dataclass(frozen=True)
class KServeSettings:
    """Cluster-side choices shared by every variant of a run."""

    namespace: str
    image: str
    shape: str = "inferenceservice"
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "32Gi"
    tolerations: Sequence[Mapping[str, Any]] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    pull_secret: str = ""
    hf_token_secret: str = ""
    expose: bool = False
    router: Mapping[str, Any] | None = None
    # v1alpha1 is served by every KServe with the LLMInferenceService CRD (0.16, OpenShift AI
    # 3.0); v1alpha2, the storage version from 0.17 on, only by those
    llmisvc_version: str = "v1alpha1"
    runtime_command: Sequence[str] = ("python", "-m", "vllm.entrypoints.openai.api_server")

    def validate(self) -> None:
        """Name the field and the fix before anything is rendered."""
        if self.shape not in SHAPES:
            raise ModelGateError(f"unknown KServe serving shape {self.shape!r}",
                                 field="serve_kserve_shape", fix=f"use one of {list(SHAPES)}")
        if not self.namespace or k8s.dns_label(self.namespace) != self.namespace:
            raise ModelGateError(f"namespace {self.namespace!r} is not a DNS-1123 label",
                                 field="serve_kserve_namespace",
                                 fix="use lower-case letters, digits and '-'")
        if not self.image:
            raise ModelGateError("no vLLM serving image given", field="serve_kserve_image",
                                 fix="set it to the RHAIIS vllm-cuda image, pinned by digest")
        if self.gpus < 0:
            raise ModelGateError(f"gpus {self.gpus} is negative", field="serve_kserve_gpus",
                                 fix="use 0 (CPU) or more")
        if self.llmisvc_version not in LLMISVC_VERSIONS:
            raise ModelGateError(f"LLMInferenceService version {self.llmisvc_version!r}",
                                 field="serve_kserve_llmisvc_version",
                                 fix=f"use one of {list(LLMISVC_VERSIONS)}")
        if self.router is not None and self.shape != "llminferenceservice":
            raise ModelGateError("a router is a LLMInferenceService feature",
                                 field="serve_kserve_router",
                                 fix="set serve_kserve_shape: llminferenceservice, or drop it")


def resource_name(model: str, variant: str) -> str:
    """``<model>-<variant>`` as a DNS-1035 label KServe accepts (it must start with a letter)."""
    name = k8s.dns_label(f"{model}-{variant}", NAME_LIMIT)
    return name if name[0].isalpha() else k8s.dns_label(f"m-{name}", NAME_LIMIT)


def vllm_args(serving_args: ServingArgs, served_name: str, shape: str = "inferenceservice"
              ) -> list[str]:
    """vLLM's arguments inside the serving container, with the port and mount KServe uses.

    The ServingRuntime's container runs vLLM's API server module, so the arguments name the
    model mount; an LLMInferenceService's preset command already does (``vllm serve
    /mnt/models``), and serves TLS on its own port.
    """
    args = ServingArgs(args=dict(serving_args.args), reasons=dict(serving_args.reasons))
    args.set("served-model-name", served_name, "requested served name")
    if shape == "llminferenceservice":
        return ["--port", str(LLMISVC_PORT), *LLMISVC_TLS_ARGS, *args.to_argv()]
    return [f"--port={RUNTIME_PORT}", f"--model={MODEL_MOUNT}", *args.to_argv()]


def _probes(timeout_s: float, port: int, scheme: str) -> dict[str, Any]:
    health = {"httpGet": {"path": "/health", "port": port, "scheme": scheme}}
    return {
        # the weights load (and the modelcar may arrive late) before /health answers
        "startupProbe": {**health, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
                         "failureThreshold": max(3, math.ceil(timeout_s / PROBE_PERIOD_S))},
        "readinessProbe": {**health, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
                           "failureThreshold": 3},
    }


def _container(settings: KServeSettings, name: str, args: list[str], timeout_s: float,
               *, llmisvc: bool) -> dict[str, Any]:
    port, scheme = (LLMISVC_PORT, "HTTPS") if llmisvc else (RUNTIME_PORT, "HTTP")
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf_home"},
        {"name": "HF_HUB_OFFLINE", "value": "1"}]
    if settings.hf_token_secret:
        env.append({"name": HF_TOKEN_KEY, "valueFrom": {"secretKeyRef": {
            "name": settings.hf_token_secret, "key": HF_TOKEN_KEY}}})
    out: dict[str, Any] = {"name": name, "image": settings.image}
    if not llmisvc:  # the preset's command serves an LLMInferenceService
        out["command"] = list(settings.runtime_command)
    out.update({
        "args": args, "env": env,
        "ports": [{"containerPort": port, "protocol": "TCP"}],
        "resources": k8s.resources(cpu=settings.cpu, memory=settings.memory,
                                   gpus=settings.gpus, gpu_resource=settings.gpu_resource),
        **_probes(timeout_s, port, scheme),
        "securityContext": k8s.restricted_security_context(),
    })
    return out


def _pod_placement(settings: KServeSettings) -> dict[str, Any]:
    # the modelcar is an image the kubelet pulls: the pod's pull secret applies to it
    return k8s.pod_placement(tolerations=settings.tolerations,
                             node_selector=settings.node_selector,
                             pull_secret=settings.pull_secret)


def _metadata(settings: KServeSettings, name: str, variant: str, *,
              annotations: Mapping[str, str] | None = None,
              labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": settings.namespace,
                            "labels": {**k8s.labels("serving", variant=variant),
                                       **(labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def render_variant(settings: KServeSettings, *, model: str, variant: str, modelcar: str,
                   serving_args: ServingArgs, served_name: str,
                   weight_bytes: int | None = None, by_tag: bool = False) -> dict[str, Any]:
    """The objects that serve one variant, in the order to apply them.

    ``modelcar`` must be pinned by digest, unless ``by_tag`` (manifests rendered before the
    modelcar exists: the tag its Job will push, which the manifests' annotation says).

    Returns ``{"name", "kind", "api_version", "objects", "startup_timeout_s", "vllm_args"}``;
    ``kind``/``api_version``/``name`` are the object whose ``Ready`` condition says it serves.
    """
    settings.validate()
    if not modelcar.startswith("oci://"):
        modelcar = f"oci://{modelcar}"
    if "@sha256:" not in modelcar and not by_tag:
        raise ModelGateError(f"modelcar {modelcar} is not pinned by digest",
                             field="serve_kserve_modelcar_ref",
                             fix="pass the modelcar record's ref_by_digest")
    name = resource_name(model, variant)
    timeout = startup_timeout_s(weight_bytes, "cuda")
    args = vllm_args(serving_args, served_name, settings.shape)
    display = {"openshift.io/display-name": f"{model} {variant}"}
    if "@sha256:" not in modelcar:
        display["modelgate.io/modelcar"] = ("by tag: rendered before the modelcar Job pushed "
                                            "it; a run that applies serves it by digest")
    if settings.shape == "inferenceservice":
        runtime = {
            "apiVersion": f"{API_GROUP}/v1alpha1", "kind": "ServingRuntime",
            "metadata": _metadata(settings, name, variant, annotations={
                **display, "opendatahub.io/apiProtocol": "REST",
                "opendatahub.io/recommended-accelerators": f'["{settings.gpu_resource}"]'},
                labels={"opendatahub.io/dashboard": "true"}),
            "spec": {
                "annotations": {"opendatahub.io/kserve-runtime": "vllm",
                                "prometheus.io/port": str(RUNTIME_PORT),
                                "prometheus.io/path": "/metrics"},
                "multiModel": False,
                "supportedModelFormats": [{"name": "vLLM", "autoSelect": True}],
                "containers": [_container(settings, "kserve-container", args, timeout,
                                          llmisvc=False)],
            },
        }
        labels = {"networking.kserve.io/visibility": "exposed"} if settings.expose else {}
        isvc = {
            "apiVersion": f"{API_GROUP}/v1beta1", "kind": "InferenceService",
            # RawDeployment: OpenShift AI 2.x's name for what 3.x calls Standard (an alias there)
            "metadata": _metadata(settings, name, variant, annotations={
                **display, "serving.kserve.io/deploymentMode": "RawDeployment"},
                labels=labels),
            "spec": {"predictor": {
                "minReplicas": 1, "maxReplicas": 1, **_pod_placement(settings),
                "model": {"modelFormat": {"name": "vLLM"}, "runtime": name,
                          "storageUri": modelcar,
                          "resources": k8s.resources(cpu=settings.cpu, memory=settings.memory,
                                                     gpus=settings.gpus,
                                                     gpu_resource=settings.gpu_resource)},
            }},
        }
        objects = [runtime, isvc]
        kind, api_version = "InferenceService", f"{API_GROUP}/v1beta1"
    else:
        spec: dict[str, Any] = {
            "model": {"uri": modelcar, "name": served_name},
            "replicas": 1,
            "template": {"containers": [_container(settings, "main", args, timeout,
                                                   llmisvc=True)],
                         **_pod_placement(settings)},
        }
        if settings.router is not None:
            spec["router"] = dict(settings.router)
        api_version = f"{API_GROUP}/{settings.llmisvc_version}"
        objects = [{"apiVersion": api_version, "kind": "LLMInferenceService",
                    "metadata": _metadata(settings, name, variant, annotations=display),
                    "spec": spec}]
        kind = "LLMInferenceService"
    return {"name": name, "kind": kind, "api_version": api_version, "objects": objects,
            "startup_timeout_s": timeout, "vllm_args": args}


def render_secrets(namespace: str, *, pull_secret: str = "", registry: str = "",
                   username: str = "", password: str = "", hf_token_secret: str = "",
                   hf_token: str = "") -> list[dict[str, Any]]:
    """The registry pull secret and the HF token Secret, from values the play keeps no_log."""
    import base64
    import json

    out: list[dict[str, Any]] = []
    if pull_secret and username and password:
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        config = {"auths": {registry: {"auth": auth}}}
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                    "metadata": {"name": pull_secret, "namespace": namespace,
                                 "labels": k8s.labels("serving")},
                    "stringData": {".dockerconfigjson": json.dumps(config)}})
    if hf_token_secret and hf_token:
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": hf_token_secret, "namespace": namespace,
                                 "labels": k8s.labels("serving")},
                    "stringData": {HF_TOKEN_KEY: hf_token}})
    return out


# ----------------------------------------------------------------- what the cluster says


def service_state(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """Readiness and URLs of an InferenceService or LLMInferenceService from its status.

    ``url`` is the public one when the service is exposed, else the in-cluster one;
    ``internal_url`` is always the in-cluster address (``status.address.url`` of an ISVC, the
    first of ``status.addresses`` of an LLMISVC).
    """
    if not obj:
        return {"exists": False, "ready": False, "url": None, "internal_url": None,
                "reason": "not created yet", "message": ""}
    status = obj.get("status") or {}
    cond = k8s.condition(dict(obj), "Ready") or {}
    internal = (status.get("address") or {}).get("url")
    if not internal:
        addresses = [a.get("url") for a in status.get("addresses") or [] if a.get("url")]
        internal = addresses[0] if addresses else None
    external = _base_url(status.get("url"))
    return {"exists": True, "ready": str(cond.get("status")) == "True",
            "url": external or _base_url(internal), "internal_url": _base_url(internal),
            "reason": cond.get("reason") or ("no Ready condition yet" if not cond else ""),
            "message": cond.get("message") or ""}


def route_url(route: Mapping[str, Any] | None) -> str | None:
    """The URL of an OpenShift Route (https when it terminates TLS), None without a host."""
    spec = (route or {}).get("spec") or {}
    host = spec.get("host") or next((i.get("host") for i in ((route or {}).get("status") or {})
                                     .get("ingress") or [] if i.get("host")), None)
    if not host:
        return None
    return f"{'https' if spec.get('tls') else 'http'}://{host}"


def endpoint(service: Mapping[str, Any] | None, routes: Sequence[Mapping[str, Any]] = ()
             ) -> str | None:
    """Where the validate stage reaches a variant: its Route when it has one (OpenShift AI
    exposes an InferenceService through a Route of its own), else the service's URL."""
    for route in routes:
        url = route_url(route)
        if url:
            return url
    return service_state(service)["url"]


def _base_url(url: str | None) -> str | None:
    """``scheme://host[:port]`` of a status URL (older KServe put a predict path after it):
    the OpenAI API lives at the server's root."""
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def pod_summary(pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per pod: phase, restarts, and why each container is not running (for the run dir)."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        containers = []
        for cs in (status.get("initContainerStatuses") or []) + \
                (status.get("containerStatuses") or []):
            state = cs.get("state") or {}
            last = (cs.get("lastState") or {}).get("terminated") or {}
            containers.append({
                "name": cs.get("name"), "ready": bool(cs.get("ready")),
                "restarts": int(cs.get("restartCount") or 0),
                "waiting": (state.get("waiting") or {}).get("reason"),
                "waiting_message": (state.get("waiting") or {}).get("message"),
                "last_exit": last.get("exitCode"), "last_reason": last.get("reason")})
        out.append({"name": (pod.get("metadata") or {}).get("name"),
                    "phase": status.get("phase"), "containers": containers,
                    "restarts": sum(c["restarts"] for c in containers)})
    return out


def fatal_reason(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """A container state that waiting cannot cure; restarts on the way are tolerated."""
    for pod in pod_summary(pods):
        for c in pod["containers"]:
            if c["waiting"] in FATAL_WAITING:
                return (f"pod {pod['name']} container {c['name']}: {c['waiting']}"
                        + (f" ({c['waiting_message']})" if c["waiting_message"] else ""))
    return None


# ---------------------------------------------------------------------------------- CLI


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def inventory_vars(inventory: Path) -> dict[str, Any]:
    """The inventory's ``group_vars/all`` (``all.yml`` or ``all/*.yml``, in name order).

    Values still holding Jinja (vault references, lookups) are kept as the text they are;
    rendering reads none of them except to know that a secret is set (its Secret is then
    referenced by name: secret values never reach the manifests).
    """
    import yaml

    root = Path(inventory) / "group_vars"
    files = sorted(root.glob("all.y*ml")) + sorted((root / "all").glob("*.y*ml"))
    if not files:
        raise ModelGateError(f"{inventory} has no group_vars/all", field="--inventory",
                             fix="give an inventory directory such as inventories/openshift")
    out: dict[str, Any] = {}
    for path in files:
        out.update(yaml.safe_load(path.read_text()) or {})
    return out


def render_inventory(inventory: Path, *, model: Path | None = None, run: Path | None = None,
                     modelcars: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every variant's serving objects for an inventory, as its deploy stage would apply them.

    The modelcars come from ``modelcars`` (variant -> ref), else from the run's records (the
    pushed image by digest, or the tag its modelcar Job will push); the model's config.json
    from ``model``, else the run's source model. A run's own model, variants and serving
    settings (what it was run with, extra vars included) win over the inventory's.
    """
    from modelgate.rundir import RunDir

    inv = {k: v for k, v in inventory_vars(inventory).items() if not _templated(v)}
    hf_token_set = bool(inventory_vars(inventory).get("modelgate_hf_token"))
    records: dict[str, Any] = {}
    if run is not None:
        opened = RunDir.existing(Path(run).resolve())
        records = opened.records()
        manifest = opened.manifest()
        inputs = manifest.get("inputs") or {}
        for key, value in (("modelgate_model", inputs.get("model")),
                           ("modelgate_serving", inputs.get("serving")),
                           ("modelgate_variants", manifest.get("variants"))):
            if value:
                inv[key] = value
        if model is None:
            source = inputs.get("source_model") or {}
            model = Path(source["path"]) if source.get("path") else None
    if model is None:
        raise ModelGateError("no model to derive the serving arguments from", field="--model",
                             fix="give --model DIR (with config.json) or --run RUN")
    name = str((inv.get("modelgate_model") or {}).get("name") or Path(model).name)
    serving = inv.get("modelgate_serving") or {}
    settings = KServeSettings(
        namespace=str(inv.get("modelgate_namespace") or "modelgate"),
        image=str(inv.get("serve_kserve_image") or ""),
        shape=str(inv.get("serve_kserve_shape") or "inferenceservice"),
        gpus=int(inv.get("serve_kserve_gpus") or 1), cpu=str(inv.get("serve_kserve_cpu") or "4"),
        memory=str(inv.get("serve_kserve_memory") or "32Gi"),
        tolerations=inv.get("modelgate_gpu_tolerations") or (),
        node_selector=inv.get("serve_kserve_node_selector") or {},
        pull_secret=str(inv.get("serve_kserve_pull_secret") or "modelgate-registry"),
        hf_token_secret=str(inv.get("serve_kserve_hf_token_secret") or "modelgate-hf-token")
        if hf_token_set else "",
        expose=bool(inv.get("serve_kserve_expose")), router=inv.get("serve_kserve_router"))
    objects: list[dict[str, Any]] = []
    for variant in inv.get("modelgate_variants") or []:
        vname = str(variant["name"])
        rec = records.get(vname) or {}
        ref = (modelcars or {}).get(vname) or (rec.get("modelcar") or {}).get("ref_by_digest") \
            or (rec.get("modelcar-job") or {}).get("ref")
        if not ref:
            raise ModelGateError(f"no modelcar for variant {vname}", field="--modelcar",
                                 fix=f"pass --run (a run of this inventory) or --modelcar "
                                     f"{vname}=REGISTRY/REPO@sha256:DIGEST")
        overrides = {"max-model-len": serving.get("max_model_len"),
                     **(serving.get("overrides") or {}),
                     **(variant.get("serving_overrides") or {})}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if settings.gpus > 1:
            overrides.setdefault("tensor-parallel-size", settings.gpus)
        args = derive_serving_args(Path(model), overrides=overrides, served_model_name=name,
                                   gpu_memory_gib=inv.get("serve_kserve_gpu_memory_gib"))
        objects += render_variant(settings, model=name, variant=vname, modelcar=ref,
                                  serving_args=args, served_name=name,
                                  by_tag="@sha256:" not in ref)["objects"]
    return objects


def _cmd_render(ns: argparse.Namespace) -> int:
    import yaml

    modelcars = {}
    for item in ns.modelcar or []:
        variant, sep, ref = item.partition("=")
        if not sep or not ref:
            raise ModelGateError(f"--modelcar {item!r} is not VARIANT=REF", field="--modelcar",
                                 fix="use --modelcar w4a16=REGISTRY/REPO@sha256:DIGEST")
        modelcars[variant] = ref
    objects = render_inventory(Path(ns.inventory), model=Path(ns.model) if ns.model else None,
                               run=Path(ns.run) if ns.run else None, modelcars=modelcars)
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``modelgate kserve render``."""
    p = subparsers.add_parser("kserve", help="KServe manifests")
    sub = p.add_subparsers(dest="kserve_cmd", required=True)
    r = sub.add_parser("render", help="print, as YAML, the serving manifests of an inventory's "
                                      "variants (what its deploy stage applies)")
    r.add_argument("--inventory", required=True, help="e.g. inventories/openshift")
    r.add_argument("--run", help="a run of that inventory (its modelcars and source model)")
    r.add_argument("--model", help="a directory with the model's config.json")
    r.add_argument("--modelcar", action="append", help="VARIANT=REF (repeat per variant)")
    r.set_defaults(func=_cmd_render)
