#!/usr/bin/python
"""Run an OCI registry (Debian's docker-registry) as a supervised local process."""

from __future__ import annotations

DOCUMENTATION = r"""
module: local_registry
short_description: Run a local OCI registry as a supervised process
description:
  - Starts the distribution registry binary on a loopback address with its own configuration
    and storage directory, and waits until C(/v2/) answers.
  - Idempotent; our registry found running with the same configuration is C(ok).
  - A port held by anything else fails with a message naming the port.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  address:
    description: host:port to listen on.
    type: str
    default: 127.0.0.1:5000
  data_dir:
    description: Where the registry stores blobs.
    type: path
    required: true
  state_dir:
    description: Where its pidfile, log and configuration live.
    type: path
    required: true
  state:
    description: Whether it should run.
    type: str
    choices: [started, stopped]
    default: started
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: none
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Local registry
  modelgate.pipeline.local_registry:
    address: 127.0.0.1:5000
    data_dir: /srv/modelgate/registry
    state_dir: /srv/modelgate/state
"""

RETURN = r"""
url:
  description: The registry's base URL.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "address": {"type": "str", "default": "127.0.0.1:5000"},
            "data_dir": {"type": "path", "required": True},
            "state_dir": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["started", "stopped"], "default": "started"},
        },
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.registry import ensure_registry, stop_registry

        p = module.params
        if p["state"] == "stopped":
            return stop_registry(p["address"], Path(p["state_dir"]))
        return ensure_registry(p["address"], Path(p["data_dir"]), Path(p["state_dir"]))

    run(module, action)


if __name__ == "__main__":
    main()
