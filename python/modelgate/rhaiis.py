"""The RHAIIS target: the vLLM image under podman on a GPU host, the model from a modelcar.

One description of the container (:class:`RhaiisContainer`) feeds both ways of running it: the
parameters of ``containers.podman.podman_container`` (hosts without systemd) and a quadlet
``.container`` unit (``modelgate.serving.render_quadlet``; hosts with systemd). Both mount the
modelcar image at ``serving.MODELCAR_MOUNT`` (podman 4's ``--mount type=image`` has no subpath, so
vLLM reads ``<mount>/models``), publish one port, share the host's IPC namespace, keep a cache
volume and take GPUs as CDI devices.

Idempotence comes from a fingerprint of everything that defines the running server: the
serving image's ID, the modelcar's ID, the vLLM arguments, environment, devices, mounts and
ports. It is stored as a container label (and a unit ``Label=``); the same fingerprint on a
running container means nothing is restarted.

Pure functions (argument building, CDI parsing, GPU checks, fingerprints) are separate from the
few that run ``podman`` (image presence, reading the modelcar's metadata, container state,
readiness with the container's log on failure).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.container_tools import run_container_tool
from modelgate.digest import sha256_json
from modelgate.errors import ModelGateError, ToolError
from modelgate.process import EndpointNotReady
from modelgate.registry import RegistryCredentials
from modelgate.serving import (
    MODELCAR_MOUNT,
    Readiness,
    ServingArgs,
    check_ready,
    first_error_line,
)

FINGERPRINT_LABEL = "io.modelgate.fingerprint"
CACHE_DIR = "/opt/app-root/src/.cache"  # the RHAIIS image's $HOME/.cache (user 1001)
CDI_GPU_KIND = "nvidia.com/gpu"
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
DEFAULT_SECURITY_OPT = ("label=disable",)
# Weight files stay in the image; everything else (config, tokenizer, templates) is copied out
# so the memory plan can read config.json and the load clients can use the tokenizer.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# ------------------------------------------------------------------ pure parts


@dataclass
class RhaiisContainer:
    """Everything that defines one RHAIIS serving container."""

    name: str
    image: str
    image_id: str
    modelcar: str
    modelcar_id: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # env var -> podman secret name
    secret_digests: dict[str, str] = field(default_factory=dict)  # a new token restarts
    # Red Hat's RHAIIS commands run the container with SELinux labelling off
    security_opt: list[str] = field(default_factory=lambda: list(DEFAULT_SECURITY_OPT))
    fingerprint: str = ""

    def podman_container_params(self) -> dict[str, Any]:
        """Parameters for ``containers.podman.podman_container`` (state started)."""
        return {
            "name": self.name,
            "image": self.image_id or self.image,
            "command": list(self.command),
            "env": dict(self.env),
            "device": list(self.devices),
            "ipc": "host",
            "publish": list(self.ports),
            "mount": list(self.mounts),
            "volume": list(self.volumes),
            "secrets": [f"{name},type=env,target={var}"
                        for var, name in sorted(self.secrets.items())],
            "label": {FINGERPRINT_LABEL: self.fingerprint},
            "security_opt": list(self.security_opt),
        }

    def podman_run_argv(self) -> list[str]:
        """The equivalent ``podman run`` command line (for the record and for humans)."""
        argv = ["podman", "run", "-d", "--name", self.name, "--ipc=host",
                "--label", f"{FINGERPRINT_LABEL}={self.fingerprint}"]
        argv += [f"--device={d}" for d in self.devices]
        argv += [f"--publish={p}" for p in self.ports]
        argv += [f"--mount={m}" for m in self.mounts]
        argv += [f"--volume={v}" for v in self.volumes]
        argv += [f"--env={k}={v}" for k, v in sorted(self.env.items())]
        argv += [f"--secret={n},type=env,target={v}" for v, n in sorted(self.secrets.items())]
        argv += [f"--security-opt={o}" for o in self.security_opt]
        return [*argv, self.image_id or self.image, *self.command]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, with the podman run argv."""
        return {**asdict(self), "argv": self.podman_run_argv()}


def default_container_name(port: int) -> str:
    """One container per port: serving another variant on the same port replaces it."""
    return f"modelgate-vllm-{port}"


def vllm_command(serving_args: ServingArgs, served_name: str, container_port: int = 8000
                 ) -> list[str]:
    """Arguments appended to the RHAIIS entrypoint (the same ones the quadlet's Exec= has)."""
    args = ServingArgs(args=dict(serving_args.args), reasons=dict(serving_args.reasons))
    args.set("served-model-name", served_name, "requested served name")
    return ["--model", f"{MODELCAR_MOUNT}/models", "--host", "0.0.0.0",
            "--port", str(container_port), *args.to_argv()]


def gpu_devices(gpus: str | Sequence[int], available: Sequence[str]) -> list[str]:
    """CDI device names for ``gpus`` (``all``, ``none`` or indices), checked against the host's.

    ``available`` lists the host's CDI GPU devices (``nvidia.com/gpu=0``, ...). ``none`` (the CPU
    stand-in image) asks for no device.
    """
    if gpus == "none":
        return []
    if not available:
        raise ModelGateError(
            f"no CDI GPU devices ({CDI_GPU_KIND}) on this host",
            field="gpus",
            fix="install the NVIDIA Container Toolkit and generate the CDI spec: "
                "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml",
        )
    if gpus == "all":
        return [f"{CDI_GPU_KIND}=all"]
    if isinstance(gpus, str):
        raise ModelGateError(f"gpus must be 'all', 'none' or a list of indices, got {gpus!r}",
                             field="gpus", fix="use gpus: all, or gpus: [0, 1]")
    wanted = [f"{CDI_GPU_KIND}={int(i)}" for i in gpus]
    if not wanted:
        raise ModelGateError("gpus is an empty list", field="gpus",
                             fix="use gpus: all, gpus: none (CPU image) or gpus: [0, ...]")
    missing = [d for d in wanted if d not in available]
    if missing:
        raise ModelGateError(
            f"GPU device(s) {', '.join(missing)} do not exist on this host "
            f"(CDI lists: {', '.join(available)})",
            field="gpus", fix="choose indices the host has, or gpus: all")
    return wanted


def gpus_needed(args: Mapping[str, Any]) -> int:
    """GPUs vLLM will ask for: tensor-parallel-size x pipeline-parallel-size (default 1 each)."""
    tp = int(args.get("tensor-parallel-size") or 1)
    pp = int(args.get("pipeline-parallel-size") or 1)
    return tp * pp


def check_gpu_count(devices: Sequence[str], available: Sequence[str],
                    args: Mapping[str, Any]) -> int:
    """Fail when the chosen GPUs are fewer than the parallelism asks for; return that count."""
    needed = gpus_needed(args)
    if not devices:  # CPU image: vLLM runs without GPUs; parallelism is not GPU-bound
        return 0
    # CDI's "all" is an alias of every GPU, not one more GPU
    gpus_on_host = [d for d in available if d != f"{CDI_GPU_KIND}=all"]
    have = len(gpus_on_host) if devices == [f"{CDI_GPU_KIND}=all"] else len(devices)
    if have < needed:
        raise ModelGateError(
            f"GPU count too small: tensor-parallel-size x pipeline-parallel-size = {needed} "
            f"GPUs, but {have} {'is' if have == 1 else 'are'} chosen "
            f"({', '.join(devices)}; the host has {len(gpus_on_host)})",
            field="gpus", fix=f"give the container at least {needed} GPUs (gpus: all or a list "
            f"of {needed} indices), or lower tensor-parallel-size")
    return have


def cdi_gpu_names(specs: Iterable[Mapping[str, Any]]) -> list[str]:
    """``nvidia.com/gpu=<name>`` for every device of kind nvidia.com/gpu in CDI specs."""
    names: list[str] = []
    for spec in specs:
        if spec.get("kind") != CDI_GPU_KIND:
            continue
        names += [f"{CDI_GPU_KIND}={d['name']}" for d in spec.get("devices") or []
                  if isinstance(d, Mapping) and d.get("name") is not None]
    return sorted(set(names), key=lambda n: (not n.split("=")[1].isdigit(),
                                             int(n.split("=")[1]) if n.split("=")[1].isdigit()
                                             else 0, n))


def read_cdi_specs(dirs: Sequence[str | Path] = CDI_SPEC_DIRS) -> list[dict[str, Any]]:
    """The CDI spec files (YAML or JSON) under the standard directories."""
    import yaml

    specs: list[dict[str, Any]] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix in (".yaml", ".yml", ".json") and p.is_file():
                data = yaml.safe_load(p.read_text())
                if isinstance(data, dict):
                    specs.append(data)
    return specs


def container_fingerprint(c: RhaiisContainer) -> str:
    """A digest of what defines the server: image IDs, command, env, devices, mounts, ports."""
    data = asdict(c)
    data.pop("fingerprint", None)
    data.pop("name", None)
    return "sha256:" + sha256_json(data)


def build_container(
    serving_args: ServingArgs,
    *,
    image: str,
    image_id: str,
    modelcar: str,
    modelcar_id: str,
    served_name: str,
    port: int,
    bind_address: str = "0.0.0.0",
    container_port: int = 8000,
    devices: Sequence[str] = (),
    cache_volume: str = "modelgate-vllm-cache",
    environment: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    secret_digests: Mapping[str, str] | None = None,
    name: str | None = None,
    security_opt: Sequence[str] = DEFAULT_SECURITY_OPT,
) -> RhaiisContainer:
    """Describe the serving container; its fingerprint covers every input that matters.

    Tokens must come in through ``secrets`` (env var -> podman secret name), never through
    ``environment``, so they stay out of the unit file, the fingerprint and every record (podman
    4 still shows ``type=env`` secrets to root in ``podman inspect``).
    """
    for key in environment or {}:
        if re.search(r"TOKEN|SECRET|PASSWORD|KEY", key, re.IGNORECASE):
            raise ModelGateError(
                f"environment variable {key} looks like a secret", field="environment",
                fix=f"pass it in serve_rhaiis_secrets ({key}: value, no_log) instead")
    env = {"HF_HUB_OFFLINE": "1", **dict(serving_args.env), **dict(environment or {})}
    c = RhaiisContainer(
        name=name or default_container_name(port),
        image=image, image_id=image_id, modelcar=modelcar, modelcar_id=modelcar_id,
        command=vllm_command(serving_args, served_name, container_port),
        env={k: str(v) for k, v in sorted(env.items())},
        devices=list(devices),
        ports=[f"{bind_address}:{port}:{container_port}"],
        mounts=[f"type=image,source={modelcar_id or modelcar},destination={MODELCAR_MOUNT}"],
        volumes=[f"{cache_volume}:{CACHE_DIR}"] if cache_volume else [],
        secrets=dict(sorted((secrets or {}).items())),
        secret_digests=dict(sorted((secret_digests or {}).items())),
        security_opt=list(security_opt),
    )
    c.fingerprint = container_fingerprint(c)
    return c


def add_unit_label(unit: str, key: str, value: str) -> str:
    """Add ``Label=key=value`` to a quadlet's [Container] section (a changed value restarts it)."""
    return unit.replace("[Container]\n", f"[Container]\nLabel={key}={value}\n", 1)


def readiness_host(bind_address: str) -> str:
    """Where the host itself reaches the published port."""
    return "127.0.0.1" if bind_address in ("0.0.0.0", "", "*") else bind_address


# vLLM's multiprocess log prefix: "(Worker pid=35) ERROR 11-30 04:54:05 [file.py:953] "
_VLLM_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s+(?:[A-Z]+\s+\S+\s+\S+\s+\[[^\]]*\]\s+)?")
# Exceptions that only say "see above": the root cause is raised (and logged) before them
_WRAPPERS = ("WorkerProc initialization failed", "Engine core initialization failed",
             "EngineCore failed to start")


def log_excerpt(log: str, lines: int = 20) -> tuple[str | None, str]:
    """vLLM's most telling error line and the last ``lines`` lines of a container log.

    The worker's own exception (e.g. a weight shape that does not fit) is preferred over the
    wrappers vLLM raises afterwards in the engine and API server processes.
    """
    stripped = [_VLLM_PREFIX.sub("", ln) for ln in log.splitlines()]
    causes = [ln for ln in stripped if not any(w in ln for w in _WRAPPERS)]
    err = first_error_line("\n".join(causes)) or first_error_line("\n".join(stripped))
    return err, "\n".join(log.rstrip().splitlines()[-lines:])


# ------------------------------------------------------------------ podman


def image_id(ref: str) -> str | None:
    """The local image ID of ``ref``, or None when podman does not have it."""
    proc = run_container_tool("podman", ["image", "inspect", "--format", "{{.Id}}", ref],
                              timeout=120, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def ensure_image(ref: str, *, what: str, field_name: str, pull: bool = True,
                 tls_verify: bool = True, username: str = "", password: str = ""
                 ) -> tuple[str, bool]:
    """The image ID of ``ref``, pulling it when missing; (id, pulled).

    A missing image that cannot be pulled is a ModelGateError naming the image and podman's
    reason; credentials go through a private auth file, never the command line.
    """
    found = image_id(ref)
    if found:
        return found, False
    if not pull:
        raise ModelGateError(f"{what} {ref} is not present on this host and pulling is off",
                             field=field_name, fix=f"podman pull {ref}, or enable pulling")
    creds = RegistryCredentials.for_ref(ref, username, password)
    with creds.authfile() as auth:
        proc = run_container_tool(
            "podman", ["pull", "-q", f"--tls-verify={'true' if tls_verify else 'false'}",
                       *auth, ref], secrets=creds.secrets, timeout=3600, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        reason_line = next((ln for ln in reversed(reason) if ln.strip()), "no output")
        raise ModelGateError(
            f"{what} {ref} is missing: it is not on this host and `podman pull` failed: "
            f"{reason_line}", field=field_name,
            fix="check the image reference (and the registry's credentials / TLS setting), "
                "or load the image onto the host")
    found = image_id(ref)
    if not found:
        raise ToolError(f"podman pulled {ref} but cannot inspect it")
    return found, True


def image_size(ref: str) -> int | None:
    """The image's size in bytes (podman's uncompressed size): the weights, for timeouts."""
    proc = run_container_tool("podman", ["image", "inspect", "--format", "{{.Size}}", ref],
                              timeout=120, check=False)
    try:
        return int(proc.stdout.strip()) if proc.returncode == 0 else None
    except ValueError:
        return None


def copy_model_metadata(modelcar: str, dest: Path) -> Path:
    """Copy the modelcar's non-weight files (config.json, tokenizer, ...) into ``dest``.

    Runs the modelcar image itself (it has ``sh``: the KServe modelcar contract), without a
    network. Done once per modelcar image ID: a marker names the image it came from.
    """
    dest = Path(dest)
    marker = dest / ".modelgate-modelcar.json"
    if marker.is_file() and json.loads(marker.read_text()).get("image") == modelcar:
        return dest
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    suffixes = " ".join(f"*{s}" for s in WEIGHT_SUFFIXES)
    script = (f'cd /models && for f in *; do case "$f" in {suffixes.replace(" ", "|")}) ;; '
              '*) cp -r "$f" /out/ ;; esac; done')
    proc = run_container_tool("podman", ["run", "--rm", "--network=none", "--user=0",
                                         "--entrypoint=sh", "-v", f"{tmp}:/out", modelcar,
                                         "-c", script], timeout=300, check=False)
    if proc.returncode != 0 or not (tmp / "config.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelGateError(
            f"the modelcar {modelcar} has no readable /models/config.json "
            f"({(proc.stderr or proc.stdout).strip()[-500:] or 'no output'})",
            field="modelcar", fix="serve a modelcar built by the modelcar stage "
            "(a checkpoint under /models, a base image with sh)")
    (tmp / marker.name).write_text(json.dumps({"image": modelcar}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def secret_name(env_var: str) -> str:
    """The podman secret that holds the token for ``env_var`` (HF_TOKEN -> modelgate-hf-token)."""
    return "modelgate-" + re.sub(r"[^a-z0-9]+", "-", env_var.lower()).strip("-")


def secret_digest(name: str, value: str) -> str:
    """A salted digest of a token: compares versions without storing or logging the token."""
    import hashlib

    return hashlib.sha256(f"{name}\0{value}".encode()).hexdigest()


def ensure_secrets(values: Mapping[str, str], *, dry_run: bool = False
                   ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Store tokens as podman secrets; return (env -> secret name, env -> digest, changed names).

    A secret is (re)created only when its digest label differs: podman before 4.5 cannot show a
    secret's data, so the label is what makes this idempotent. Values go in on stdin only.
    """
    names: dict[str, str] = {}
    digests: dict[str, str] = {}
    changed: list[str] = []
    for var, value in sorted(values.items()):
        name = secret_name(var)
        digest = secret_digest(name, str(value))
        names[var], digests[var] = name, digest
        proc = run_container_tool("podman", [
            "secret", "inspect", "--format", '{{index .Spec.Labels "io.modelgate.digest"}}',
            name], timeout=120, check=False)
        if proc.returncode == 0 and proc.stdout.strip() == digest:
            continue
        changed.append(name)
        if dry_run:
            continue
        if proc.returncode == 0:
            run_container_tool("podman", ["secret", "rm", name], timeout=120,
                               what=f"podman secret rm {name}")
        # the value goes in on stdin, and a failure's output is redacted of it
        run_container_tool("podman", ["secret", "create", "--label",
                                      f"io.modelgate.digest={digest}", name, "-"],
                           input=str(value), secrets=[str(value)], timeout=120,
                           what=f"podman secret create {name}")
    return names, digests, changed


def container_state(name: str) -> dict[str, Any] | None:
    """``podman container inspect`` of ``name`` reduced to what we compare, or None."""
    proc = run_container_tool("podman", ["container", "inspect", name], timeout=120,
                              check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)[0]
    state = data.get("State") or {}
    labels = (data.get("Config") or {}).get("Labels") or {}
    return {"running": bool(state.get("Running")), "status": state.get("Status"),
            "exit_code": state.get("ExitCode"), "fingerprint": labels.get(FINGERPRINT_LABEL),
            "id": data.get("Id")}


def container_log(name: str) -> str:
    """The container's whole log (stdout and stderr), or '' when there is none."""
    proc = run_container_tool("podman", ["logs", name], timeout=60, check=False)
    return (proc.stdout or "") + (proc.stderr or "")


def systemd_unit_log(unit: str) -> str:
    """The unit's journal since its last start (quadlet mode), or ''."""
    if shutil.which("journalctl") is None:
        return ""
    proc = subprocess.run(["journalctl", "-u", unit, "-b", "--no-pager", "-o", "cat",
                           "-n", "2000"], capture_output=True, text=True, check=False)
    return proc.stdout


def container_ended(name: str) -> str | None:
    """Why the container no longer runs (``is gone``, ``stopped during start-up (...)``), or
    None while it runs: the early exit of the readiness wait."""
    state = container_state(name)
    if state is None:
        return "is gone"
    if not state["running"]:
        return (f"stopped during start-up ({state['status']}, exit code "
                f"{state['exit_code']})")
    return None


def serve_ready(*, name: str, served_name: str, port: int, bind_address: str,
                timeout: float | None = None, unit: str | None = None,
                log_file: Path | None = None, variant: str | None = None,
                plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RHAIIS target's readiness step: wait until the container serves, prove it.

    With ``variant``, the result carries its deploy ``record`` (built from the ``plan``) for
    the controller to store; on failure the container's log goes to ``log_file`` on this host.
    """
    from modelgate.rundir import stage_record

    base_url = f"http://{readiness_host(bind_address)}:{port}"
    t0 = time.monotonic()
    ready = wait_ready(name, base_url, served_name, timeout or 900.0,
                       log_file=log_file, unit=unit)
    result: dict[str, Any] = {"changed": False, "base_url": base_url, "name": name,
                              "readiness": ready.to_dict(),
                              "waited_s": round(time.monotonic() - t0, 2)}
    if variant:
        plan = plan or {}
        result["record"] = stage_record(variant, "deploy", {
            "variant": variant, "target": "rhaiis", "endpoint": base_url,
            "served_name": served_name, "container": name,
            "model_dir": plan.get("model_dir"), "fingerprint": plan.get("fingerprint"),
            "argv": (plan.get("container") or {}).get("argv"),
            "args": plan.get("serving_args"), "readiness": ready.to_dict(),
            "log": f"podman logs {name}",
        })
    return result


def wait_ready(name: str, base_url: str, served_name: str, timeout: float, *,
               log_file: Path | None = None, unit: str | None = None,
               poll_s: float = 2.0) -> Readiness:
    """Wait until /health answers, then check /v1/models and one completion (check_ready).

    Fails fast when the container stops during start-up. On any failure the container's log
    is written to ``log_file`` and the ToolError carries vLLM's error line and the last lines.
    """
    t0 = time.monotonic()

    def fail(what: str) -> ToolError:
        log = container_log(name) or (systemd_unit_log(unit) if unit else "")
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text(log)
        err, tail = log_excerpt(log)
        msg = f"RHAIIS container {name} {what}"
        if err:
            msg += f"\nvLLM error: {err}"
        msg += f"\nlast log lines:\n{tail}" if tail else "\n(the container left no log)"
        if log_file is not None:
            msg += f"\nwhole log: {log_file}"
        exc = ToolError(msg, field="serving",
                        fix=f"read the log ({log_file or f'podman logs {name}'})")
        if log_file is not None:
            exc.log = str(log_file)  # type: ignore[attr-defined]
        return exc

    try:
        ready = check_ready(base_url, served_name, timeout, ended=lambda: container_ended(name),
                            request_timeout=30.0, interval=poll_s)
    except EndpointNotReady as exc:
        raise fail(exc.reason if exc.ended else
                   f"did not answer {base_url}/health within {timeout:.0f}s") from exc
    except ToolError as exc:
        raise fail(f"started but failed the readiness check: {exc.message}") from exc
    ready.waited_s = round(time.monotonic() - t0, 2)
    return ready


# ------------------------------------------------------------------ plan and prove


@dataclass
class RhaiisPlan:
    """What the role needs to run one server: the container, its unit, and whether it runs."""

    container: RhaiisContainer
    serving_args: ServingArgs
    quadlet: str
    model_dir: str
    timeout_s: float
    current: dict[str, Any] | None
    changes: list[str] = field(default_factory=list)  # images pulled, secrets (re)created

    @property
    def up_to_date(self) -> bool:
        """Our container runs with the same fingerprint: nothing to (re)start."""
        return bool(self.current and self.current["running"]
                    and self.current["fingerprint"] == self.container.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the module's result."""
        return {
            "container": self.container.to_dict(),
            "podman_container": self.container.podman_container_params(),
            "fingerprint": self.container.fingerprint,
            "serving_args": self.serving_args.to_dict(),
            "quadlet": self.quadlet,
            "model_dir": self.model_dir,
            "timeout_s": self.timeout_s,
            "current": self.current,
            "up_to_date": self.up_to_date,
            "changes": self.changes,
            "changed": bool(self.changes),
        }


def plan_deployment(
    *,
    image: str,
    modelcar: str,
    served_name: str,
    port: int,
    metadata_dir: Path,
    bind_address: str = "0.0.0.0",
    container_port: int = 8000,
    gpus: str | Sequence[int] = "all",
    device: str = "cuda",
    memory_gib: float | None = None,
    overrides: Mapping[str, Any] | None = None,
    cpu_threads: int | None = None,
    cache_volume: str = "modelgate-vllm-cache",
    environment: Mapping[str, str] | None = None,
    secret_values: Mapping[str, str] | None = None,
    name: str | None = None,
    pull: bool = True,
    tls_verify: bool = True,
    username: str = "",
    password: str = "",
    timeout_s: float | None = None,
    cdi_dirs: Sequence[str | Path] = CDI_SPEC_DIRS,
    check_mode: bool = False,
    security_opt: Sequence[str] = DEFAULT_SECURITY_OPT,
) -> RhaiisPlan:
    """Check the inputs against the host and describe the container that serves the model.

    Fails, each with a message naming the cause, when: the serving image or the modelcar is
    missing and cannot be pulled, the GPUs chosen are missing or fewer than the parallelism
    needs, or the port is held by something other than our own container. ``secret_values``
    (env var -> token) become podman secrets. ``check_mode`` pulls and writes no secret.
    """
    from modelgate.process import port_in_use
    from modelgate.serving import derive_serving_args, render_quadlet, startup_timeout_s

    image_ref_id, pulled_image = ensure_image(image, what="serving image",
                                              field_name="image",
                                              pull=pull and not check_mode)
    modelcar_id, pulled_modelcar = ensure_image(
        modelcar, what="modelcar", field_name="modelcar", pull=pull and not check_mode,
        tls_verify=tls_verify,
        username=username, password=password)
    model_dir = copy_model_metadata(modelcar, Path(metadata_dir) / modelcar_id[:16])
    weights = image_size(modelcar)
    args = derive_serving_args(model_dir, gpu_memory_gib=memory_gib, device=device,
                               overrides=overrides, served_model_name=served_name,
                               weight_bytes=weights)
    if device == "cpu" and cpu_threads:
        # bind vLLM's OpenMP threads to the first N cores (as the local target does)
        args.env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if cpu_threads == 1 else \
            f"0-{cpu_threads - 1}"
        args.env_reasons["VLLM_CPU_OMP_THREADS_BIND"] = f"CPU: vLLM binds {cpu_threads} core(s)"
    available = cdi_gpu_names(read_cdi_specs(cdi_dirs)) if gpus != "none" else []
    devices = gpu_devices(gpus, available)
    check_gpu_count(devices, available, args.args)
    secrets, digests, changed_secrets = ensure_secrets(secret_values or {}, dry_run=check_mode)
    container = build_container(
        args, image=image, image_id=image_ref_id, modelcar=modelcar, modelcar_id=modelcar_id,
        served_name=served_name, port=port, bind_address=bind_address,
        container_port=container_port, devices=devices, cache_volume=cache_volume,
        environment=environment, secrets=secrets, secret_digests=digests, name=name,
        security_opt=security_opt)
    timeout = timeout_s or startup_timeout_s(weights, device)
    quadlet = ""
    if devices:  # a unit for GPU hosts (quadlet needs systemd; the CPU stand-in runs podman)
        quadlet = render_quadlet(
            args, image=image, modelcar=modelcar, served_name=served_name, port=port,
            container_port=container_port,
            gpus="all" if devices == [f"{CDI_GPU_KIND}=all"] else
            [int(d.split("=")[1]) for d in devices],
            container_name=container.name, cache_volume=cache_volume,
            environment={**args.env, **dict(environment or {})}, secrets=secrets,
            bind_address=bind_address, timeout_start_s=int(timeout),
            security_opt=security_opt)
        quadlet = add_unit_label(quadlet, FINGERPRINT_LABEL, container.fingerprint)
    current = container_state(container.name)
    plan = RhaiisPlan(container=container, serving_args=args, quadlet=quadlet,
                      model_dir=str(model_dir), timeout_s=timeout, current=current,
                      changes=[r for r, p in ((image, pulled_image),
                                              (modelcar, pulled_modelcar)) if p]
                      + changed_secrets)
    host = readiness_host(bind_address)
    if not plan.up_to_date and not (current and current["running"]) and port_in_use(host, port):
        raise ModelGateError(
            f"port {port} on {host} is already in use by another process (not the "
            f"container {container.name})", field="port",
            fix=f"stop whatever listens on port {port} (ss -ltnp 'sport = :{port}'), "
                "or choose another port")
    return plan
