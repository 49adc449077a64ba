"""OpenShift AI cluster preparation: the operators and custom resources, and their readiness.

The role ``openshift_cluster`` applies what ``cluster_objects`` renders, in order, and waits for
each step as the operators report it:

1. the project namespace and (from no_log values) the registry pull secret;
2. per operator: its namespace, an ``OperatorGroup`` and a ``Subscription``; the Subscription's
   ``CatalogSourcesUnhealthy`` condition is ``False`` and its installed CSV reaches
   ``Succeeded`` (``subscription_state``/``csv_state``), then its CRDs exist;
3. the operators' custom resources: ``NodeFeatureDiscovery`` (then the ``nfd-worker`` DaemonSet
   is ready and the GPU nodes carry ``feature.node.kubernetes.io/pci-10de.present=true``),
   ``ClusterPolicy`` (``status.state == ready`` and allocatable ``nvidia.com/gpu``),
   ``DSCInitialization`` and ``DataScienceCluster`` with KServe managed (both ``Ready``, and the
   DSC's KServe condition ``True``).

Channels and catalog sources are inputs; an empty channel takes the package's default channel
from its ``PackageManifest`` (``package_defaults``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelgate import k8s
from modelgate.errors import ModelGateError

GPU_NODE_LABEL = "feature.node.kubernetes.io/pci-10de.present"
GPU_RESOURCE = "nvidia.com/gpu"
NFD_WORKER_DAEMONSET = "nfd-worker"
CLUSTER_POLICY_NAME = "gpu-cluster-policy"
DSCI_API = "dscinitialization.opendatahub.io/v2"
DSC_API = "datasciencecluster.opendatahub.io/v2"
MANAGEMENT_STATES = ("Managed", "Removed")


@dataclass(frozen=True)
class Operator:
    """One OLM operator: its package, where it is installed, and from which catalog."""

    key: str            # nfd | gpu | rhoai
    package: str
    namespace: str
    channel: str = ""   # empty: the PackageManifest's default channel
    source: str = "redhat-operators"
    source_namespace: str = "openshift-marketplace"
    all_namespaces: bool = False  # an OperatorGroup without targetNamespaces

    @property
    def subscription_name(self) -> str:
        """The Subscription's name: the package's."""
        return self.package


DEFAULT_OPERATORS: dict[str, dict[str, Any]] = {
    "nfd": {"package": "nfd", "namespace": "openshift-nfd", "channel": "stable",
            "source": "redhat-operators"},
    "gpu": {"package": "gpu-operator-certified", "namespace": "nvidia-gpu-operator",
            "channel": "v26.3", "source": "certified-operators"},
    "rhoai": {"package": "rhods-operator", "namespace": "redhat-ods-operator",
              "channel": "stable-3.x", "source": "redhat-operators", "all_namespaces": True},
}


def operators(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[Operator]:
    """The three operators, each default updated with the user's keys for it."""
    over = dict(overrides or {})
    unknown = sorted(set(over) - set(DEFAULT_OPERATORS))
    if unknown:
        raise ModelGateError(f"unknown operator key(s) {unknown}",
                             field="openshift_cluster_operators",
                             fix=f"use only {sorted(DEFAULT_OPERATORS)}")
    out = []
    for key, base in DEFAULT_OPERATORS.items():
        merged = {**base, **{k: v for k, v in dict(over.get(key) or {}).items()
                             if v is not None}}
        allowed = set(Operator.__dataclass_fields__) - {"key"}
        bad = sorted(set(merged) - allowed)
        if bad:
            raise ModelGateError(f"operator {key}: unknown setting(s) {bad}",
                                 field=f"openshift_cluster_operators.{key}",
                                 fix=f"use only {sorted(allowed)}")
        out.append(Operator(key=key, **merged))
    return out


def package_defaults(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """The default channel and catalog of a ``PackageManifest`` (packages.operators.coreos.com)."""
    status = (manifest or {}).get("status") or {}
    channel = status.get("defaultChannel") or ""
    if not channel:
        raise ModelGateError(
            f"package {((manifest or {}).get('metadata') or {}).get('name')!r} has no default "
            "channel in its PackageManifest", field="openshift_cluster_operators",
            fix="give the operator's channel explicitly")
    return {"channel": channel, "source": status.get("catalogSource") or "",
            "source_namespace": status.get("catalogSourceNamespace") or ""}


def operator_objects(op: Operator) -> list[dict[str, Any]]:
    """Namespace, OperatorGroup and Subscription of one operator."""
    if not op.channel:
        raise ModelGateError(f"operator {op.key} has no channel", field=f"{op.key}.channel",
                             fix="read it from the PackageManifest (package_defaults) first")
    labels = k8s.labels("cluster", operator=op.key)
    group_spec: dict[str, Any] = {} if op.all_namespaces else {"targetNamespaces": [op.namespace]}
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": op.namespace,
                      "labels": {**labels, "openshift.io/cluster-monitoring": "true"}}},
        {"apiVersion": "operators.coreos.com/v1", "kind": "OperatorGroup",
         "metadata": {"name": op.package, "namespace": op.namespace, "labels": labels},
         "spec": group_spec},
        {"apiVersion": "operators.coreos.com/v1alpha1", "kind": "Subscription",
         "metadata": {"name": op.subscription_name, "namespace": op.namespace,
                      "labels": labels},
         "spec": {"name": op.package, "channel": op.channel, "source": op.source,
                  "sourceNamespace": op.source_namespace, "installPlanApproval": "Automatic"}},
    ]


def node_feature_discovery(namespace: str) -> dict[str, Any]:
    """The NFD instance: PCI vendor labels (10de is NVIDIA) on every worker."""
    return {"apiVersion": "nfd.openshift.io/v1", "kind": "NodeFeatureDiscovery",
            "metadata": {"name": "nfd-instance", "namespace": namespace,
                         "labels": k8s.labels("cluster", operator="nfd")},
            "spec": {"operand": {"servicePort": 12000},
                     "workerConfig": {"configData": (
                         "sources:\n  pci:\n    deviceClassWhitelist: [\"0200\", \"03\", "
                         "\"12\"]\n    deviceLabelFields: [vendor]\n")}}}


def cluster_policy(*, cdi: bool = True, driver: bool = True) -> dict[str, Any]:
    """The GPU operator's ClusterPolicy as NVIDIA documents it for OpenShift (CRI-O, DTK)."""
    on = {"enabled": True}
    return {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy",
            "metadata": {"name": CLUSTER_POLICY_NAME,
                         "labels": k8s.labels("cluster", operator="gpu")},
            "spec": {
                "operator": {"defaultRuntime": "crio", "use_ocp_driver_toolkit": True},
                "daemonsets": {"updateStrategy": "RollingUpdate"},
                # driver disabled: the nodes have a driver already (precompiled images, RHCOS)
                "driver": {"enabled": driver, "useNvidiaDriverCRD": False,
                           "kernelModuleType": "auto"},
                "toolkit": dict(on), "devicePlugin": dict(on), "dcgm": dict(on),
                "dcgmExporter": dict(on), "gfd": dict(on), "nodeStatusExporter": dict(on),
                "cdi": {"enabled": cdi},
                "validator": {"plugin": {"env": [{"name": "WITH_WORKLOAD", "value": "false"}]}},
            }}


def dsc_initialization(applications_namespace: str = "redhat-ods-applications"
                       ) -> dict[str, Any]:
    """DSCInitialization v2: the applications namespace and monitoring."""
    return {"apiVersion": DSCI_API, "kind": "DSCInitialization",
            "metadata": {"name": "default-dsci", "labels": k8s.labels("cluster", operator="rhoai")},
            "spec": {"applicationsNamespace": applications_namespace,
                     "monitoring": {"managementState": "Managed",
                                    "namespace": "redhat-ods-monitoring"}}}


def data_science_cluster(components: Mapping[str, str] | None = None) -> dict[str, Any]:
    """DataScienceCluster v2 with KServe managed (RawDeployment: 3.x has no Serverless)."""
    states = {"kserve": "Managed", "dashboard": "Managed"}
    states.update(dict(components or {}))
    bad = {k: v for k, v in states.items() if v not in MANAGEMENT_STATES}
    if bad:
        raise ModelGateError(f"component management states {bad} are not {MANAGEMENT_STATES}",
                             field="openshift_cluster_components", fix="use Managed or Removed")
    if states["kserve"] != "Managed":
        raise ModelGateError("KServe must be Managed: the kserve target serves through it",
                             field="openshift_cluster_components.kserve", fix="set Managed")
    return {"apiVersion": DSC_API, "kind": "DataScienceCluster",
            "metadata": {"name": "default-dsc", "labels": k8s.labels("cluster", operator="rhoai")},
            "spec": {"components": {k: {"managementState": v} for k, v in sorted(states.items())}}}


def project_namespace(name: str) -> dict[str, Any]:
    """The project the variants are served in (labelled for the OpenShift AI dashboard)."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {**k8s.labels("cluster"),
                                                  "opendatahub.io/dashboard": "true"}}}


# ------------------------------------------------------------------ what the cluster says


def subscription_state(sub: Mapping[str, Any] | None) -> dict[str, Any]:
    """Whether a Subscription's catalog is healthy, and the CSV it installed (if any)."""
    if not sub:
        return {"healthy": False, "csv": None, "reason": "no Subscription yet"}
    cond = k8s.condition(dict(sub), "CatalogSourcesUnhealthy")
    healthy = cond is not None and str(cond.get("status")) == "False"
    status = sub.get("status") or {}
    return {"healthy": healthy, "csv": status.get("installedCSV") or status.get("currentCSV"),
            "reason": "" if healthy else (cond or {}).get("message") or
            "CatalogSourcesUnhealthy is not False yet"}


def csv_state(csv: Mapping[str, Any] | None) -> str:
    """A ClusterServiceVersion's phase (``Succeeded`` when installed)."""
    return str(((csv or {}).get("status") or {}).get("phase") or "Pending")


def gpu_nodes(nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Nodes NFD labelled as having an NVIDIA PCI device, with their allocatable GPUs."""
    out = []
    for node in nodes:
        meta = node.get("metadata") or {}
        if (meta.get("labels") or {}).get(GPU_NODE_LABEL) != "true":
            continue
        alloc = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
        out.append({"name": meta.get("name"), "gpus": int(str(alloc) or 0),
                    "product": (meta.get("labels") or {}).get("nvidia.com/gpu.product")})
    return out


def daemonset_ready(ds: Mapping[str, Any] | None) -> bool:
    """Every node a DaemonSet is scheduled on runs a ready pod (and it is scheduled somewhere)."""
    status = (ds or {}).get("status") or {}
    desired = int(status.get("desiredNumberScheduled") or 0)
    return desired > 0 and int(status.get("numberReady") or 0) == desired \
        and int(status.get("updatedNumberScheduled", desired) or 0) == desired


def cluster_policy_ready(policy: Mapping[str, Any] | None) -> bool:
    """``ClusterPolicy.status.state == ready``."""
    return ((policy or {}).get("status") or {}).get("state") == "ready"


def dsc_ready(obj: Mapping[str, Any] | None, component: str | None = None) -> bool:
    """A DSCI/DSC is Ready (phase or condition); with ``component``, its condition too."""
    status = (obj or {}).get("status") or {}
    ready = status.get("phase") == "Ready" or k8s.condition_true(dict(obj or {}), "Ready")
    if component:
        ready = ready and k8s.condition_true(dict(obj or {}), f"{component}Ready")
    return ready


def cluster_objects(*, namespace: str, ops: Sequence[Operator],
                    components: Mapping[str, str] | None = None,
                    applications_namespace: str = "redhat-ods-applications",
                    gpu_driver: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Every object of the cluster preparation, by step (each step waits for the one before)."""
    by_key = {op.key: op for op in ops}
    return {
        "operators": [obj for op in ops for obj in operator_objects(op)],
        "nfd": [node_feature_discovery(by_key["nfd"].namespace)],
        "gpu": [cluster_policy(driver=gpu_driver)],
        "rhoai": [dsc_initialization(applications_namespace), data_science_cluster(components)],
        "project": [project_namespace(namespace)],
    }
