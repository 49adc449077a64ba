"""The openshift inventory's whole run without a cluster: every manifest rendered and validated.

``site.yml -i inventories/openshift`` with ``modelgate_kubernetes_render_only: true`` runs every
stage the kserve target has (cluster preparation, the quantize Jobs, the in-cluster modelcar
Jobs, the serving resources) and applies nothing. Each object it writes is validated: KServe
kinds against KServe's CRDs, the operators' kinds against theirs, DSC/DSCI against the
operator's Go types, core kinds with kubernetes-validate (tests/k8s_schemas.py). A second run
changes nothing, nor does one in check mode; no secret reaches any file, and no verdict is
given (nothing was measured).

What differs from the inventory as shipped: the model is generated here (no model hub), so the
serving length fits it, and W4A16 keeps the Mamba in_proj layers unquantized (their 1184 output
features fit no Hopper W4A16 kernel: the preflight says so for this small model).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, play_outcome, run_playbook, runner_text
from k8s_schemas import load_manifests, validate_all

SECRETS = {"vault_registry_username": "robot-render",
           "vault_registry_password": "S3cret-registry-password-render",
           "vault_hf_token": "hf_render-token-never-written"}
EXTRAVARS = {
    **SECRETS,
    "modelgate_kubernetes_render_only": True,
    "modelgate_model": {"source": "generated", "name": "tiny-nemotron-h"},
    "modelgate_calibration": {"num_samples": 16, "max_seq_length": 128},
    "modelgate_variants": [
        {"name": "bf16", "recipe": "none", "baseline": True},
        {"name": "w4a16", "recipe": "w4a16", "group_size": 64,
         "ignore": ["lm_head", "re:.*\\.in_proj$"]},
        {"name": "fp8", "recipe": "fp8-dynamic"},
    ],
    "modelgate_serving": {"port": 8000, "max_model_len": 1024,
                          "overrides": {"max-num-seqs": 64, "mamba-ssm-cache-dtype": "float32"}},
}


def test_the_openshift_run_renders_every_manifest_and_applies_none(tmp_path: Path) -> None:
    first = run_playbook(tmp_path, "render", inventory=REPO / "inventories" / "openshift",
                         extravars=EXTRAVARS)
    assert first.rc == 0, play_outcome(first)
    runs = tmp_path / "runs"
    run = (runs / "latest").resolve()

    by_file = {p.relative_to(runs).as_posix(): load_manifests(p)
               for p in sorted(runs.rglob("*.yaml"))}
    counts = validate_all([obj for objs in by_file.values() for obj in objs])
    assert counts == {
        # cluster: three operators (namespace, group, subscription), their CRs, the project
        "Namespace": 4, "OperatorGroup": 3, "Subscription": 3, "NodeFeatureDiscovery": 1,
        "ClusterPolicy": 1, "DSCInitialization": 1, "DataScienceCluster": 1,
        # quantize Jobs for the two candidates, modelcar Jobs for all three
        "ConfigMap": 5, "Job": 5,
        # one runtime and one InferenceService per variant
        "ServingRuntime": 3, "InferenceService": 3,
    }, sorted(by_file)
    for variant in ("bf16", "w4a16", "fp8"):
        assert f"{run.name}/{variant}/kserve/manifests.yaml" in by_file
        assert f"{run.name}/{variant}/modelcar/job.yaml" in by_file
    # the InferenceService serves the tag its modelcar Job pushes
    job = next(o for o in by_file[f"{run.name}/w4a16/modelcar/job.yaml"] if o["kind"] == "Job")
    isvc = next(o for o in by_file[f"{run.name}/w4a16/kserve/manifests.yaml"]
                if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == \
        "oci://" + job["metadata"]["annotations"]["modelgate.io/ref"]
    # `modelgate kserve render` prints what the deploy stage rendered for this run
    proc = subprocess.run([str(Path(sys.executable).parent / "modelgate"), "kserve", "render",
                           "--inventory", str(REPO / "inventories" / "openshift"),
                           "--run", str(run)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    printed = [d for d in yaml.safe_load_all(proc.stdout) if d]
    rendered = [o for v in ("bf16", "w4a16", "fp8")
                for o in by_file[f"{run.name}/{v}/kserve/manifests.yaml"]]

    def key(o):
        return (o["kind"], o["metadata"]["name"])

    assert sorted(printed, key=key) == sorted(rendered, key=key)
    # nothing was measured, so nothing was judged
    assert not (run / "gate.json").exists()
    assert "nothing was applied, served or measured" in runner_text(first)

    second = run_playbook(tmp_path, "render-again", inventory=REPO / "inventories" / "openshift",
                          extravars={**EXTRAVARS, "modelgate_run_id": "latest"})
    assert second.rc == 0, play_outcome(second)
    assert second.stats["changed"] == {}, play_outcome(second)
    check = run_playbook(tmp_path, "render-check", inventory=REPO / "inventories" / "openshift",
                         extravars={**EXTRAVARS, "modelgate_run_id": "latest"}, cmdline="--check")
    assert check.rc == 0 and check.stats["changed"] == {}, play_outcome(check)

    # the registry password and the HF token are in no manifest, record, log or event (only in
    # the extra vars this test gave ansible-runner: runner-*/env/)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.parent.name != "env":
            text = path.read_text(errors="replace")
            for name in ("vault_registry_password", "vault_hf_token"):
                assert SECRETS[name] not in text, f"{name}'s value is in {path}"


def test_a_serving_length_the_model_cannot_take_stops_before_any_job(tmp_path: Path) -> None:
    # the inventory's 16384 tokens are past this small model's 4096 positions
    extravars = {k: v for k, v in EXTRAVARS.items() if k != "modelgate_serving"}
    runner = run_playbook(tmp_path, "too-long", inventory=REPO / "inventories" / "openshift",
                          extravars=extravars)
    text = runner_text(runner)
    assert runner.rc != 0
    assert "max_model_len 16384 exceeds the model's max_position_embeddings 4096" in text
    assert "Preflight every recipe" in text
    run = (tmp_path / "runs" / "latest").resolve()
    assert not list(run.glob("*/quantize/job.yaml")), "a quantize Job was rendered anyway"
