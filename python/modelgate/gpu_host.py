"""A RHEL GPU host for RHAIIS: what it has, what is missing, and how its driver is installed.

The ``gpu_host`` role runs the commands (``lspci -nn``, ``mokutil --sb-state``,
``nvidia-smi``, ``nvidia-ctk cdi list``) and the package steps; this module reads their output
and decides, so every decision is a function with tests on recorded outputs:

- ``preflight``: supported OS, NVIDIA GPUs on the PCI bus (vendor 10de), Secure Boot against
  unsigned DKMS modules, disk for the model and images, the repositories: each a finding with
  the fix, before anything is installed;
- ``driver_plan``: the driver as NVIDIA packages it after 570: on RHEL 8/9 a module stream
  (``<branch>-open`` pinned, ``open-dkms`` latest, or a precompiled stream) then
  ``nvidia-open``; on RHEL 10 no modularity, ``nvidia-open`` with a versionlock for a pinned
  branch. H100/H200 need the open kernel modules;
- ``reboot_decision``: reboot only when the driver changed and the loaded module is not the
  installed one, only when allowed, never the controller;
- ``host_facts``: GPU model, count, memory per GPU, driver and CUDA versions, CDI device
  names, compute capability and architecture, for the serving plan and the preflight.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from modelgate.errors import ModelGateError

NVIDIA_VENDOR = "10de"
GPU_CLASSES = ("0300", "0302")  # VGA compatible, 3D controller (H100/H200 are 3D controllers)
SUPPORTED_RHEL = ("8", "9", "10")
DRIVER_FLAVORS = ("open", "open-dkms", "precompiled")
MIN_BRANCH = 570  # the packaging conventions this follows hold for the releases after 570
CDI_ALL = "nvidia.com/gpu=all"
# compute capability -> architecture, and the vLLM W4A16 kernels it has
ARCHITECTURES = {"8.0": "ampere", "8.6": "ampere", "8.7": "ampere", "8.9": "ada",
                 "9.0": "hopper", "10.0": "blackwell", "12.0": "blackwell"}
W4A16_KERNELS = {"hopper": ["machete", "marlin"], "ampere": ["marlin"], "ada": ["marlin"],
                 "blackwell": ["marlin"]}


# ---------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class PciDevice:
    """One ``lspci -nn`` line."""

    slot: str
    device_class: str
    vendor: str
    device: str
    description: str


_LSPCI = re.compile(r"^(?P<slot>\S+)\s+(?P<cls_name>.*?)\s*\[(?P<cls>[0-9a-f]{4})\]:\s*"
                    r"(?P<desc>.*?)\s*\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\]",
                    re.IGNORECASE)


def parse_lspci(text: str) -> list[PciDevice]:
    """Every device of ``lspci -nn`` output."""
    out = []
    for line in text.splitlines():
        m = _LSPCI.match(line.strip())
        if m:
            out.append(PciDevice(m["slot"], m["cls"].lower(), m["vendor"].lower(),
                                 m["device"].lower(), m["desc"]))
    return out


def nvidia_gpus(devices: Iterable[PciDevice]) -> list[PciDevice]:
    """The NVIDIA GPUs among PCI devices (not their NVSwitch bridges or audio functions)."""
    return [d for d in devices if d.vendor == NVIDIA_VENDOR and d.device_class in GPU_CLASSES]


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi --query-gpu`` reports it."""

    index: int
    name: str
    uuid: str
    memory_mib: int
    driver_version: str
    compute_cap: str


SMI_QUERY = "index,name,uuid,memory.total,driver_version,compute_cap"


_SMI_FIELDS = ("index", "name", "uuid", "memory.total", "driver_version", "compute_cap")


def parse_smi_query(text: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`` output.

    With its header line the columns are taken by name (any subset of the fields, in any
    order: what a user pastes); without one they are :data:`SMI_QUERY`'s, in that order.
    """
    rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO(text))
            if r and not r[0].startswith("$")]
    columns: list[str] | None = None
    out = []
    for cells in rows:
        if columns is None and not cells[0].isdigit() and \
                any(c.split(" [")[0] in _SMI_FIELDS for c in cells):
            columns = [c.split(" [")[0] for c in cells]  # "memory.total [MiB]" -> memory.total
            continue
        names = columns or list(_SMI_FIELDS)
        if len(cells) != len(names):
            raise ModelGateError(f"nvidia-smi row {cells!r} has {len(cells)} fields, not "
                                 f"{len(names)}", field="nvidia-smi",
                                 fix=f"query --query-gpu={SMI_QUERY} --format=csv")
        row = dict(zip(names, cells, strict=True))
        memory = int(re.sub(r"[^0-9]", "", row.get("memory.total", "")) or 0)
        out.append(Gpu(int(row.get("index") or len(out)), row.get("name", ""),
                       row.get("uuid", ""), memory, row.get("driver_version", ""),
                       row.get("compute_cap", "")))
    return out


def enabled_streams(dnf_module_list: str, module: str = "nvidia-driver") -> list[str]:
    """The streams of ``module`` that ``dnf module list`` marks enabled (``[e]``)."""
    return re.findall(rf"^{re.escape(module)}\s+(\S+)\s+\[e\]", dnf_module_list,
                      re.MULTILINE)


_SMI_L = re.compile(r"^GPU (?P<index>\d+): (?P<name>.+?) \(UUID: (?P<uuid>[^)]+)\)")


def parse_smi_list(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi -L`` output (MIG devices, indented, are left out)."""
    return [{"index": int(m["index"]), "name": m["name"], "uuid": m["uuid"]}
            for m in (_SMI_L.match(line) for line in text.splitlines()) if m]


def parse_cuda_version(smi_header: str) -> str | None:
    """The ``CUDA Version`` of ``nvidia-smi``'s banner (the driver's, not a toolkit's)."""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", smi_header)
    return m.group(1) if m else None


def parse_cdi_list(text: str) -> list[str]:
    """The device names ``nvidia-ctk cdi list`` prints (its log line, ``INFO[0000] Found N CDI
    devices`` on a terminal, ``level=info msg=...`` elsewhere and after the list, skipped)."""
    return [line.strip() for line in text.splitlines()
            if re.match(r"^\s*[a-z0-9.-]+/[a-z0-9.-]+=\S+\s*$", line)]


def check_cdi(names: Sequence[str], gpu_count: int) -> tuple[bool, str]:
    """``nvidia.com/gpu=all`` and one index name per GPU, else what is missing."""
    indices = sorted(n for n in names if re.fullmatch(r"nvidia\.com/gpu=\d+", n))
    problems = []
    if CDI_ALL not in names:
        problems.append(f"no {CDI_ALL}")
    if len(indices) != gpu_count:
        problems.append(f"{len(indices)} GPU index name(s) for {gpu_count} GPU(s)")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        problems.append(f"duplicate names {dupes} (two CDI specs: /etc/cdi and /var/run/cdi)")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(indices)} GPU(s) and {CDI_ALL}"


def secure_boot(mokutil_text: str) -> bool | None:
    """``mokutil --sb-state``: True enabled, False disabled, None unknown (no EFI, no mokutil)."""
    low = mokutil_text.lower()
    if "secureboot enabled" in low:
        return True
    if "secureboot disabled" in low or "not supported" in low:
        return False
    return None


# ---------------------------------------------------------------------- decisions


@dataclass
class Finding:
    """One preflight check."""

    check: str
    ok: bool
    message: str
    fix: str = ""
    blocking: bool = True


def preflight(*, distribution: str, major: str, pci: Sequence[PciDevice],
              secure_boot_state: bool | None, flavor: str, free_bytes: int | None,
              need_bytes: int, repos_ok: bool | None, repos_message: str = "",
              require_gpus: bool = True) -> list[Finding]:
    """What the host must have before anything is installed, each with its fix."""
    out = []
    supported = distribution == "RedHat" and major in SUPPORTED_RHEL
    out.append(Finding(
        "os", supported,
        f"{distribution} {major}" + ("" if supported else ": gpu_host prepares RHEL "
                                     f"{'/'.join(SUPPORTED_RHEL)} only"),
        "" if supported else "run it on a RHEL 9 (or 8, 10) host; other hosts must come with "
                             "their driver, toolkit and podman installed"))
    gpus = nvidia_gpus(pci)
    names = sorted({g.description for g in gpus})
    out.append(Finding(
        "gpus", bool(gpus),
        f"{len(gpus)} NVIDIA GPU(s) on the PCI bus" + (
            f": {', '.join(names)}" if names
            else " (lspci -nn shows no vendor 10de 3D/VGA controller)"),
        "" if gpus else "run it on a GPU host, or set gpu_host_require_gpus: false to prepare "
                        "podman and the tools only",
        blocking=require_gpus))
    dkms = flavor in ("open", "open-dkms")
    sb_blocks = bool(secure_boot_state) and dkms
    out.append(Finding(
        "secure_boot", not sb_blocks,
        {True: "Secure Boot is enabled", False: "Secure Boot is disabled",
         None: "Secure Boot state unknown (no mokutil or no EFI)"}[secure_boot_state]
        + (": DKMS builds modules the firmware will not load unsigned" if sb_blocks else ""),
        "enroll a Machine Owner Key that signs the DKMS modules (dkms with mok signing), "
        "disable Secure Boot, or use gpu_host_driver_flavor: precompiled (signed modules)"
        if sb_blocks else ""))
    if free_bytes is not None:
        enough = free_bytes >= need_bytes
        out.append(Finding(
            "disk", enough,
            f"{free_bytes / 2**30:.0f} GiB free where the store lives, "
            f"{need_bytes / 2**30:.0f} GiB needed",
            "" if enough else "free space or point gpu_host_store_dir at a larger filesystem, "
                              "or lower gpu_host_min_free_gib if the model is smaller"))
    if repos_ok is not None:
        out.append(Finding("repositories", repos_ok, repos_message or (
            "the repositories answer" if repos_ok else "the repositories do not answer"),
            "" if repos_ok else "register the host (subscription-manager register), or mirror "
                                "the repositories and set gpu_host_cuda_repo_url"))
    return out


def failed(findings: Sequence[Finding]) -> list[Finding]:
    """The blocking findings that failed."""
    return [f for f in findings if not f.ok and f.blocking]


@dataclass(frozen=True)
class DriverPlan:
    """How the driver is installed on one OS release."""

    os_major: str
    flavor: str
    branch: str
    module_stream: str       # RHEL 8/9: "nvidia-driver:<stream>"; RHEL 10: ""
    packages: tuple[str, ...]
    versionlock: str         # RHEL 10 pinned: the dnf versionlock pattern
    kernel_headers: bool     # DKMS builds against the running kernel
    blocks_kernel_updates: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the role."""
        out = asdict(self)
        out["packages"] = list(self.packages)
        return out


def driver_plan(os_major: str, flavor: str, branch: str = "") -> DriverPlan:
    """The module stream (or versionlock) and packages for ``flavor`` on RHEL ``os_major``."""
    if os_major not in SUPPORTED_RHEL:
        raise ModelGateError(f"RHEL {os_major} is not one gpu_host installs drivers on",
                             field="ansible_distribution_major_version",
                             fix=f"use RHEL {' / '.join(SUPPORTED_RHEL)}")
    if flavor not in DRIVER_FLAVORS:
        raise ModelGateError(f"unknown driver flavor {flavor!r}", field="gpu_host_driver_flavor",
                             fix=f"use one of {list(DRIVER_FLAVORS)}")
    branch = str(branch or "").strip()
    if branch and (not branch.isdigit() or int(branch) <= MIN_BRANCH - 1):
        raise ModelGateError(f"driver branch {branch!r} is not a release branch >= {MIN_BRANCH}",
                             field="gpu_host_driver_branch", fix="e.g. 580 (empty: the latest)")
    if flavor == "open" and not branch:
        raise ModelGateError("the open flavor pins a branch, and none is given",
                             field="gpu_host_driver_branch",
                             fix="give one (e.g. 580), or use gpu_host_driver_flavor: open-dkms "
                                 "for the latest")
    dkms = flavor in ("open", "open-dkms")
    if os_major == "10":
        if flavor == "precompiled":
            raise ModelGateError("RHEL 10 has no precompiled driver streams (no modularity)",
                                 field="gpu_host_driver_flavor", fix="use open or open-dkms")
        return DriverPlan(os_major, flavor, branch, "", ("nvidia-open",),
                          f"*nvidia*{branch}*" if branch else "", True, False)
    if flavor == "precompiled":
        stream = branch or "latest"
        return DriverPlan(os_major, flavor, branch, f"nvidia-driver:{stream}",
                          ("nvidia-open",), "", False, True)
    stream = f"{branch}-open" if flavor == "open" else "open-dkms"
    return DriverPlan(os_major, flavor, branch, f"nvidia-driver:{stream}", ("nvidia-open",),
                      "", dkms, False)


def reboot_decision(*, driver_changed: bool, loaded_version: str | None,
                    installed_version: str | None, allow_reboot: bool,
                    is_controller: bool) -> dict[str, Any]:
    """Whether to reboot now, and why (a controller never reboots itself)."""
    current = bool(loaded_version) and loaded_version == installed_version
    if current or (not driver_changed and loaded_version):
        return {"needed": False, "reboot": False,
                "reason": f"the loaded module is the installed driver ({loaded_version})"}
    why = (f"the driver {installed_version or '?'} is installed but "
           + (f"{loaded_version} is loaded" if loaded_version else "no NVIDIA module is loaded"))
    if is_controller:
        return {"needed": True, "reboot": False,
                "reason": why + "; this host is the controller, which never reboots itself"}
    if not allow_reboot:
        return {"needed": True, "reboot": False,
                "reason": why + "; gpu_host_allow_reboot is false: reboot it, then run again"}
    return {"needed": True, "reboot": True, "reason": why}


def host_facts(gpus: Sequence[Gpu], *, cuda_version: str | None,
               cdi_devices: Sequence[str]) -> dict[str, Any]:
    """What the later stages take from this host instead of inventory numbers."""
    if not gpus:
        return {"gpu_count": 0, "gpu_model": None, "memory_gib_per_gpu": None,
                "driver_version": None, "cuda_version": cuda_version,
                "cdi_devices": list(cdi_devices), "compute_capability": None,
                "architecture": None, "w4a16_kernels": []}
    models = sorted({g.name for g in gpus})
    caps = sorted({g.compute_cap for g in gpus})
    arch = ARCHITECTURES.get(caps[0]) if len(caps) == 1 else None
    return {
        "gpu_count": len(gpus), "gpu_model": models[0] if len(models) == 1 else models,
        "memory_gib_per_gpu": round(min(g.memory_mib for g in gpus) / 1024, 1),
        "driver_version": gpus[0].driver_version, "cuda_version": cuda_version,
        "cdi_devices": list(cdi_devices), "compute_capability": caps[0] if len(caps) == 1
        else caps, "architecture": arch, "w4a16_kernels": W4A16_KERNELS.get(arch or "", []),
    }
