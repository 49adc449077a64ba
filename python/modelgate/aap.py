"""Ansible Automation Platform configuration as data: checked before any API call.

The configuration under ``aap/configuration/`` is in the data shapes of redhat-cop's
``infra.aap_configuration`` (``controller_credential_types``, ``controller_credentials``,
``controller_projects``, ``controller_inventories``, ``controller_inventory_sources``,
``controller_execution_environments``, ``controller_templates``, ``controller_workflows``), and
``playbooks/aap_configure.yml`` applies each list with the matching ``awx.awx`` module. Before
it calls a controller, :func:`check_configuration` proves what a controller cannot be asked
without being changed:

* every item passes the argument spec of the ``awx.awx`` module that applies it, read from the
  installed module itself (its ``main()`` builds ``ControllerAPIModule(argument_spec=...)``;
  the class is swapped for one that records the spec and stops), validated by ansible-core's
  own ``ArgumentSpecValidator``;
* every job template's playbook exists in the project, and every survey variable is an input
  a role declares in its ``meta/argument_specs.yml``, with a survey type that fits its type;
* the workflow's nodes name templates that are defined, and its edges name nodes that exist;
* credentials name credential types that are defined (or built into the controller).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from modelgate.errors import ModelGateError

# Each data list, the awx.awx module that applies it, and the item fields that are the data
# shapes' own (infra.aap_configuration reads them; the module does not take them).
SECTIONS: dict[str, str] = {
    "controller_credential_types": "credential_type",
    "controller_credentials": "credential",
    "controller_projects": "project",
    "controller_inventories": "inventory",
    "controller_inventory_sources": "inventory_source",
    "controller_execution_environments": "execution_environment",
    "controller_templates": "job_template",
    "controller_workflows": "workflow_job_template",
}
# Credential types every controller has (kind names as the API lists them).
BUILTIN_CREDENTIAL_TYPES = {"Machine", "Source Control", "Vault", "Container Registry",
                            "OpenShift or Kubernetes API Bearer Token",
                            "Red Hat Ansible Automation Platform"}
# Survey question types and the argument-spec types each can answer.
SURVEY_TYPES = {
    "text": {"str", "path", "raw"}, "textarea": {"str", "raw"}, "password": {"str", "raw"},
    "integer": {"int", "raw"}, "float": {"float", "raw"},
    "multiplechoice": {"str", "raw"}, "multiselect": {"list", "raw"},
}


class _SpecCaptured(Exception):
    def __init__(self, argument_spec: dict[str, Any], kwargs: dict[str, Any]) -> None:
        super().__init__("argument spec captured")
        self.argument_spec = argument_spec
        self.kwargs = kwargs


def module_argument_spec(module: str, collection: str = "awx.awx") -> dict[str, Any]:
    """The full argument spec (its own options plus the connection options) and the
    constraints (mutually_exclusive, required_if, ...) of an installed controller module."""
    namespace, name = collection.split(".")
    try:
        mod = importlib.import_module(
            f"ansible_collections.{namespace}.{name}.plugins.modules.{module}")
        utils = importlib.import_module(
            f"ansible_collections.{namespace}.{name}.plugins.module_utils.controller_api")
    except ImportError as exc:
        raise ModelGateError(f"the {collection} collection's {module} module cannot be loaded: "
                             f"{exc}", field="collection",
                             fix=f"install {collection} (ansible-galaxy collection install "
                                 f"{collection}; the ansible package includes awx.awx)") from exc

    def capture(argument_spec: dict[str, Any] | None = None, **kwargs: Any) -> None:
        raise _SpecCaptured(argument_spec or {}, kwargs)

    original = mod.ControllerAPIModule
    mod.ControllerAPIModule = capture
    try:
        mod.main()
    except _SpecCaptured as captured:
        spec = {**utils.ControllerModule.AUTH_ARGSPEC, **captured.argument_spec}
        return {"argument_spec": spec, **captured.kwargs}
    finally:
        mod.ControllerAPIModule = original
    raise ModelGateError(f"{collection}.{module} did not build a ControllerAPIModule",
                         field="collection", fix="use an awx.awx / ansible.controller release "
                                                 "whose modules build one in main()")


def check_item(spec: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The errors ansible-core's validator finds in one module call's parameters."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    constraints = {k: spec[k] for k in ("mutually_exclusive", "required_together",
                                        "required_one_of", "required_if", "required_by")
                   if spec.get(k)}
    validator = ArgumentSpecValidator(spec["argument_spec"], **constraints)
    result = validator.validate(dict(params))
    problems = []
    for error in result.errors:
        text = str(error)
        if type(error).__name__ == "UnsupportedError":  # "x. Supported parameters include ..."
            text = (f"unsupported parameter {text.split('. Supported', 1)[0]} (not an option "
                    "of the module; check its spelling in ansible-doc)")
        problems.append(text)
    return problems


def module_params(section: str, item: dict[str, Any]) -> dict[str, Any]:
    """The module parameters playbooks/aap_configure.yml passes for one data item (the data
    shapes name a few things as mappings, ``{name: ...}``, where the module takes the name)."""
    params = dict(item)
    for key in ("organization", "inventory", "project", "execution_environment",
                "credential_type", "source_project"):
        if isinstance(params.get(key), dict):
            params[key] = params[key].get("name")
    if section == "controller_templates" and "survey" in params:
        params["survey_spec"] = params.pop("survey")
    return params


def declared_inputs(roles_dir: Path) -> dict[str, dict[str, Any]]:
    """Every role input (option of any entry point of any role's argument specs) by name."""
    inputs: dict[str, dict[str, Any]] = {}
    for spec_file in sorted(roles_dir.glob("*/meta/argument_specs.yml")):
        specs = yaml.safe_load(spec_file.read_text()).get("argument_specs", {})
        for entry in specs.values():
            for name, option in (entry.get("options") or {}).items():
                inputs.setdefault(name, {**option, "role": spec_file.parent.parent.name})
    return inputs


def _survey_problems(where: str, survey: dict[str, Any],
                     inputs: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for i, question in enumerate(survey.get("spec") or []):
        var, kind = question.get("variable"), question.get("type")
        at = f"{where}.survey_spec.spec[{i}]"
        if var not in inputs:
            problems.append(f"{at}: survey variable {var!r} is not an input any role declares "
                            "(roles/*/meta/argument_specs.yml); name a declared one")
            continue
        declared = str(inputs[var].get("type", "str"))
        if kind not in SURVEY_TYPES:
            problems.append(f"{at}: unknown survey type {kind!r}; use one of "
                            + ", ".join(SURVEY_TYPES))
        elif declared not in SURVEY_TYPES[kind]:
            problems.append(f"{at}: a {kind} question answers {var} (type {declared} in role "
                            f"{inputs[var]['role']}); use a question type that gives a {declared}")
        choices = inputs[var].get("choices")
        if choices and kind in ("multiplechoice", "multiselect"):
            offered = question.get("choices") or []
            offered = offered.splitlines() if isinstance(offered, str) else offered
            extra = [c for c in offered if c not in choices]
            if extra:
                problems.append(f"{at}: choices {extra} are not among {var}'s {choices}")
    return problems


def check_configuration(config: dict[str, Any], project_dir: Path,
                        specs: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Every problem of the configuration, each naming the item and the field; [] = sound.

    ``specs`` (module name -> :func:`module_argument_spec`) is read from the installed awx.awx
    when not given."""
    problems: list[str] = []
    unknown = sorted(k for k in config if k.startswith("controller_") and k not in SECTIONS)
    problems += [f"{k}: not a list this configuration applies (known: {', '.join(SECTIONS)})"
                 for k in unknown]
    specs = dict(specs or {})
    names: dict[str, set[str]] = {}
    for section, module in SECTIONS.items():
        items = config.get(section) or []
        if not isinstance(items, list):
            problems.append(f"{section}: must be a list of mappings")
            continue
        if items and module not in specs:
            specs[module] = module_argument_spec(module)
        names[section] = set()
        for i, item in enumerate(items):
            label = f"{section}[{i}] ({item.get('name', '?') if isinstance(item, dict) else '?'})"
            if not isinstance(item, dict):
                problems.append(f"{label}: must be a mapping")
                continue
            names[section].add(str(item.get("name")))
            found = check_item(specs[module], module_params(section, item))
            problems += [f"{label}: {e}" for e in found]
    inputs = declared_inputs(project_dir / "roles")
    types = names.get("controller_credential_types", set()) | BUILTIN_CREDENTIAL_TYPES
    for i, cred in enumerate(config.get("controller_credentials") or []):
        if cred.get("credential_type") not in types:
            problems.append(f"controller_credentials[{i}] ({cred.get('name')}): credential type "
                            f"{cred.get('credential_type')!r} is not defined in "
                            "controller_credential_types nor built in")
    credentials = names.get("controller_credentials", set())
    for i, tpl in enumerate(config.get("controller_templates") or []):
        where = f"controller_templates[{i}] ({tpl.get('name')})"
        playbook = tpl.get("playbook")
        if not playbook or not (project_dir / str(playbook)).is_file():
            problems.append(f"{where}: playbook {playbook!r} is not in the project")
        for cred in tpl.get("credentials") or []:
            if cred not in credentials:
                problems.append(f"{where}: credential {cred!r} is not in controller_credentials")
        problems += _survey_problems(where, tpl.get("survey_spec") or {}, inputs)
    templates = names.get("controller_templates", set())
    for i, flow in enumerate(config.get("controller_workflows") or []):
        where = f"controller_workflows[{i}] ({flow.get('name')})"
        problems += _survey_problems(where, flow.get("survey_spec") or {}, inputs)
        nodes = flow.get("workflow_nodes") or []
        ids = {n.get("identifier") for n in nodes}
        for node in nodes:
            ujt = node.get("unified_job_template") or {}
            if ujt.get("type") == "job_template" and ujt.get("name") not in templates:
                problems.append(f"{where}: node {node.get('identifier')!r} runs "
                                f"{ujt.get('name')!r}, which is not in controller_templates")
            for edge in ("success_nodes", "failure_nodes", "always_nodes"):
                for target in (node.get("related") or {}).get(edge) or []:
                    if target.get("identifier") not in ids:
                        problems.append(f"{where}: node {node.get('identifier')!r} "
                                        f"{edge} names {target.get('identifier')!r}, no such node")
    return problems


def render_injectors(credential_type: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """A credential type's injectors rendered with sample inputs, as the controller renders
    them (a sandboxed Jinja environment, the inputs and ``tower.filename`` for file
    injectors); an input the template names but the type does not define is an error."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    fields = {f["id"] for f in (credential_type.get("inputs") or {}).get("fields", [])}
    injectors = credential_type.get("injectors") or {}
    files = {key.split(".", 1)[1] if "." in key else "": f"/runner/env/{key}"
             for key in injectors.get("file", {})}
    tower = {"filename": files.get("") if list(files) == [""] else files}
    context = {**{k: v for k, v in inputs.items() if k in fields}, "tower": tower}
    rendered: dict[str, Any] = {}
    for section in ("env", "extra_vars", "file"):
        rendered[section] = {key: env.from_string(str(value)).render(context)
                             for key, value in (injectors.get(section) or {}).items()}
    return rendered
