"""The OpenShift AI cluster preparation: its objects against the operators' schemas, its waits.

NodeFeatureDiscovery, ClusterPolicy, Subscription and OperatorGroup are validated against the
operators' own CRDs (../shared/schemas/openshift/), DSCInitialization and DataScienceCluster
against tests/data/schemas/opendatahub_v2.yaml (from the operator's Go types), Namespaces with
kubernetes-validate; all strict.
"""

from __future__ import annotations

import copy

import jsonschema
import pytest
from k8s_schemas import validate_all, validate_object
from modelgate import openshift
from modelgate.errors import ModelGateError


def _steps(**kw):
    return openshift.cluster_objects(namespace="modelgate", ops=openshift.operators(), **kw)


def test_every_step_validates_against_the_operators_schemas():
    steps = _steps()
    assert list(steps) == ["operators", "nfd", "gpu", "rhoai", "project"]
    counts = validate_all([obj for objs in steps.values() for obj in objs])
    assert counts == {"Namespace": 4, "OperatorGroup": 3, "Subscription": 3,
                      "NodeFeatureDiscovery": 1, "ClusterPolicy": 1,
                      "DSCInitialization": 1, "DataScienceCluster": 1}


def test_default_channels_and_sources():
    by_key = {op.key: op for op in openshift.operators()}
    assert (by_key["nfd"].package, by_key["nfd"].channel, by_key["nfd"].source) == \
        ("nfd", "stable", "redhat-operators")
    assert (by_key["gpu"].package, by_key["gpu"].source) == \
        ("gpu-operator-certified", "certified-operators")
    assert by_key["rhoai"].package == "rhods-operator"
    assert by_key["rhoai"].channel.startswith("stable") and "3" in by_key["rhoai"].channel
    # the OpenShift AI operator watches every namespace: its OperatorGroup has no targets
    groups = {o["metadata"]["namespace"]: o for o in _steps()["operators"]
              if o["kind"] == "OperatorGroup"}
    assert groups["redhat-ods-operator"]["spec"] == {}
    assert groups["nvidia-gpu-operator"]["spec"] == {"targetNamespaces": ["nvidia-gpu-operator"]}


def test_overrides_and_their_errors():
    ops = openshift.operators({"gpu": {"channel": "v25.10"}})
    assert next(o for o in ops if o.key == "gpu").channel == "v25.10"
    with pytest.raises(ModelGateError) as exc:
        openshift.operators({"kmm": {}})
    assert exc.value.field == "openshift_cluster_operators"
    with pytest.raises(ModelGateError) as exc:
        openshift.operators({"gpu": {"chanel": "v25.10"}})
    assert exc.value.field == "openshift_cluster_operators.gpu"
    (nfd,) = [o for o in openshift.operators({"nfd": {"channel": ""}}) if o.key == "nfd"]
    with pytest.raises(ModelGateError, match="no channel"):
        openshift.operator_objects(nfd)


def test_a_packagemanifest_gives_the_default_channel():
    manifest = {"metadata": {"name": "nfd"},
                "status": {"defaultChannel": "stable", "catalogSource": "redhat-operators",
                           "catalogSourceNamespace": "openshift-marketplace"}}
    assert openshift.package_defaults(manifest) == {
        "channel": "stable", "source": "redhat-operators",
        "source_namespace": "openshift-marketplace"}
    with pytest.raises(ModelGateError, match="no default channel"):
        openshift.package_defaults({"metadata": {"name": "nfd"}, "status": {}})


def test_kserve_stays_managed_and_states_are_checked():
    dsc = _steps(components={"workbenches": "Removed"})["rhoai"][1]
    assert dsc["spec"]["components"]["kserve"] == {"managementState": "Managed"}
    assert dsc["spec"]["components"]["workbenches"] == {"managementState": "Removed"}
    with pytest.raises(ModelGateError) as exc:
        openshift.data_science_cluster({"kserve": "Removed"})
    assert exc.value.field == "openshift_cluster_components.kserve"
    with pytest.raises(ModelGateError):
        openshift.data_science_cluster({"dashboard": "Unmanaged"})
    # a component the operator does not know fails the (Go types') schema
    bad = copy.deepcopy(dsc)
    bad["spec"]["components"]["modelmeshserving"] = {"managementState": "Managed"}
    with pytest.raises(jsonschema.ValidationError):
        validate_object(bad)


def test_cluster_policy_runs_the_driver_unless_the_nodes_have_one():
    with_driver = openshift.cluster_policy()
    assert with_driver["metadata"]["name"] == openshift.CLUSTER_POLICY_NAME
    assert with_driver["spec"]["driver"]["enabled"] is True
    assert with_driver["spec"]["operator"]["defaultRuntime"] == "crio"
    without = openshift.cluster_policy(driver=False)
    assert without["spec"]["driver"]["enabled"] is False
    validate_object(without)


def test_subscription_and_csv_states():
    assert openshift.subscription_state(None)["healthy"] is False
    sub = {"status": {"installedCSV": "nfd.v4.20.0", "conditions": [
        {"type": "CatalogSourcesUnhealthy", "status": "False",
         "reason": "AllCatalogSourcesHealthy"}]}}
    assert openshift.subscription_state(sub) == {"healthy": True, "csv": "nfd.v4.20.0",
                                                 "reason": ""}
    unhealthy = {"status": {"conditions": [
        {"type": "CatalogSourcesUnhealthy", "status": "True", "message": "catalog down"}]}}
    assert openshift.subscription_state(unhealthy)["reason"] == "catalog down"
    assert openshift.csv_state({"status": {"phase": "Succeeded"}}) == "Succeeded"
    assert openshift.csv_state(None) == "Pending"


def test_gpu_nodes_policy_and_dsc_readiness():
    nodes = [
        {"metadata": {"name": "gpu-1", "labels": {
            openshift.GPU_NODE_LABEL: "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
         "status": {"allocatable": {"nvidia.com/gpu": "8"}}},
        {"metadata": {"name": "cpu-1", "labels": {}}, "status": {"allocatable": {}}},
    ]
    assert openshift.gpu_nodes(nodes) == [
        {"name": "gpu-1", "gpus": 8, "product": "NVIDIA-H100-80GB-HBM3"}]
    assert openshift.cluster_policy_ready({"status": {"state": "ready"}})
    assert not openshift.cluster_policy_ready({"status": {"state": "notReady"}})
    dsc = {"status": {"phase": "Ready", "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "KserveReady", "status": "False"}]}}
    assert openshift.dsc_ready(dsc)
    assert not openshift.dsc_ready(dsc, "Kserve")
