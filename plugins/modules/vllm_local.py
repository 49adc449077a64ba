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
  - On a start-up failure the server's log is copied into the run directory and the failure
    message carries vLLM's error line.
version_added: "0.1.0"
author: ModelGate
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
  timeout:
    description: Seconds to wait for readiness; default scales with the model's size.
    type: float
  run_path:
    description: Run directory to record C(<variant>/deploy.json) into.
    type: path
  variant:
    description: The variant being served (for the record).
    type: str
attributes:
  check_mode:
    support: partial
    details: Reports whether the server would be started or stopped; starts nothing.
  diff_mode:
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
            "timeout": {"type": "float"},
            "run_path": {"type": "path"},
            "variant": {"type": "str"},
        },
        required_if=[("state", "started", ["model", "python"])],
        supports_check_mode=True,
    )

    def action() -> dict:
        import shutil
        from pathlib import Path

        from modelgate.errors import ToolError
        from modelgate.geometry import weight_bytes
        from modelgate.process import ProcessSpec, read_state
        from modelgate.rundir import RunDir
        from modelgate.serving import (
            derive_serving_args,
            local_server_spec,
            server_name,
            start_local_server,
            startup_timeout_s,
            stop_local_server,
        )

        p = module.params
        state_dir = Path(p["state_dir"])
        if p["state"] == "stopped":
            spec = ProcessSpec(name=server_name(p["port"]), argv=[], state_dir=state_dir)
            if module.check_mode:
                return {"changed": read_state(spec) is not None}
            return stop_local_server(spec)
        args = derive_serving_args(
            p["model"], gpu_memory_gib=p["memory_gib"], device=p["device"],
            overrides=p["overrides"], served_model_name=p["served_name"],
        )
        spec = local_server_spec(p["model"], p["served_name"], p["port"], p["python"], args,
                                 state_dir, cpu_threads=p["cpu_threads"])
        if module.check_mode:
            current = read_state(spec)
            return {"changed": not (current and current.get("fingerprint") == spec.fingerprint),
                    "args": args.to_dict()}
        timeout = p["timeout"] or startup_timeout_s(weight_bytes(p["model"]), p["device"])
        run_dir = RunDir(Path(p["run_path"])) if p["run_path"] and p["variant"] else None
        try:
            result = start_local_server(spec, timeout)
        except ToolError:
            if run_dir is not None and spec.logfile.exists():
                shutil.copy2(spec.logfile, run_dir.variant_dir(p["variant"]) / "server.log")
            raise
        result["args"] = args.to_dict()
        if run_dir is not None:
            run_dir.record(p["variant"], "deploy", {
                "variant": p["variant"], "target": "local", "endpoint": result["base_url"],
                "served_name": p["served_name"], "model_dir": p["model"],
                "argv": spec.argv, "env": spec.env, "args": args.to_dict(),
                "readiness": result.get("readiness"), "startup_s": result.get("startup_s"),
                "log": str(spec.logfile),
            })
        return result

    run(module, action)


if __name__ == "__main__":
    main()
