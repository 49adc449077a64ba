#!/usr/bin/python
"""Documentation of the aap_configuration_check action (plugins/action), which runs on the
controller."""

from __future__ import annotations

DOCUMENTATION = r"""
module: aap_configuration_check
short_description: Check an AAP configuration (infra.aap_configuration shapes) before applying
description:
  - Validates every item of the C(controller_*) lists against the argument spec of the
    C(awx.awx) module that applies it, read from the installed module itself, with
    ansible-core's own validator; no controller is contacted.
  - Checks the items against the project too, every job template's playbook exists, every
    survey variable is an input a role declares (with a survey type that fits its type and
    choices among its choices), workflow nodes name defined templates and edges name existing
    nodes, credentials name defined or built-in credential types.
  - Runs on the controller (an action plugin); fails with every problem, each naming its item
    and field; credential inputs never appear in the result.
version_added: "0.3.0"
author: ModelGate maintainers (@modelgate)
options:
  config:
    description:
      - The configuration, C({controller_credential_types, controller_credentials,
        controller_projects, controller_inventories, controller_inventory_sources,
        controller_execution_environments, controller_templates, controller_workflows}).
    type: dict
    required: true
  project_dir:
    description: The project (this repository), where the playbooks and the roles are.
    type: path
    required: true
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
"""

EXAMPLES = r"""
- name: Check every item against the awx.awx modules and this project
  modelgate.pipeline.aap_configuration_check:
    config:
      controller_templates: "{{ controller_templates }}"
      controller_workflows: "{{ controller_workflows }}"
    project_dir: "{{ playbook_dir }}/.."
"""

RETURN = r"""
checked:
  description: How many items of each list were checked.
  type: dict
  returned: always
problems:
  description: Every problem found, each naming its item and field; empty when sound.
  type: list
  elements: str
  returned: always
"""
