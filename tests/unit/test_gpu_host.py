"""The gpu_host role's decisions, on recorded outputs of real GPU hosts.

Where each recording comes from: tests/data/gpu_host/README.md (the H200 ones were taken on
this project's H200 machine; the others are public posts).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ansible_expression
from modelgate import gpu_host
from modelgate.errors import ModelGateError

DATA = Path(__file__).resolve().parents[1] / "data" / "gpu_host"


def _sections(name: str) -> dict[str, str]:
    """A recording's output per command (``$ <command>`` lines start each one)."""
    out: dict[str, str] = {}
    command = ""
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("$ "):
            command = line[2:].strip()
            out[command] = ""
        elif not line.startswith("[exit "):
            out[command] = out.get(command, "") + line + "\n"
    return out


def test_the_h200_query_and_list():
    query = _sections("h200-device-nvidia-smi-query.txt")
    full = next(v for k, v in query.items() if "uuid" in k)
    (gpu,) = gpu_host.parse_smi_query(full)
    assert gpu == gpu_host.Gpu(0, "NVIDIA H200", "GPU-8ba00cf2-cc34-e8a1-6a1a-cd101224ecd5",
                               143771, "580.159.04", "9.0")
    listed = gpu_host.parse_smi_list((DATA / "h200-device-nvidia-smi-L.txt").read_text())
    assert listed == [{"index": 0, "name": "NVIDIA H200",
                       "uuid": "GPU-8ba00cf2-cc34-e8a1-6a1a-cd101224ecd5"}]
    banner = (DATA / "h200-device-nvidia-smi.txt").read_text()
    assert gpu_host.parse_cuda_version(banner) == "13.0"
    facts = gpu_host.host_facts([gpu], cuda_version="13.0",
                                cdi_devices=["nvidia.com/gpu=0", gpu_host.CDI_ALL])
    assert facts["gpu_count"] == 1 and facts["gpu_model"] == "NVIDIA H200"
    assert facts["memory_gib_per_gpu"] == 140.4
    assert facts["architecture"] == "hopper" and facts["w4a16_kernels"] == ["machete", "marlin"]
    assert facts["driver_version"] == "580.159.04"


def test_a_short_row_is_a_clear_error():
    with pytest.raises(ModelGateError, match="6"):
        gpu_host.parse_smi_query("0, NVIDIA H200, 143771, 580.159.04, 9.0\n")


@pytest.mark.parametrize("os_major,flavor,branch,stream,lock,headers,blocks", [
    ("9", "open", "580", "nvidia-driver:580-open", "", True, False),
    ("9", "open-dkms", "", "nvidia-driver:open-dkms", "", True, False),
    ("8", "precompiled", "", "nvidia-driver:latest", "", False, True),
    ("9", "precompiled", "580", "nvidia-driver:580", "", False, True),
    ("10", "open", "580", "", "*nvidia*580*", True, False),
    ("10", "open-dkms", "", "", "", True, False),
])
def test_driver_streams_as_nvidia_packages_them(os_major, flavor, branch, stream, lock, headers,
                                                blocks):
    plan = gpu_host.driver_plan(os_major, flavor, branch)
    assert plan.module_stream == stream and plan.versionlock == lock
    assert plan.packages == ("nvidia-open",)  # H100/H200 need the open kernel modules
    assert plan.kernel_headers is headers and plan.blocks_kernel_updates is blocks


@pytest.mark.parametrize("os_major,flavor,branch,field", [
    ("9", "open", "", "gpu_host_driver_branch"),
    ("9", "open", "550", "gpu_host_driver_branch"),
    ("9", "proprietary", "580", "gpu_host_driver_flavor"),
    ("10", "precompiled", "", "gpu_host_driver_flavor"),
    ("7", "open-dkms", "", "ansible_distribution_major_version"),
])
def test_driver_plan_refuses_what_cannot_work(os_major, flavor, branch, field):
    with pytest.raises(ModelGateError) as exc:
        gpu_host.driver_plan(os_major, flavor, branch)
    assert exc.value.field == field


@pytest.mark.parametrize("changed,loaded,installed,allow,controller,needed,reboot", [
    (False, "580.159.04", "580.159.04", True, False, False, False),
    (True, "580.159.04", "580.159.04", True, False, False, False),   # e.g. DKMS rebuilt same
    (True, "570.172.08", "580.159.04", True, False, True, True),
    (True, None, "580.159.04", True, False, True, True),
    (True, None, "580.159.04", False, False, True, False),
    (True, None, "580.159.04", True, True, True, False),             # never the controller
])
def test_reboot_decision(changed, loaded, installed, allow, controller, needed, reboot):
    out = gpu_host.reboot_decision(driver_changed=changed, loaded_version=loaded,
                                   installed_version=installed, allow_reboot=allow,
                                   is_controller=controller)
    assert (out["needed"], out["reboot"]) == (needed, reboot), out["reason"]
    if controller:
        assert "controller" in out["reason"]


def test_preflight_on_a_host_without_gpus_names_each_missing_thing():
    findings = gpu_host.preflight(distribution="Debian", major="12", pci=[],
                                  secure_boot_state=None, flavor="open-dkms",
                                  free_bytes=10 * 2**30, need_bytes=200 * 2**30,
                                  repos_ok=None, require_gpus=False)
    by = {f.check: f for f in findings}
    assert not by["os"].ok and "RHEL" in by["os"].message and by["os"].fix
    assert not by["gpus"].ok and "10de" in by["gpus"].message and not by["gpus"].blocking
    assert not by["disk"].ok and "200 GiB needed" in by["disk"].message
    assert {f.check for f in gpu_host.failed(findings)} == {"os", "disk"}


def test_secure_boot_blocks_dkms_but_not_precompiled():
    pci = gpu_host.parse_lspci("17:00.0 3D controller [0302]: NVIDIA Corporation GH100 "
                               "[H100 SXM5 80GB] [10de:2330] (rev a1)\n")
    assert [d.device for d in gpu_host.nvidia_gpus(pci)] == ["2330"]
    kw = {"distribution": "RedHat", "major": "9", "pci": pci, "secure_boot_state": True,
          "free_bytes": None, "need_bytes": 0, "repos_ok": True}
    dkms = {f.check: f for f in gpu_host.preflight(flavor="open-dkms", **kw)}
    assert not dkms["secure_boot"].ok and "Machine Owner Key" in dkms["secure_boot"].fix
    pre = {f.check: f for f in gpu_host.preflight(flavor="precompiled", **kw)}
    assert pre["secure_boot"].ok
    assert gpu_host.secure_boot("SecureBoot enabled\n") is True
    assert gpu_host.secure_boot("SecureBoot disabled\n") is False
    assert gpu_host.secure_boot("EFI variables are not supported on this system\n") is False
    assert gpu_host.secure_boot("") is None


def test_cdi_names_are_checked_against_the_gpus():
    names = ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=GPU-a", "nvidia.com/gpu=all"]
    assert gpu_host.check_cdi(names, 2)[0]
    ok, why = gpu_host.check_cdi(names[:1], 2)
    assert not ok and "no nvidia.com/gpu=all" in why and "1 GPU index name(s) for 2" in why
    ok, why = gpu_host.check_cdi([*names, "nvidia.com/gpu=0"], 2)
    assert not ok and "duplicate" in why
    text = "INFO[0000] Found 4 CDI devices\nnvidia.com/gpu=0\nnvidia.com/gpu=all\n"
    assert gpu_host.parse_cdi_list(text) == ["nvidia.com/gpu=0", "nvidia.com/gpu=all"]


def _output(name: str) -> str:
    return "".join(_sections(name).values())


def test_published_h100_and_h200_pci_listings():
    four = gpu_host.nvidia_gpus(gpu_host.parse_lspci(_output("lspci-nn-h100.txt")))
    assert len(four) == 4 and {d.device for d in four} == {"2330"}
    hgx = gpu_host.parse_lspci(_output("lspci-Dnn-h100x8-nvswitch.txt"))
    gpus = gpu_host.nvidia_gpus(hgx)
    # the NVSwitch bridges (class 0680) and the BMC's ASPEED VGA (vendor 1a03) are not GPUs
    assert len(gpus) == 8 and all(g.slot.startswith("0000:") for g in gpus)
    assert sum(d.device == "22a3" for d in hgx) == 4
    h200 = gpu_host.nvidia_gpus(gpu_host.parse_lspci(_output("lspci-nn-h200.txt")))
    assert len(h200) == 8 and {d.device for d in h200} == {"2335"}
    assert all("H200" in d.description for d in h200)


def test_published_cdi_lists():
    eight = gpu_host.parse_cdi_list(_output("nvidia-ctk-cdi-list-h100x8.txt"))
    assert len(eight) == 17 and eight[-1] == gpu_host.CDI_ALL  # "Found 17 CDI devices"
    assert gpu_host.check_cdi(eight, 8) == (True, "8 GPU(s) and nvidia.com/gpu=all")
    assert not gpu_host.check_cdi(eight, 7)[0]
    one = gpu_host.parse_cdi_list(_output("nvidia-ctk-cdi-list-1gpu.txt"))
    assert len(one) == 3 and gpu_host.check_cdi(one, 1)[0]


def test_published_nvidia_smi_outputs():
    listed = gpu_host.parse_smi_list(_output("nvidia-smi-L-h100x8.txt"))
    assert [g["index"] for g in listed] == list(range(8))
    assert {g["name"] for g in listed} == {"NVIDIA H100 80GB HBM3"}
    # a query with other fields, as users paste it: taken by its header
    (one,) = gpu_host.parse_smi_query(_output("nvidia-smi-query-h100-1gpu.txt"))
    assert (one.name, one.driver_version, one.memory_mib, one.compute_cap) == (
        "NVIDIA H100 80GB HBM3", "580.82.07", 81559, "9.0")
    eight = gpu_host.parse_smi_query(_output("nvidia-smi-query-h100.txt"))
    assert [g.index for g in eight] == list(range(8)) and {g.compute_cap for g in eight} == {"9.0"}
    facts = gpu_host.host_facts(eight, cuda_version=None, cdi_devices=[])
    assert facts["gpu_count"] == 8 and facts["architecture"] == "hopper"


def test_published_secure_boot_and_dnf_stream_outputs():
    assert gpu_host.secure_boot(_output("mokutil-sb-state.txt")) is False
    assert gpu_host.secure_boot(_output("mokutil-sb-state-enabled.txt")) is True
    assert gpu_host.enabled_streams(_output("dnf-module-list-nvidia-driver.txt")) == ["latest"]


def test_the_role_reads_dnf_streams_through_the_filter(tmp_path: Path):
    streams = ansible_expression(
        "lookup('file', f) | modelgate.pipeline.dnf_enabled_streams", tmp_path,
        f=str(DATA / "dnf-module-list-nvidia-driver.txt"))
    assert streams == ["latest"]


def test_the_sysfs_listing_reads_like_lspci():
    # what the role prints from /sys/bus/pci/devices where lspci is not installed yet
    text = ("0000:1b:00.0 Class [0302]: Device [10de:2330]\n"
            "0000:07:00.0 Class [0680]: Device [10de:22a3]\n"
            "0000:04:00.0 Class [0300]: Device [1a03:2000]\n")
    gpus = gpu_host.nvidia_gpus(gpu_host.parse_lspci(text))
    assert [(g.slot, g.device) for g in gpus] == [("0000:1b:00.0", "2330")]
