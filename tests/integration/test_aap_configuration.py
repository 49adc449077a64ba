"""The AAP configuration as code, without an AAP server.

What can be proven without a controller is proven for real: playbooks/aap_configure.yml loads
aap/configuration/ and checks every item against the argument specs of the installed awx.awx
modules (read from the modules themselves) and against this project; every credential type's
injectors render with sample inputs as the controller renders them; the secrets reach no output,
at -vvv, even when the controller cannot be reached; and the workflow's graph is the pipeline's.
Applying to a real controller is the one step not run here (README: Ansible Automation Platform).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from modelgate import aap

BIN = REPO / ".modelgate" / "venvs" / "controller" / "bin"
CONFIG = REPO / "aap" / "configuration"
SECRETS = {
    "modelgate_aap_hf_token": "hf_AapTokenSecret4711",
    "modelgate_aap_registry_username": "robot",
    "modelgate_aap_registry_password": "AapRegistryPassw0rd-9c2",
    "modelgate_aap_ssh_private_key": "-----BEGIN KEY-----AapSshKeySecret-----END KEY-----",
    "modelgate_aap_cluster_token": "sha256~AapClusterTokenSecret",
    "modelgate_aap_scm_url": "https://git.example.com/modelgate.git",
    "modelgate_aap_registry_host": "registry.example.com",
    "modelgate_aap_ssh_username": "cloud-user",
    "modelgate_aap_cluster_host": "https://api.cluster.example.com:6443",
}
SECRET_VALUES = [v for k, v in SECRETS.items()
                 if k.endswith(("token", "password", "private_key"))]


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it, where it matters here: !unsafe is a plain string."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load(name: str) -> dict[str, Any]:
    return yaml.load((CONFIG / name).read_text(), Loader=_Loader)


def play(tmp: Path, *args: str, extra: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
    varfile = tmp / "vars.json"
    varfile.write_text(json.dumps({**SECRETS, **(extra or {})}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".modelgate" / "collections"),
           "ANSIBLE_FORCE_COLOR": "0"}
    playbook = REPO / "playbooks" / "aap_configure.yml"
    command = [str(BIN / "ansible-playbook"), str(playbook), "-e", f"@{varfile}", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def test_the_configuration_passes_the_awx_modules_and_the_project_checks(tmp_path: Path) -> None:
    out = play(tmp_path, "-e", "modelgate_aap_check_only=true", "-v")
    assert out.returncode == 0, out.stdout[-4000:]
    assert "every item passes the argument specs of the awx.awx modules" in out.stdout
    # 3 credential types, 4 credentials, 8 templates (7 stages + the whole path), 1 workflow
    for count in ("3 controller_credential_types", "4 controller_credentials",
                  "8 controller_templates", "1 controller_workflows"):
        assert count in out.stdout, out.stdout[-3000:]
    for secret in SECRET_VALUES:
        assert secret not in out.stdout + out.stderr


def test_a_wrong_item_is_refused_with_its_field_before_any_api_call(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.mkdir()
    for path in CONFIG.glob("*.yml"):
        text = path.read_text()
        if path.name == "job_templates.yml":
            text = (text.replace("variable: modelgate_validate_rounds",
                                 "variable: modelgate_validate_roundz")
                    .replace("playbook: playbooks/deploy.yml", "playbook: playbooks/dep1oy.yml")
                    .replace("  job_type: run", "  job_type: runn"))
        (bad / path.name).write_text(text)
    out = play(tmp_path, "-e", f"modelgate_aap_configuration_dir={bad}",
               "-e", "aap_hostname=https://127.0.0.1:9", "-vvv")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "value of job_type must be one of: run, check, got: runn" in text
    assert "controller_templates[4] (ModelGate deploy): playbook 'playbooks/dep1oy.yml'" in text
    assert "survey variable 'modelgate_validate_roundz' is not an input any role declares" in text
    assert "Apply the credential types" not in text  # nothing was sent anywhere
    for secret in SECRET_VALUES:
        assert secret not in text


def test_secrets_reach_no_output_when_the_controller_call_fails(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: the call fails, with its message
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    only_credentials = tmp_path / "config"
    only_credentials.mkdir()
    creds = load("credentials.yml")["controller_credentials"]
    machine = [c for c in creds if c["credential_type"] == "Machine"]
    (only_credentials / "credentials.yml").write_text(
        yaml.safe_dump({"controller_credentials": machine}))
    out = play(tmp_path, "-e", f"modelgate_aap_configuration_dir={only_credentials}",
               "-e", f"aap_hostname=https://127.0.0.1:{port}", "-e", "aap_validate_certs=false",
               "-e", "aap_username=admin", "-e", "aap_password=AapAdminPassw0rd-77", "-vvv")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Apply the credentials" in text, text[-3000:]
    assert "censored" in text  # the failed item's result is hidden, not printed
    for secret in [*SECRET_VALUES, "AapAdminPassw0rd-77"]:
        assert secret not in text


def test_every_credential_type_injector_renders_with_sample_inputs() -> None:
    samples = {"token": "hf_sample", "host": "registry.example.com:5000", "username": "robot",
               "password": "pw", "api_key": "sha256~abc", "verify_ssl": True}
    types = {t["name"]: t for t in load("credential_types.yml")["controller_credential_types"]}
    hub = aap.render_injectors(types["ModelGate model hub token"], samples)
    assert hub["env"] == {"HF_TOKEN": "hf_sample"}
    assert hub["extra_vars"] == {"modelgate_hf_token": "hf_sample"}
    registry = aap.render_injectors(types["ModelGate OCI registry"], samples)
    assert registry["extra_vars"]["modelgate_registry_password"] == "pw"
    auth = json.loads(registry["file"]["template.auth"])
    assert auth == {"auths": {"registry.example.com:5000": {"username": "robot",
                                                            "password": "pw"}}}
    assert registry["env"]["REGISTRY_AUTH_FILE"] == "/runner/env/template.auth"
    cluster = aap.render_injectors(types["ModelGate OpenShift cluster"], samples)
    # the variables kubernetes.core's modules read
    assert cluster["env"] == {"K8S_AUTH_HOST": "registry.example.com:5000",
                              "K8S_AUTH_API_KEY": "sha256~abc", "K8S_AUTH_VERIFY_SSL": "True"}
    # an injector naming an input its type does not define does not render
    broken = {**types["ModelGate model hub token"],
              "injectors": {"env": {"HF_TOKEN": "{{ hf_token }}"}}}
    with pytest.raises(Exception, match="hf_token"):
        aap.render_injectors(broken, samples)


def test_the_workflow_is_the_pipeline_with_every_failure_to_teardown() -> None:
    flow = load("workflows.yml")["controller_workflows"][0]
    nodes = {n["identifier"]: n for n in flow["workflow_nodes"]}
    order, node = [], "provision"
    while node:
        order.append(node)
        success = nodes[node].get("related", {}).get("success_nodes") or []
        node = success[0]["identifier"] if success else None
    assert order == ["provision", "model", "quantize", "modelcar", "deploy", "validate"]
    for name in order:
        assert nodes[name]["related"]["failure_nodes"] == [{"identifier": "teardown"}]
    assert nodes["teardown"]["all_parents_must_converge"] is False
    templates = {t["name"]: t for t in load("job_templates.yml")["controller_templates"]}
    for name in [*order, "teardown"]:
        playbook = templates[nodes[name]["unified_job_template"]["name"]]["playbook"]
        assert playbook == f"playbooks/{name}.yml"
    # artifacts reach the next node only when the template accepts variables on launch
    assert all(t["ask_variables_on_launch"] for t in templates.values())


def test_survey_variables_are_role_inputs_of_a_fitting_type() -> None:
    inputs = aap.declared_inputs(REPO / "roles")
    templates = load("job_templates.yml")["controller_templates"]
    questions = [q for t in templates for q in (t.get("survey_spec") or {}).get("spec", [])]
    assert {q["variable"] for q in questions} >= {
        "modelgate_model_hub_id", "modelgate_variant_names", "modelgate_target",
        "modelgate_gate_latency_tolerance", "modelgate_gate_accuracy_recovery"}
    for q in questions:
        assert inputs[q["variable"]]["type"] in aap.SURVEY_TYPES[q["type"]] - {"raw"}, q
    # a survey type that cannot give the input's type is refused
    wrong = {"spec": [{"variable": "modelgate_variant_names", "type": "text"}]}
    assert "use a question type that gives a list" in " ".join(
        aap._survey_problems("t", wrong, inputs))
