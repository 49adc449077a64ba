"""The podman and Kubernetes runners of the quantize stage, rendered as data, and progress parsing.

The Kubernetes manifests are validated with kubernetes-validate against the schemas of a recent
Kubernetes release (strict: unknown fields fail), as `kubectl apply --dry-run` would check them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.quantize import quantization_key
from modelgate.quantize_runners import (
    CONTAINER_PACKAGE_ROOT,
    PACKAGE_ROOT,
    KubernetesRunner,
    PodmanRunner,
    calibration_samples_jsonl,
    job_outcome,
    k8s_job_name,
    k8s_job_state,
    parse_progress,
    plan_k8s_quantize,
    podman_argv,
    podman_job_argv,
    podman_mounts,
    progress_message,
    read_async_result,
    record_k8s_result,
    render_k8s_quantize,
)
from modelgate.recipes import build_recipe

K8S_VERSION = "1.37.0"
KEY = "ab" * 32


# ------------------------------------------------------------------------------------ podman


def test_podman_argv_mounts_devices_env(tmp_path: Path):
    model, store, calib = tmp_path / "model", tmp_path / "store", tmp_path / "cal" / "c.jsonl"
    vols = podman_mounts(model, store, [calib, model / "extra.txt"])
    assert vols == [f"{model}:{model}:ro", f"{calib.parent}:{calib.parent}:ro",
                    f"{store}:{store}:rw",
                    f"{PACKAGE_ROOT / 'modelgate'}:{CONTAINER_PACKAGE_ROOT}/modelgate:ro"]
    runner = PodmanRunner(image="registry.example.com/llmc@sha256:" + "0" * 64,
                          devices=("nvidia.com/gpu=0", "nvidia.com/gpu=1"),
                          extra_args=("--ipc=host",))
    spec = store / f".spec-{KEY}.json"
    argv = podman_job_argv(runner, spec, vols)
    assert argv[:3] == ["podman", "run", "--rm"]
    assert "--device=nvidia.com/gpu=0" in argv and "--device=nvidia.com/gpu=1" in argv
    assert argv[argv.index("--name") + 1] == f"modelgate-quantize-{KEY[:12]}"
    assert "--replace" in argv and "--ipc=host" in argv
    assert f"--volume={store}:{store}:rw" in argv
    assert f"--env=PYTHONPATH={CONTAINER_PACKAGE_ROOT}" in argv
    assert "--env=HF_HUB_OFFLINE=1" in argv
    # the image comes after every podman flag, then the job command with the host spec path
    i = argv.index(runner.image)
    assert all(a.startswith("--") or argv[j - 1] == "--name" for j, a in
               enumerate(argv[3:i], start=3))
    assert argv[i + 1:] == ["python3", "-m", "modelgate.quantize_job", "--spec", str(spec)]


def test_podman_versions_probe_argv_has_no_devices():
    argv = podman_argv(PodmanRunner(image="img"), ["--versions"], [])
    assert argv[-4:] == ["python3", "-m", "modelgate.quantize_job", "--versions"]
    assert "--name" not in argv


@pytest.mark.parametrize(("runner", "field"), [
    (PodmanRunner(image=""), "image"),
    (PodmanRunner(image="img", devices=("gpu0",)), "devices"),
])
def test_podman_runner_rejects_bad_input(runner: PodmanRunner, field: str):
    with pytest.raises(ModelGateError) as exc:
        runner.validate()
    assert exc.value.field == field


# -------------------------------------------------------------------------------- kubernetes


def _runner(**kw: object) -> KubernetesRunner:
    base: dict = {"namespace": "modelgate", "image": "quay.io/acme/llmc@sha256:" + "1" * 64,
                  "model_pvc": "models", "model_subpath": "nemotron-nano-9b-v2",
                  "output_pvc": "checkpoints",
                  "tolerations": ({"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"},),
                  "node_selector": (("nvidia.com/gpu.product", "NVIDIA-H200"),)}
    base.update(kw)
    return KubernetesRunner(**base)


def _spec() -> dict:
    recipe = build_recipe("w4a16", group_size=64)
    return {"model_dir": "", "model_digest": "sha256:m", "output_dir": "",
            "recipe_name": recipe.name, "recipe_digest": recipe.digest,
            "recipe_yaml": recipe.to_yaml(), "needs_calibration": True,
            "calibration": {"files": [], "num_samples": 2, "max_seq_length": 64},
            "calibration_digest": "sha256:c", "key": KEY}


def _render(runner: KubernetesRunner | None = None, variant: str = "w4a16") -> dict:
    return render_k8s_quantize(runner or _runner(), variant=variant, job_spec=_spec(),
                               job_source="print('job')\n",
                               calibration_jsonl=calibration_samples_jsonl(["a", "b", "c"], 2))


def test_k8s_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate as kv
    out = _render()
    for obj in (out["configmap"], out["job"]):
        # strict: an unknown or misspelt field is an error, not silently dropped
        kv.validate(obj, K8S_VERSION, strict=True)


def test_k8s_job_requests_gpus_and_mounts_the_pvcs():
    out = _render()
    job, cm = out["job"], out["configmap"]
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert vols["output"]["persistentVolumeClaim"] == {"claimName": "checkpoints"}
    assert vols["job"]["configMap"]["name"] == out["name"] == cm["metadata"]["name"]
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert c["securityContext"]["runAsNonRoot"] is True
    # the job spec inside the ConfigMap points at the mounts, not at controller paths
    spec = json.loads(cm["data"]["spec.json"])
    assert spec["model_dir"] == "/mnt/model/nemotron-nano-9b-v2"
    assert spec["output_dir"] == f"/mnt/output/checkpoints/.tmp-{KEY}-k8s"
    assert spec["calibration"]["files"] == ["/etc/modelgate/calibration.jsonl"]
    assert cm["data"]["calibration.jsonl"] == '{"text": "a"}\n{"text": "b"}\n'
    script = c["command"][2]
    assert f"/mnt/output/checkpoints/{KEY}" in script and 'mv "$tmp" "$final"' in script
    assert out["checkpoint_path"] == f"/mnt/output/checkpoints/{KEY}"
    assert out["pvc_path"] == f"checkpoints/{KEY}"


def test_k8s_cpu_only_job_requests_no_gpu():
    job = _render(_runner(gpu_count=0, tolerations=(), node_selector=()))["job"]
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_k8s_job_name_is_dns_and_short():
    name = k8s_job_name("W4A16_GS32 very long variant name " * 3, KEY)
    assert len(name) <= 63 and name.endswith(KEY[:12])
    assert all(c.islower() or c.isdigit() or c == "-" for c in name)
    assert k8s_job_name("w4a16", KEY) == f"modelgate-quantize-w4a16-{KEY[:12]}"


def test_k8s_rejects_missing_inputs_and_oversized_calibration():
    with pytest.raises(ModelGateError) as exc:
        _render(_runner(model_pvc=""))
    assert exc.value.field == "model_pvc"
    with pytest.raises(ModelGateError) as exc:
        render_k8s_quantize(_runner(), variant="v", job_spec=_spec(), job_source="",
                            calibration_jsonl="x" * (1 << 20))
    assert exc.value.field == "calibration"


@pytest.mark.parametrize(("status", "state"), [
    (None, "absent"),
    ({}, "running"),
    ({"active": 1}, "running"),
    ({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, "succeeded"),
    ({"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}, "failed"),
])
def test_k8s_job_state(status: dict | None, state: str):
    assert k8s_job_state(None if status is None else {"status": status}) == state


def _tiny_model(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "nemotron_h"}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


def _params(model: Path, tmp: Path, **kw: object) -> dict:
    p = {"model": str(model), "variant": "w4a16", "recipe": "w4a16", "group_size": 64,
         "ignore": None, "calibration_files": [], "calibration_dir": str(tmp / "cal"),
         "num_samples": 4, "max_seq_length": 64, "image": "img@sha256:" + "2" * 64,
         "python": "python3", "namespace": "ns", "model_pvc": "models", "model_subpath": "m",
         "output_pvc": "out", "output_subpath": "checkpoints", "gpu_count": 1,
         "gpu_resource": "nvidia.com/gpu", "cpu": "4", "memory": "32Gi", "tolerations": [],
         "node_selector": {}, "service_account": "", "timeout": 3600, "tool_versions": {}}
    p.update(kw)
    return p


def test_plan_k8s_keys_like_the_local_runner(tmp_path: Path):
    import kubernetes_validate as kv
    model = _tiny_model(tmp_path / "model")
    check = plan_k8s_quantize(_params(model, tmp_path), check_mode=True)
    assert not (tmp_path / "cal").exists()  # check mode writes nothing
    plan = plan_k8s_quantize(_params(model, tmp_path))
    assert (tmp_path / "cal" / "modelgate-corpus.jsonl").is_file()
    assert plan["key"] == check["key"] and plan["changed"] is False
    assert plan["path"] == f"pvc://out/checkpoints/{plan['key']}"
    assert plan["tool_versions"] == {"image": "img@sha256:" + "2" * 64}
    kv.validate(plan["job"], K8S_VERSION, strict=True)
    assert len(json.loads(plan["configmap"]["data"]["spec.json"])) > 0
    lines = plan["configmap"]["data"]["calibration.jsonl"].splitlines()
    assert len(lines) == 4
    # another image (other tools) is another checkpoint; given versions replace the image
    other = plan_k8s_quantize(_params(model, tmp_path, image="img:other"))
    assert other["key"] != plan["key"]
    pinned = plan_k8s_quantize(_params(model, tmp_path, tool_versions={"llmcompressor": "0.14"}))
    from modelgate.quantize import CalibrationSpec, model_digest

    cal = CalibrationSpec([tmp_path / "cal" / "modelgate-corpus.jsonl"], 4, 64)
    assert pinned["key"] == quantization_key(model_digest(model),
                                             build_recipe("w4a16", group_size=64),
                                             cal.digest, {"llmcompressor": "0.14"})
    base = plan_k8s_quantize(_params(model, tmp_path, recipe="none", group_size=None))
    assert base["job"] is None and base["path"] == "pvc://models/m"


def test_record_k8s_result_is_a_record_the_controller_stores(tmp_path: Path):
    from modelgate.rundir import RunDir, store_records

    run, __ = RunDir.open(tmp_path / "runs")
    prov = {"key": KEY, "recipe": "w4a16", "elapsed_s": 1.0}
    out = record_k8s_result(_params(tmp_path, tmp_path, provenance=prov, built=True))
    assert out["path"] == f"pvc://out/checkpoints/{KEY}"
    assert not (run.path / "w4a16").exists()  # the module writes no run file itself
    assert out["record"]["stage"] == "quantize"
    assert store_records(run, [out["record"]])
    assert not store_records(run, [out["record"]])  # the same record again changes nothing
    rec = json.loads((run.path / "w4a16" / "quantize.json").read_text())
    assert rec["built_by_this_run"] is True and rec["key"] == KEY
    assert "GPTQModifier" in (run.path / "w4a16" / "quantize" / "recipe.yaml").read_text()
    assert json.loads((run.path / "w4a16" / "quantize" / "provenance.json").read_text()) == prov
    with pytest.raises(ModelGateError):
        record_k8s_result(_params(tmp_path, tmp_path, provenance={"key": "short"}))


# ---------------------------------------------------------------------------------- progress


def test_progress_message_from_progress_lines():
    t0 = time.mktime(time.strptime("2026-11-30T03:00:00", "%Y-%m-%dT%H:%M:%S"))
    text = ("2026-11-30T03:00:00 loading model\n"
            "2026-11-30T03:00:02 calibration 32 samples, 4000 tokens\n"
            "progress bar noise without a timestamp\n"
            "2026-11-30T03:00:05 layer 1/6 elapsed 5.0s\n"
            "2026-11-30T03:00:19 layer 4/6 elapsed 19.2s\n")
    prog = parse_progress(text)
    assert (prog.layer, prog.layers, prog.latest) == (4, 6, "layer 4/6 elapsed 19.2s")
    assert progress_message("w4a16", prog, now=t0 + 21) == "w4a16: layer 4/6, 21 s"
    prog = parse_progress(text + "2026-11-30T03:00:40 saving\n")
    assert progress_message("w4a16", prog, now=t0 + 41) == "w4a16: saving, 41 s"
    prog = parse_progress(text + "2026-11-30T03:00:45 done elapsed 45.1s\n")
    assert progress_message("v", prog, now=t0 + 45) == "v: done, 45 s"
    assert progress_message("v", parse_progress("")) == "v: starting"


def test_read_async_result(tmp_path: Path):
    jid = "j123.456"
    (tmp_path / jid).write_text(json.dumps({"started": True, "finished": False,
                                            "ansible_job_id": jid}))
    assert read_async_result(tmp_path, jid) is None
    (tmp_path / jid).write_text(json.dumps({"changed": True, "path": "/s/k", "key": "k",
                                            "invocation": {"module_args": {}}}))
    data = read_async_result(tmp_path, jid)
    assert data is not None
    assert job_outcome(data) == {"changed": True, "path": "/s/k", "key": "k"}
    with pytest.raises(ModelGateError):
        read_async_result(tmp_path, "missing")
    with pytest.raises(ModelGateError):
        read_async_result(tmp_path, "../etc/passwd")
