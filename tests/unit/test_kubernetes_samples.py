"""What the roles' waits read, on objects published from real clusters and KServe's docs.

The samples and where each comes from: tests/data/kubernetes/README.md. The same functions
back the collection's filters (plugins/filter/kubernetes_state.py), which the waits call in
their ``until``; the last test resolves each filter through Ansible itself.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import ansible_expression
from modelgate import kserve, openshift

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "kubernetes"


def _sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


def test_a_ready_inferenceservice_and_its_urls():
    state = kserve.service_state(_sample("inferenceservice_ready.yaml"))
    assert state["exists"] and state["ready"]
    # status.url is the external one; the in-cluster address had a predict path in that
    # KServe release: the OpenAI API is at the server's root, so the path is dropped
    assert state["url"] == "http://flower-sample.kserve-test.example.com"
    assert state["internal_url"] == "http://flower-sample.kserve-test.svc.cluster.local"


def test_a_ready_llminferenceservice_and_its_addresses():
    state = kserve.service_state(_sample("llminferenceservice_ready.yaml"))
    assert state["ready"] and state["url"] == "https://my-llm.example.com"
    assert state["internal_url"].startswith(("http://", "https://"))


def test_a_not_ready_service_says_why():
    obj = _sample("llminferenceservice_ready.yaml")
    for cond in obj["status"]["conditions"]:
        if cond["type"] == "Ready":
            cond.update(status="False", reason="WaitingForGateway", message="no Gateway yet")
    state = kserve.service_state(obj)
    assert not state["ready"] and state["reason"] == "WaitingForGateway"


def test_a_subscription_with_healthy_catalogs_and_its_csv():
    state = openshift.subscription_state(_sample("subscription.yaml"))
    assert state == {"healthy": True, "csv": "strimzi-cluster-operator.v0.18.0", "reason": ""}


def test_a_packagemanifest_gives_its_default_channel_and_catalog():
    assert openshift.package_defaults(_sample("packagemanifest.yaml")) == {
        "channel": "fast", "source": "redhat-operators",
        "source_namespace": "openshift-marketplace"}


def test_a_crashlooping_pod_is_summarised_and_tolerated():
    pod = _sample("pod_crashloop.yaml")
    (summary,) = kserve.pod_summary([pod])
    init = next(c for c in summary["containers"] if c["waiting"] == "CrashLoopBackOff")
    assert init["restarts"] == 7527 and init["last_exit"] == 1 and init["last_reason"] == "Error"
    assert summary["phase"] == "Pending"
    # restarting is what a modelcar race looks like on the way to Ready: not fatal
    assert kserve.fatal_reason([pod]) is None


def test_the_odh_kserve_component_reports_ready_as_the_dsc_does():
    component = _sample("kserve_component_ready.yaml")
    assert openshift.dsc_ready(component)


def test_the_filters_resolve_in_ansible(tmp_path: Path):
    msg = ansible_expression(
        "{"
        "'isvc': lookup('file', d ~ '/inferenceservice_ready.yaml') | from_yaml"
        " | modelgate.pipeline.kserve_service_state,"
        "'sub': lookup('file', d ~ '/subscription.yaml') | from_yaml"
        " | modelgate.pipeline.olm_subscription_state,"
        "'pods': [lookup('file', d ~ '/pod_crashloop.yaml') | from_yaml]"
        " | modelgate.pipeline.kserve_pod_summary | map(attribute='restarts') | list,"
        "'ready': lookup('file', d ~ '/kserve_component_ready.yaml') | from_yaml"
        " | modelgate.pipeline.dsc_ready,"
        "'csv': none | modelgate.pipeline.olm_csv_phase,"
        "'nodes': [] | modelgate.pipeline.gpu_nodes,"
        "'ds': none | modelgate.pipeline.daemonset_ready,"
        "'policy': {'status': {'state': 'ready'}} | modelgate.pipeline.cluster_policy_ready,"
        "'endpoint': lookup('file', d ~ '/inferenceservice_ready.yaml') | from_yaml"
        " | modelgate.pipeline.kserve_endpoint([{'spec': {'host': 'r.apps.example.com'}}])"
        "}", tmp_path, d=str(SAMPLES))
    assert msg["isvc"]["ready"] is True and msg["sub"]["healthy"] is True
    assert msg["pods"] == [7527] and msg["ready"] is True
    assert msg["csv"] == "Pending" and msg["nodes"] == [] and msg["ds"] is False
    assert msg["policy"] is True and msg["endpoint"] == "http://r.apps.example.com"


def test_the_endpoint_is_the_route_when_there_is_one():
    isvc = _sample("inferenceservice_ready.yaml")
    route = {"apiVersion": "route.openshift.io/v1", "kind": "Route",
             "spec": {"host": "nemotron-w4a16-modelgate.apps.example.com",
                      "tls": {"termination": "edge"}}}
    assert kserve.endpoint(isvc, [route]) == "https://nemotron-w4a16-modelgate.apps.example.com"
    plain = {"spec": {}, "status": {"ingress": [{"host": "x.apps.example.com"}]}}
    assert kserve.route_url(plain) == "http://x.apps.example.com"
    assert kserve.endpoint(isvc) == "http://flower-sample.kserve-test.example.com"
