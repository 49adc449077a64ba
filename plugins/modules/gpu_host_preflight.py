#!/usr/bin/python
"""Decide, from what a GPU host reported, whether it can be prepared, and how its driver goes on."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_host_preflight
short_description: Check a RHEL GPU host before anything is installed, and plan its driver
description:
  - Reads what the gpu_host role gathered on the host (C(lspci -nn), C(mokutil --sb-state), the
    OS facts, the free disk, whether the repositories answer) and returns each check with its
    fix; fails, listing every blocking one, before anything is installed.
  - Plans the NVIDIA driver as NVIDIA packages it after 570 (RHEL 8/9 a module stream then
    C(nvidia-open); RHEL 10 C(nvidia-open) with a versionlock for a pinned branch).
  - Runs on the controller (delegated to localhost); it reads only its arguments.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  distribution:
    description: C(ansible_facts.distribution) of the host.
    type: str
    required: true
  major:
    description: C(ansible_facts.distribution_major_version).
    type: str
    required: true
  lspci:
    description: The host's C(lspci -nn) output (empty when lspci is missing).
    type: str
    default: ""
  mokutil:
    description: The host's C(mokutil --sb-state) output (empty when unknown).
    type: str
    default: ""
  free_bytes:
    description: Free bytes on the filesystem of the store (omitted, not checked).
    type: int
  min_free_gib:
    description: GiB the model, its variants and the images need there.
    type: int
    default: 200
  repos_ok:
    description: Whether the host's package repositories answered (omitted, not checked).
    type: bool
  repos_message:
    description: What the repository check said.
    type: str
    default: ""
  flavor:
    description: The driver flavor (open pins O(branch); open-dkms the latest; precompiled).
    type: str
    choices: [open, open-dkms, precompiled]
    default: open
  branch:
    description: The driver branch (e.g. 580); empty, the latest.
    type: str
    default: ""
  require_gpus:
    description: Fail on a host without NVIDIA GPUs (false, prepare podman and the tools only).
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Check the host and plan its driver
  modelgate.pipeline.gpu_host_preflight:
    distribution: "{{ ansible_facts.distribution }}"
    major: "{{ ansible_facts.distribution_major_version }}"
    lspci: "{{ lspci.stdout }}"
    flavor: open
    branch: "580"
  delegate_to: localhost
"""

RETURN = r"""
findings:
  description: Every check, C({check, ok, message, fix, blocking}).
  type: list
  returned: always
gpus:
  description: The NVIDIA GPUs on the PCI bus, C({slot, device, description}).
  type: list
  returned: always
install_gpu_stack:
  description: Whether the driver and container toolkit steps run (RHEL with GPUs).
  type: bool
  returned: always
skip_reason:
  description: Why the GPU steps are skipped, when they are.
  type: str
  returned: always
driver:
  description:
    - The driver plan (module_stream, packages, versionlock, kernel_headers,
      blocks_kernel_updates).
  type: dict
  returned: when the GPU steps run
"""

import dataclasses

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "distribution": {"type": "str", "required": True},
            "major": {"type": "str", "required": True},
            "lspci": {"type": "str", "default": ""},
            "mokutil": {"type": "str", "default": ""},
            "free_bytes": {"type": "int"},
            "min_free_gib": {"type": "int", "default": 200},
            "repos_ok": {"type": "bool"},
            "repos_message": {"type": "str", "default": ""},
            "flavor": {"type": "str", "choices": ["open", "open-dkms", "precompiled"],
                       "default": "open"},
            "branch": {"type": "str", "default": ""},
            "require_gpus": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate import gpu_host

        p = module.params
        pci = gpu_host.parse_lspci(p["lspci"])
        gpus = gpu_host.nvidia_gpus(pci)
        rhel = p["distribution"] == "RedHat" and p["major"] in gpu_host.SUPPORTED_RHEL
        findings = gpu_host.preflight(
            distribution=p["distribution"], major=p["major"], pci=pci,
            secure_boot_state=gpu_host.secure_boot(p["mokutil"]), flavor=p["flavor"],
            free_bytes=p["free_bytes"], need_bytes=p["min_free_gib"] * 2**30,
            repos_ok=p["repos_ok"], repos_message=p["repos_message"],
            require_gpus=p["require_gpus"])
        if not gpus and not p["require_gpus"]:
            for f in findings:  # no GPU stack is installed here: what it would need is moot
                if f.check in ("os", "secure_boot"):
                    f.blocking = False
        result = {
            "changed": False,
            "findings": [dataclasses.asdict(f) for f in findings],
            "gpus": [{"slot": g.slot, "device": g.device, "description": g.description}
                     for g in gpus],
            "install_gpu_stack": bool(gpus) and rhel,
            "skip_reason": "" if gpus and rhel else (
                "no NVIDIA GPU on the PCI bus" if not gpus else
                f"{p['distribution']} {p['major']} is not RHEL 8/9/10"),
        }
        bad = gpu_host.failed(findings)
        if bad:
            module.fail_json(
                msg="the host cannot be prepared: " + "; ".join(
                    f"{f.check}: {f.message}. Fix: {f.fix}" for f in bad),
                **{k: v for k, v in result.items() if k != "changed"})
        if result["install_gpu_stack"]:
            result["driver"] = gpu_host.driver_plan(p["major"], p["flavor"],
                                                    p["branch"]).to_dict()
        return result

    run(module, action)


if __name__ == "__main__":
    main()
