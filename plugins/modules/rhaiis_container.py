#!/usr/bin/python
"""Plan and prove a RHAIIS (vLLM) serving container under podman (the rhaiis target)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rhaiis_container
short_description: Plan and prove a RHAIIS (vLLM) serving container under podman
description:
  - C(state=planned) checks the inputs against the host and describes the container, without
    starting it. It makes sure the serving image and the modelcar image are present (pulling
    them when missing), copies the modelcar's non-weight files (config.json, tokenizer) out of
    the image, derives the vLLM arguments from the checkpoint (C(modelgate.serving)), checks
    the chosen CDI GPU devices against the host and the parallelism, and returns the
    parameters for M(containers.podman.podman_container), the quadlet C(.container) unit, and
    whether a container with the same fingerprint (image IDs + arguments) already runs.
  - C(state=ready) waits until C(/health) and C(/v1/models) answer and one completion returns,
    failing fast when the container stops; on failure the container's log is written into the
    run directory and the message carries vLLM's error line and the last log lines. On success
    it records C(<variant>/deploy.json).
  - Port in use (by anything but our container), a missing image, too few GPUs and a model that
    fails to load each fail with a message that names the cause.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
requirements:
  - podman (4.3 or later) on the target host
  - the modelgate package in the target's Python
options:
  state:
    description: C(planned) describes and checks; C(ready) waits for the running container.
    type: str
    choices: [planned, ready]
    default: planned
  name:
    description: The container name (default C(modelgate-vllm-<port>)).
    type: str
  image:
    description: The serving image (RHAIIS, or a stand-in with the same entrypoint).
    type: str
  modelcar:
    description: The modelcar image whose C(/models) is served (by digest, ideally).
    type: str
  served_name:
    description: The model name clients request.
    type: str
    default: model
  port:
    description: The host port the server is published on.
    type: int
    default: 8000
  bind_address:
    description: The host address the port is published on.
    type: str
    default: 0.0.0.0
  container_port:
    description: The port vLLM listens on inside the container.
    type: int
    default: 8000
  gpus:
    description:
      - C(all), C(none) (a CPU image) or a list of GPU indices, as CDI devices
        C(nvidia.com/gpu=<i>).
    type: raw
    default: all
  device:
    description: C(cuda) or C(cpu) (the vLLM CPU stand-in image).
    type: str
    choices: [cuda, cpu]
    default: cuda
  memory_gib:
    description: Accelerator memory (GiB) to plan within; on CPU the RAM for the KV cache.
    type: float
  overrides:
    description: vLLM arguments that win over the derived ones (flag -> value; null removes).
    type: dict
    default: {}
  cpu_threads:
    description: On CPU, how many cores vLLM binds.
    type: int
  cache_volume:
    description: The named volume mounted on the image's C(~/.cache).
    type: str
    default: modelgate-vllm-cache
  environment:
    description: Extra environment variables (never secrets; see I(secrets)).
    type: dict
    default: {}
  secrets:
    description:
      - Tokens, environment variable -> value (e.g. C(HF_TOKEN)). Each is stored as the podman
        secret C(modelgate-<var>) (recreated only when its salted digest changes) and reaches
        the container as C(--secret ...,type=env); values never appear in a result or log.
    type: dict
    default: {}
  security_opt:
    description:
      - podman C(--security-opt) values of the serving container; C(label=disable), what Red Hat's
        RHAIIS commands use, turns SELinux labelling off for it (quadlet C(SecurityLabelDisable)).
        An empty list keeps the host's SELinux policy.
    type: list
    elements: str
    default: [label=disable]
  cdi_spec_dirs:
    description: Where the host's CDI specs are (the GPUs it offers).
    type: list
    elements: path
    default: [/etc/cdi, /var/run/cdi]
  pull:
    description: Pull missing images.
    type: bool
    default: true
  tls_verify:
    description: Verify the modelcar registry's TLS certificate.
    type: bool
    default: true
  registry_username:
    description: Modelcar registry user.
    type: str
    default: ""
  registry_password:
    description: Modelcar registry password or token.
    type: str
    default: ""
  metadata_dir:
    description: Where the modelcar's non-weight files are copied (one directory per image).
    type: path
    default: /var/lib/modelgate/modelcar-metadata
  timeout:
    description: Seconds to wait for readiness; default scales with the model's size.
    type: float
  unit:
    description: With I(state=ready) in quadlet mode, the systemd unit whose journal is the log.
    type: str
  log_file:
    description:
      - With I(state=ready), where the container's log is written on a start-up failure (on
        this host; the pipeline fetches it into the run directory).
    type: path
  variant:
    description: The variant being served; given, the C(ready) result carries its deploy C(record).
    type: str
  plan:
    description: With I(state=ready), the C(state=planned) result (for the record).
    type: dict
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
    details: C(planned) inspects only (no pull; a missing image fails); C(ready) is skipped.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Plan the server
  modelgate.pipeline.rhaiis_container:
    image: registry.redhat.io/rhaiis/vllm-cuda-rhel9:3.2.3
    modelcar: quay.example.com/acme/model@sha256:0123...
    served_name: nemotron
    port: 8000
    gpus: all
  register: plan

- name: Prove it
  modelgate.pipeline.rhaiis_container:
    state: ready
    name: "{{ plan.container.name }}"
    served_name: nemotron
    port: 8000
    timeout: "{{ plan.timeout_s }}"
    plan: "{{ plan }}"
"""

RETURN = r"""
podman_container:
  description: Parameters for containers.podman.podman_container.
  type: dict
  returned: state=planned
quadlet:
  description: The quadlet unit text (empty for a CPU image without GPUs).
  type: str
  returned: state=planned
up_to_date:
  description: A container with the same fingerprint already runs.
  type: bool
  returned: state=planned
fingerprint:
  description: Digest of image IDs, vLLM arguments, environment, devices, mounts and ports.
  type: str
  returned: state=planned
timeout_s:
  description: The readiness timeout, scaled with the model's size.
  type: float
  returned: state=planned
readiness:
  description: What the readiness check saw (health, models, one completion and its latency).
  type: dict
  returned: state=ready
record:
  description:
    - The variant's deploy record as C({variant, stage, data}), for the controller to store
      in the run directory (M(modelgate.pipeline.run_dir) I(records)).
  type: dict
  returned: state=ready with O(variant)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["planned", "ready"], "default": "planned"},
            "name": {"type": "str"},
            "image": {"type": "str"},
            "modelcar": {"type": "str"},
            "served_name": {"type": "str", "default": "model"},
            "port": {"type": "int", "default": 8000},
            "bind_address": {"type": "str", "default": "0.0.0.0"},
            "container_port": {"type": "int", "default": 8000},
            "gpus": {"type": "raw", "default": "all"},
            "device": {"type": "str", "choices": ["cuda", "cpu"], "default": "cuda"},
            "memory_gib": {"type": "float"},
            "overrides": {"type": "dict", "default": {}},
            "cpu_threads": {"type": "int"},
            "cache_volume": {"type": "str", "default": "modelgate-vllm-cache"},
            "environment": {"type": "dict", "default": {}},
            "secrets": {"type": "dict", "default": {}, "no_log": True},
            "security_opt": {"type": "list", "elements": "str", "default": ["label=disable"]},
            "cdi_spec_dirs": {"type": "list", "elements": "path",
                              "default": ["/etc/cdi", "/var/run/cdi"]},
            "pull": {"type": "bool", "default": True},
            "tls_verify": {"type": "bool", "default": True},
            "registry_username": {"type": "str", "default": ""},
            "registry_password": {"type": "str", "default": "", "no_log": True},
            "metadata_dir": {"type": "path",
                             "default": "/var/lib/modelgate/modelcar-metadata"},
            "timeout": {"type": "float"},
            "unit": {"type": "str"},
            "log_file": {"type": "path"},
            "variant": {"type": "str"},
            "plan": {"type": "dict"},
        },
        required_if=[("state", "planned", ["image", "modelcar"])],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate import rhaiis

        p = module.params
        if p["state"] == "planned":
            gpus = p["gpus"]
            if isinstance(gpus, str) and gpus.startswith("["):
                import json

                gpus = json.loads(gpus)
            plan = rhaiis.plan_deployment(
                image=p["image"], modelcar=p["modelcar"], served_name=p["served_name"],
                port=p["port"], metadata_dir=Path(p["metadata_dir"]),
                bind_address=p["bind_address"], container_port=p["container_port"],
                gpus=gpus, device=p["device"], memory_gib=p["memory_gib"],
                overrides=p["overrides"], cpu_threads=p["cpu_threads"],
                cache_volume=p["cache_volume"], environment=p["environment"],
                secret_values=p["secrets"], name=p["name"], pull=p["pull"],
                check_mode=module.check_mode,
                tls_verify=p["tls_verify"], username=p["registry_username"],
                password=p["registry_password"], timeout_s=p["timeout"],
                cdi_dirs=p["cdi_spec_dirs"], security_opt=p["security_opt"])
            return plan.to_dict()
        if module.check_mode:
            return {"changed": False, "skipped_reason": "check mode: nothing was started"}
        return rhaiis.serve_ready(
            name=p["name"] or rhaiis.default_container_name(p["port"]),
            served_name=p["served_name"], port=p["port"], bind_address=p["bind_address"],
            timeout=p["timeout"], unit=p["unit"],
            log_file=Path(p["log_file"]) if p["log_file"] else None, variant=p["variant"],
            plan=p["plan"])

    run(module, action)


if __name__ == "__main__":
    main()
