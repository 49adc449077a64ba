"""The kserve target's live path: against a real cluster when one is given, and its failures.

- ``test_molecule_openshift`` runs ``molecule test -s openshift`` (cluster preparation, serving a
  modelcar, idempotence, a completion, deletion) when ``KUBECONFIG``, ``MODELGATE_KSERVE_MODELCAR``
  and ``MODELGATE_KSERVE_MODEL_DIR`` are set; without them it is reported as skipped (marked
  ``live_cluster``: the one skip CI accepts, since no Kubernetes API server can run here).
- ``test_an_unreachable_cluster_stops_with_the_reason`` runs serve_kserve's apply path against
  an API server that does not answer: the play stops at the first cluster call and names it,
  the rendered manifests and the diagnostics stay in the run, and no secret is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_molecule, run_playbook, runner_text

PASSWORD = "S3cret-unreachable-password"
TOKEN = "hf_unreachable-token"


def _kubeconfig(tmp_path: Path) -> Path:
    # a real kubeconfig whose server refuses connections (port 9: discard, closed here)
    path = tmp_path / "kubeconfig"
    path.write_text("""apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}}]
users: [{name: none, user: {token: not-a-token}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: modelgate}}]
current-context: none
""")
    return path


def test_an_unreachable_cluster_stops_with_the_reason(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "unreachable", "tests/integration/data/kserve_unreachable.yml",
                          extravars={"test_kubeconfig": str(_kubeconfig(tmp_path)),
                                     "test_password": PASSWORD, "test_token": TOKEN})
    text = runner_text(runner)
    assert runner.rc != 0, text[-3000:]
    assert "is not serving: 'Check that the cluster answers" in text, text[-3000:]
    assert "127.0.0.1" in text  # the reason names the server it could not reach
    run = (tmp_path / "runs" / "latest").resolve()
    manifests = (run / "w4a16" / "kserve" / "manifests.yaml").read_text()
    assert "kind: InferenceService" in manifests  # what was rendered is kept
    assert (run / "w4a16" / "deploy-diagnostics.json").is_file()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.parent.name != "env":
            body = path.read_text(errors="replace")
            assert PASSWORD not in body and TOKEN not in body, f"a secret is in {path}"


@pytest.mark.live_cluster
def test_molecule_openshift() -> None:
    """The openshift scenario passes on the cluster KUBECONFIG points at."""
    needed = ("KUBECONFIG", "MODELGATE_KSERVE_MODELCAR", "MODELGATE_KSERVE_MODEL_DIR")
    missing = [v for v in needed if not os.environ.get(v)]
    if missing or not Path(os.environ.get("KUBECONFIG", "")).is_file():
        pytest.skip(f"no cluster to run against ({', '.join(missing) or 'KUBECONFIG'} not "
                    "set): molecule/openshift was not run")
    run_molecule("openshift", timeout=7200)
