#!/usr/bin/python
"""Run vLLM as a supervised local process (the local target)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_local
short_description: Run a model under vLLM as a supervised local process
description:
  - Derives the vLLM arguments from the checkpoint (hybrid Mamba/attention models get
    C(--mamba-ssm-cache-dtype float32); custom code gets C(--trust-remote-code); the memory
    plan sizes C(--max-num-seqs)), starts C(python -m vllm.entrypoints.openai.api_server) in
    its own session with a pidfile and a log, and waits until C(/health) and C(/v1/models)
    answer and one completion returns.
  - Idempotent by fingerprint (model digest + arguments + environment); the same server found
    running is C(ok), not restarted; other arguments restart it once.
  - On a start-up failure the failure message carries vLLM's error line and C(log), the
    server log's path on this host (the pipeline fetches it into the run directory).
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  state:
    description: Whether the server should run.
    type: str
    choices: [started, stopped]
    default: started
  model:
    description: The model directory to serve.
    type: path
  served_name:
    description: The model name clients request.
    type: str
    default: model
  port:
    description: The port to listen on (loopback).
    type: int
    default: 8000
  python:
    description: The serve virtualenv's Python.
    type: str
  state_dir:
    description: Where the pidfile, log and state file live.
    type: path
    required: true
  device:
    description: cpu or cuda.
    type: str
    choices: [cpu, cuda]
    default: cpu
  memory_gib:
    description: Memory to plan within (GPU memory, or RAM for the KV cache on CPU).
    type: float
  overrides:
    description: vLLM arguments that win over the derived ones (flag -> value; null removes).
    type: dict
    default: {}
  cpu_threads:
    description: On CPU, how many cores vLLM binds (the rest are left to the load client).
    type: int
  cpu_cores:
    description:
      - On CPU, exactly which cores vLLM binds, instead of O(cpu_threads); servers side by
        side each get their own.
    type: list
    elements: int
  timeout:
    description: Seconds to wait for readiness; default scales with the model's size.
    type: float
  variant:
    description: The variant being served; given, the result carries its deploy C(record).
    type: str
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: partial
    details: Reports whether the server would be started or stopped; starts nothing.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Serve the W4A16 variant on CPU
  modelgate.pipeline.vllm_local:
    model: /srv/modelgate/store/served/sha256-abc
    served_name: tiny
    port: 8000
    python: /srv/modelgate/venvs/serve/bin/python
    state_dir: /srv/modelgate/state
"""

RETURN = r"""
base_url:
  description: The server's root URL.
  type: str
  returned: when started
args:
  description: The serving arguments with the reason for each.
  type: dict
  returned: when started
readiness:
  description: What the readiness check saw (health, models, one completion and its latency).
  type: dict
  returned: when started
log:
  description: The server log on this host.
  type: str
  returned: when started, and on a start-up failure
record:
  description:
    - The variant's deploy record as C({variant, stage, data}), for the controller to store
      in the run directory (M(modelgate.pipeline.run_dir) I(records)).
  type: dict
  returned: when started with O(variant)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["started", "stopped"], "default": "started"},
            "model": {"type": "path"},
            "served_name": {"type": "str", "default": "model"},
            "port": {"type": "int", "default": 8000},
            "python": {"type": "str"},
            "state_dir": {"type": "path", "required": True},
            "device": {"type": "str", "choices": ["cpu", "cuda"], "default": "cpu"},
            "memory_gib": {"type": "float"},
            "overrides": {"type": "dict", "default": {}},
            "cpu_threads": {"type": "int"},
            "cpu_cores": {"type": "list", "elements": "int"},
            "timeout": {"type": "float"},
            "variant": {"type": "str"},
        },
        required_if=[("state", "started", ["model", "python"])],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.process import ProcessSpec, read_state
        from modelgate.serving import serve_local, server_name, stop_local_server

        p = module.params
        state_dir = Path(p["state_dir"])
        if p["state"] == "stopped":
            spec = ProcessSpec(name=server_name(p["port"]), argv=[], state_dir=state_dir)
            if module.check_mode:
                return {"changed": read_state(spec) is not None}
            return stop_local_server(spec)
        return serve_local(
            model=p["model"], served_name=p["served_name"], port=p["port"],
            python=p["python"], state_dir=state_dir, device=p["device"],
            memory_gib=p["memory_gib"], overrides=p["overrides"],
            cpu_threads=p["cpu_threads"], timeout=p["timeout"], variant=p["variant"],
            check_mode=module.check_mode, cpu_cores=p["cpu_cores"] or None)

    run(module, action)


if __name__ == "__main__":
    main()
