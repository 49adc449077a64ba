"""The KServe target's manifests, validated against KServe's own CRDs, and its status logic.

Every rendered object goes through ``k8s_schemas.validate_all``: the InferenceService,
ServingRuntime and LLMInferenceService CRDs of kserve/kserve (../shared/schemas/kserve/, made
strict: an unknown field fails, as ``kubectl apply --validate=strict`` would), core kinds with
kubernetes-validate. The model is NVIDIA-Nemotron-Nano-9B-v2's published config.json.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import jsonschema
import pytest
from k8s_schemas import validate_all, validate_object
from modelgate import kserve
from modelgate.errors import ModelGateError
from modelgate.serving import derive_serving_args

NEMOTRON = Path(__file__).resolve().parents[1] / "data" / "nemotron_nano_9b_v2"
REF = "quay.example.com/acme/nemotron-nano-9b-v2@sha256:" + "a" * 64
IMAGE = "registry.redhat.io/rhaiis/vllm-cuda-rhel9@sha256:" + "b" * 64
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _args(**over):
    return derive_serving_args(NEMOTRON, overrides={"max-model-len": 16384, **over},
                               served_model_name="nemotron-nano-9b-v2")


def _render(shape="inferenceservice", *, gpus=1, router=None, expose=False, ref=REF,
            llmisvc_version="v1alpha1", **kw):
    settings = kserve.KServeSettings(
        namespace="modelgate", image=IMAGE, shape=shape, gpus=gpus, tolerations=TOLERATIONS,
        pull_secret="modelgate-registry", hf_token_secret="modelgate-hf-token",
        router=router, expose=expose, llmisvc_version=llmisvc_version)
    return kserve.render_variant(settings, model="nemotron-nano-9b-v2", variant="w4a16",
                                 modelcar=ref, serving_args=_args(),
                                 served_name="nemotron-nano-9b-v2", **kw)


@pytest.mark.parametrize("shape,router,version", [
    ("inferenceservice", None, "v1alpha1"),
    ("llminferenceservice", None, "v1alpha1"),
    ("llminferenceservice", None, "v1alpha2"),
    ("llminferenceservice", {"gateway": {}, "route": {}, "scheduler": {}}, "v1alpha1"),
    ("llminferenceservice", {"gateway": {}, "route": {}, "scheduler": {}}, "v1alpha2"),
])
def test_every_shape_validates_against_kserves_crds(shape, router, version):
    out = _render(shape, router=router, expose=shape == "inferenceservice",
                  llmisvc_version=version)
    counts = validate_all(out["objects"])
    expected = ({"ServingRuntime": 1, "InferenceService": 1} if shape == "inferenceservice"
                else {"LLMInferenceService": 1})
    assert counts == expected


def test_the_strict_schema_rejects_a_misspelt_field():
    isvc = copy.deepcopy(_render()["objects"][1])
    validate_object(isvc)
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop(
        "storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate_object(isvc)


def test_inferenceservice_serves_the_modelcar_by_digest_on_gpus():
    runtime, isvc = _render(gpus=2)["objects"]
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"oci://{REF}"
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == \
        "RawDeployment"
    res = predictor["model"]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 2
    assert predictor["tolerations"] == TOLERATIONS
    assert predictor["imagePullSecrets"] == [{"name": "modelgate-registry"}]
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    assert container["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    args = container["args"]
    assert args[:2] == ["--port=8080", "--model=/mnt/models"]
    # the same derivation as the other targets: a hybrid keeps its SSM state in float32
    assert args[args.index("--mamba-ssm-cache-dtype") + 1] == "float32"
    assert args[args.index("--served-model-name") + 1] == "nemotron-nano-9b-v2"
    assert args[args.index("--max-model-len") + 1] == "16384"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "modelgate-hf-token", "key": "HF_TOKEN"}}} in container["env"]


def test_the_startup_probe_waits_as_long_as_the_weights_need():
    small = _render(weight_bytes=1 << 30)
    large = _render(weight_bytes=60 << 30)

    def probe(out):
        return out["objects"][0]["spec"]["containers"][0]["startupProbe"]

    assert large["startup_timeout_s"] > small["startup_timeout_s"]
    assert probe(large)["failureThreshold"] * probe(large)["periodSeconds"] >= \
        large["startup_timeout_s"]
    assert probe(small)["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}


def test_llminferenceservice_uses_the_presets_command_port_and_tls():
    (llmisvc,) = _render("llminferenceservice")["objects"]
    assert llmisvc["apiVersion"] == "serving.kserve.io/v1alpha1"  # served wherever the kind is
    assert _render("llminferenceservice", llmisvc_version="v1alpha2")["objects"][0][
        "apiVersion"] == "serving.kserve.io/v1alpha2"
    assert llmisvc["spec"]["model"] == {"uri": f"oci://{REF}", "name": "nemotron-nano-9b-v2"}
    (main,) = llmisvc["spec"]["template"]["containers"]
    assert main["name"] == "main"  # the container the controller attaches the model to
    assert "command" not in main  # the preset's `vllm serve /mnt/models`
    assert main["args"][:2] == ["--port", "8000"] and "--ssl-certfile" in main["args"]
    assert main["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert "router" not in llmisvc["spec"]


def test_bad_input_names_the_field():
    with pytest.raises(ModelGateError) as exc:
        _render(ref="quay.example.com/acme/nemotron:latest")
    assert exc.value.field == "serve_kserve_modelcar_ref"
    with pytest.raises(ModelGateError) as exc:
        _render("inferenceservice", router={"scheduler": {}})
    assert exc.value.field == "serve_kserve_router"
    with pytest.raises(ModelGateError) as exc:
        kserve.KServeSettings(namespace="Model_Gate", image=IMAGE).validate()
    assert exc.value.field == "serve_kserve_namespace"
    with pytest.raises(ModelGateError) as exc:
        kserve.KServeSettings(namespace="modelgate", image=IMAGE, shape="knative").validate()
    assert exc.value.field == "serve_kserve_shape"


def test_a_tag_is_accepted_only_for_manifests_rendered_before_the_push():
    out = _render(ref="quay.example.com/acme/nemotron:w4a16-0123456789abcdef", by_tag=True)
    isvc = out["objects"][1]
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith(":w4a16-0123456789abcdef")
    assert "by tag" in isvc["metadata"]["annotations"]["modelgate.io/modelcar"]
    validate_all(out["objects"])


@pytest.mark.parametrize("model,variant", [
    ("nemotron-nano-9b-v2", "w4a16"), ("NVIDIA-Nemotron-Nano-9B-v2", "fp8_dynamic"),
    ("9b", "bf16"), ("a-very-long-model-name-that-goes-on-and-on", "w4a16-group-64")])
def test_resource_names_are_dns1035_and_short(model, variant):
    name = kserve.resource_name(model, variant)
    assert name[0].isalpha() and len(name) <= kserve.NAME_LIMIT
    assert name == name.lower() and "_" not in name
    assert kserve.resource_name(model, variant) == name  # stable across runs


def test_secrets_carry_the_values_only_in_their_own_objects():
    secrets = kserve.render_secrets(
        "modelgate", pull_secret="modelgate-registry", registry="quay.example.com",
        username="robot", password="s3cret", hf_token_secret="modelgate-hf-token",
        hf_token="hf_abc")
    assert validate_all(secrets) == {"Secret": 2}
    config = json.loads(secrets[0]["stringData"][".dockerconfigjson"])
    assert base64.b64decode(config["auths"]["quay.example.com"]["auth"]) == b"robot:s3cret"
    assert secrets[1]["stringData"] == {"HF_TOKEN": "hf_abc"}
    # the serving objects name the Secrets and never hold a value
    text = json.dumps(_render()["objects"])
    assert "s3cret" not in text and "hf_abc" not in text
    assert kserve.render_secrets("modelgate", pull_secret="x") == []


def test_service_state_before_creation_and_without_status():
    assert kserve.service_state(None)["exists"] is False
    state = kserve.service_state({"metadata": {"name": "x"}})
    assert state["exists"] and not state["ready"] and state["reason"] == "no Ready condition yet"


def test_fatal_reason_ignores_restarts_but_not_a_config_error():
    restarting = {"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "kserve-container", "ready": False, "restartCount": 3,
         "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}
    assert kserve.fatal_reason([restarting]) is None
    assert kserve.pod_summary([restarting])[0]["restarts"] == 3
    broken = copy.deepcopy(restarting)
    broken["status"]["containerStatuses"][0]["state"] = {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}}
    assert "CreateContainerConfigError" in kserve.fatal_reason([broken])


INVENTORY = Path(__file__).resolve().parents[2] / "inventories" / "openshift"


def test_render_prints_the_shipped_inventorys_manifests(capsys):
    from modelgate.cli import main

    refs = [f"--modelcar={v}=quay.example.com/acme/nemotron-nano-9b-v2@sha256:{c * 64}"
            for v, c in (("bf16", "1"), ("w4a16", "2"), ("fp8", "3"))]
    assert main(["kserve", "render", "--inventory", str(INVENTORY), "--model", str(NEMOTRON),
                 *refs]) == 0
    import yaml

    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert validate_all(objects) == {"ServingRuntime": 3, "InferenceService": 3}
    runtime = next(o for o in objects if o["kind"] == "ServingRuntime"
                   and o["metadata"]["name"].endswith("-w4a16"))
    args = runtime["spec"]["containers"][0]["args"]
    # the inventory's serving settings: 16384 tokens, 64 sequences, the float32 SSM state
    assert args[args.index("--max-model-len") + 1] == "16384"
    assert args[args.index("--max-num-seqs") + 1] == "64"
    assert args[args.index("--mamba-ssm-cache-dtype") + 1] == "float32"
    # the inventory sets an HF token (a vault variable): its Secret is named, its value never
    env = {e["name"]: e for e in runtime["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "modelgate-hf-token"


def test_render_without_modelcars_names_what_is_missing(capsys):
    from modelgate.cli import main

    assert main(["kserve", "render", "--inventory", str(INVENTORY), "--model",
                 str(NEMOTRON)]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["field"] == "--modelcar" and "--run" in err["fix"]
