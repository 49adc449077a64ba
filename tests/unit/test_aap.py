"""The AAP configuration check against the installed awx.awx modules' own argument specs."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelgate import aap
from modelgate.errors import ModelGateError

REPO = Path(__file__).resolve().parents[2]


def test_the_spec_is_read_from_the_installed_module() -> None:
    spec = aap.module_argument_spec("job_template")
    options = spec["argument_spec"]
    assert options["job_type"]["choices"] == ["run", "check"]
    assert "survey_spec" in options and "controller_host" in options  # own + connection
    with pytest.raises(ModelGateError, match="cannot be loaded"):
        aap.module_argument_spec("no_such_module")


def test_items_are_checked_by_ansibles_validator_and_against_the_project() -> None:
    config = {
        "controller_templates": [
            {"name": "ok", "project": "P", "playbook": "site.yml", "job_type": "run"},
            {"name": "typo", "project": "P", "playbook": "site.yml", "jobtype": "run"},
            {"name": "gone", "project": "P", "playbook": "playbooks/nope.yml",
             "credentials": ["Nobody"]},
        ],
        "controller_workflows": [{
            "name": "W", "workflow_nodes": [
                {"identifier": "a", "unified_job_template": {"name": "ok", "type": "job_template"},
                 "related": {"success_nodes": [{"identifier": "b"}]}},
                {"identifier": "c", "unified_job_template": {"name": "missing",
                                                             "type": "job_template"}}]}],
        "controller_credentials": [{"name": "x", "credential_type": "Nope", "organization": "O"}],
        "controller_unknown": [],
    }
    problems = "\n".join(aap.check_configuration(config, REPO))
    assert "controller_templates[1] (typo): unsupported parameter jobtype (not an option" \
        in problems
    assert "controller_templates[2] (gone): playbook 'playbooks/nope.yml' is not in the project" \
        in problems
    assert "credential 'Nobody' is not in controller_credentials" in problems
    assert "node 'a' success_nodes names 'b', no such node" in problems
    assert "node 'c' runs 'missing', which is not in controller_templates" in problems
    assert "credential type 'Nope' is not defined" in problems
    assert "controller_unknown: not a list this configuration applies" in problems
    assert "controller_templates[0]" not in problems
