"""Filters that read what a cluster says: the roles' waits use them in their ``until``.

Thin wrappers over ``modelgate.kserve`` and ``modelgate.openshift``, where the logic and its
tests (on published objects) live. They run on the controller, which talks to the cluster.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from modelgate import kserve, openshift
except ImportError as exc:  # the controller virtualenv has the package (make bootstrap)
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def _need() -> None:
    if _IMPORT_ERROR is not None:
        raise AnsibleFilterError(f"the modelgate package is not importable: {_IMPORT_ERROR}")


def kserve_service_state(obj: Any) -> dict[str, Any]:
    """Readiness and URLs of an InferenceService or LLMInferenceService (or None)."""
    _need()
    return kserve.service_state(obj or None)


def kserve_endpoint(service: Any, routes: Any = ()) -> str | None:
    """A variant's endpoint: its Route's URL when it has one, else the service's URL."""
    _need()
    return kserve.endpoint(service or None, list(routes or []))


def kserve_pod_summary(pods: Any) -> list[dict[str, Any]]:
    """Per pod: phase, restarts, why each container is not running."""
    _need()
    return kserve.pod_summary(list(pods or []))


def olm_subscription_state(sub: Any) -> dict[str, Any]:
    """Whether a Subscription's catalog is healthy, and its installed CSV."""
    _need()
    return openshift.subscription_state(sub or None)


def olm_csv_phase(csv: Any) -> str:
    """A ClusterServiceVersion's phase."""
    _need()
    return openshift.csv_state(csv or None)


def gpu_nodes(nodes: Any) -> list[dict[str, Any]]:
    """The nodes NFD labelled as NVIDIA GPU nodes, with their allocatable GPUs."""
    _need()
    return openshift.gpu_nodes(list(nodes or []))


def daemonset_ready(ds: Any) -> bool:
    """Whether every node a DaemonSet is scheduled on runs a ready pod."""
    _need()
    return openshift.daemonset_ready(ds or None)


def cluster_policy_ready(policy: Any) -> bool:
    """Whether the ClusterPolicy's state is ready."""
    _need()
    return openshift.cluster_policy_ready(policy or None)


def dsc_ready(obj: Any, component: str | None = None) -> bool:
    """Whether a DSCInitialization / DataScienceCluster (and a component of it) is Ready."""
    _need()
    return openshift.dsc_ready(obj or None, component)


class FilterModule:
    """The collection's cluster-state filters."""

    def filters(self) -> dict[str, Any]:
        """Name -> function."""
        return {f.__name__: f for f in (kserve_service_state, kserve_endpoint, kserve_pod_summary,
                                        olm_subscription_state, olm_csv_phase, gpu_nodes,
                                        daemonset_ready, cluster_policy_ready, dsc_ready)}
