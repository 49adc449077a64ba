"""What every Kubernetes object ModelGate renders shares: names, labels, pod security.

The quantize Job, the modelcar Job, the cluster preparation and the KServe resources all take
their names, labels and container security context from here, so a cluster sees one
convention (``app.kubernetes.io/managed-by: modelgate``) and one SCC-compatible pod shape.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# Names that end up in pod labels (and Service names) must stay within 63 characters.
NAME_MAX = 63
MANAGED_BY = "modelgate"
_NOT_DNS1123 = re.compile(r"[^a-z0-9-]+")

# What OpenShift's restricted-v2 SCC admits (and the Pod Security "restricted" profile).
RESTRICTED_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def dns_label(text: str, limit: int = NAME_MAX) -> str:
    """``text`` as a DNS-1123 label of at most ``limit`` characters.

    A name too long for the limit keeps its start and gets a short hash of the whole, so two
    long names that share a prefix stay apart.
    """
    clean = _NOT_DNS1123.sub("-", text.lower()).strip("-") or "x"
    if len(clean) <= limit:
        return clean
    suffix = "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return clean[:limit - len(suffix)].rstrip("-") + suffix


def label_value(text: str) -> str:
    """A label value (at most 63 characters of ``[a-z0-9-]``, never empty)."""
    return _NOT_DNS1123.sub("-", text.lower()).strip("-")[:NAME_MAX].rstrip("-") or "x"


def labels(component: str, **extra: str) -> dict[str, str]:
    """The labels of every object of one component (``quantize``, ``serving``, ...)."""
    out = {"app.kubernetes.io/name": "modelgate", "app.kubernetes.io/component": component,
           "app.kubernetes.io/managed-by": MANAGED_BY}
    out.update({f"modelgate.io/{k}": label_value(v) for k, v in extra.items()})
    return out


def restricted_security_context() -> dict[str, Any]:
    """A fresh copy of :data:`RESTRICTED_SECURITY_CONTEXT` (callers may extend it)."""
    return {k: (dict(v) if isinstance(v, dict) else v)
            for k, v in RESTRICTED_SECURITY_CONTEXT.items()}


def resources(*, cpu: str | None = None, memory: str | None = None, gpus: int = 0,
              gpu_resource: str = "nvidia.com/gpu") -> dict[str, dict[str, Any]]:
    """Requests and limits; an extended resource (GPUs) must request what it limits."""
    req: dict[str, Any] = {}
    lim: dict[str, Any] = {}
    if cpu:
        req["cpu"] = cpu
    if memory:
        req["memory"] = memory
        lim["memory"] = memory
    if gpus:
        req[gpu_resource] = gpus
        lim[gpu_resource] = gpus
    out: dict[str, dict[str, Any]] = {}
    if req:
        out["requests"] = req
    if lim:
        out["limits"] = lim
    return out


def pod_placement(*, tolerations: Any = (), node_selector: Any = None,
                  service_account: str = "", pull_secret: str = "") -> dict[str, Any]:
    """The pod spec keys that place a pod (only those given): tolerations, node selector,
    service account, image pull secret."""
    out: dict[str, Any] = {}
    if tolerations:
        out["tolerations"] = [dict(t) for t in tolerations]
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if service_account:
        out["serviceAccountName"] = service_account
    if pull_secret:
        out["imagePullSecrets"] = [{"name": pull_secret}]
    return out


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The status condition of type ``kind`` of an object, if it has one."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def condition_true(obj: dict[str, Any] | None, kind: str) -> bool:
    """Whether condition ``kind`` is ``True``."""
    cond = condition(obj, kind)
    return bool(cond and str(cond.get("status")) == "True")
