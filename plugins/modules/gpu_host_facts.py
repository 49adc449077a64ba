#!/usr/bin/python
"""Read what a prepared GPU host has, for the later stages; decide whether it must reboot."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_host_facts
short_description: Turn a GPU host's nvidia-smi and CDI output into facts, and decide on a reboot
description:
  - Parses the host's C(nvidia-smi --query-gpu) output (index, name, uuid, memory.total,
    driver_version, compute_cap; csv, noheader, nounits), the C(nvidia-smi) banner and the
    C(nvidia-ctk cdi list) output into the
    facts the later stages use (GPU model, count, memory per GPU, driver and CUDA versions, CDI
    device names, compute capability, architecture and its W4A16 kernels), and checks that CDI
    names every GPU and C(nvidia.com/gpu=all).
  - Decides whether the host must reboot (the driver changed and the loaded module is not the
    installed one), never for the controller.
  - Runs on the controller (delegated to localhost); it reads only its arguments.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  smi_query:
    description: The C(nvidia-smi --query-gpu) output (empty before a driver is loaded).
    type: str
    default: ""
  smi_banner:
    description: The plain C(nvidia-smi) output (its CUDA Version).
    type: str
    default: ""
  cdi_list:
    description: The C(nvidia-ctk cdi list) output.
    type: str
    default: ""
  loaded_version:
    description: The loaded module's version (C(/sys/module/nvidia/version)); empty, none.
    type: str
    default: ""
  installed_version:
    description: The installed driver's version (the C(nvidia-open) package); empty, unknown.
    type: str
    default: ""
  driver_changed:
    description: Whether this run installed or changed the driver.
    type: bool
    default: false
  allow_reboot:
    description: Whether the role may reboot the host.
    type: bool
    default: false
  is_controller:
    description: Whether the host is the controller itself (never rebooted).
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Read the host's GPU facts
  modelgate.pipeline.gpu_host_facts:
    smi_query: "{{ query.stdout }}"
    cdi_list: "{{ cdi.stdout }}"
  delegate_to: localhost
"""

RETURN = r"""
facts:
  description:
    - gpu_model, gpu_count, memory_gib_per_gpu, driver_version, cuda_version, cdi_devices,
      compute_capability, architecture, w4a16_kernels.
  type: dict
  returned: always
cdi_ok:
  description: Whether CDI names every GPU and nvidia.com/gpu=all.
  type: bool
  returned: always
cdi_message:
  description: What the CDI check found.
  type: str
  returned: always
reboot:
  description: The reboot decision, C({needed, reboot, reason}).
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "smi_query": {"type": "str", "default": ""},
            "smi_banner": {"type": "str", "default": ""},
            "cdi_list": {"type": "str", "default": ""},
            "loaded_version": {"type": "str", "default": ""},
            "installed_version": {"type": "str", "default": ""},
            "driver_changed": {"type": "bool", "default": False},
            "allow_reboot": {"type": "bool", "default": False},
            "is_controller": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate import gpu_host

        p = module.params
        gpus = gpu_host.parse_smi_query(p["smi_query"])
        cdi = gpu_host.parse_cdi_list(p["cdi_list"])
        cdi_ok, cdi_message = gpu_host.check_cdi(cdi, len(gpus))
        facts = gpu_host.host_facts(gpus, cuda_version=gpu_host.parse_cuda_version(
            p["smi_banner"]), cdi_devices=cdi)
        reboot = gpu_host.reboot_decision(
            driver_changed=p["driver_changed"], loaded_version=p["loaded_version"].strip() or None,
            installed_version=p["installed_version"].strip() or None,
            allow_reboot=p["allow_reboot"], is_controller=p["is_controller"])
        return {"changed": False, "facts": facts, "cdi_ok": cdi_ok, "cdi_message": cdi_message,
                "reboot": reboot}

    run(module, action)


if __name__ == "__main__":
    main()
