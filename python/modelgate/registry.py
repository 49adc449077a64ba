"""OCI registries: the credentials every client uses, and the local registry.

:class:`RegistryCredentials` is the one holder of a registry's username and password: the
native push client sends them as an HTTP header, podman and skopeo read them from a private
auth file, and :func:`redact` keeps them out of every error text.

The local registry (Debian's ``docker-registry``, distribution 2.8) runs as a supervised process.
The modelcar stage pushes images there when no external registry is configured, and podman on
the same host pulls them back (plain HTTP on the loopback address, so ``--tls-verify=false``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from modelgate import process
from modelgate.digest import sha256_json
from modelgate.errors import ModelGateError

DEFAULT_ADDR = "127.0.0.1:5000"
REGISTRY_BINARY = "docker-registry"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret in ``secrets`` replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class RegistryCredentials:
    """A username and password for one registry, and the only forms in which they leave us.

    Empty strings count as absent (an unset Ansible option is ``""``); one without the other
    is refused. The password reaches a tool only through :meth:`authfile` (podman, skopeo) or
    :attr:`basic` (an HTTP header), never an argv or a log; :attr:`secrets` is what
    :meth:`redact` hides.
    """

    def __init__(self, registry: str, username: str | None = None,
                 password: str | None = None) -> None:
        username, password = username or None, password or None
        if (username is None) != (password is None):
            raise ModelGateError("registry credentials need both a username and a password",
                                 field="username/password", fix="set both, or neither")
        self.registry = registry
        self.username = username
        self._password = password

    @classmethod
    def for_ref(cls, ref: str, username: str | None = None,
                password: str | None = None) -> RegistryCredentials:
        """Credentials for the registry of an image reference (``host[:port]/repo:tag``)."""
        return cls(ref.split("/", 1)[0], username, password)

    def __bool__(self) -> bool:
        return self.username is not None

    def __repr__(self) -> str:
        return (f"RegistryCredentials({self.registry!r}, username={self.username!r}, "
                f"password={'***' if self._password else None})")

    @property
    def basic(self) -> str | None:
        """The ``Authorization: Basic`` value (base64 of ``user:password``), or None."""
        if self.username is None or self._password is None:
            return None
        return base64.b64encode(f"{self.username}:{self._password}".encode()).decode()

    @property
    def secrets(self) -> list[str]:
        """The strings no output may show: the password and its Basic token."""
        return [s for s in (self._password, self.basic) if s]

    def redact(self, text: str) -> str:
        """``text`` with the password and its Basic token replaced by ``***``."""
        return redact(text, self.secrets)

    @contextlib.contextmanager
    def authfile(self) -> Iterator[list[str]]:
        """``["--authfile", path]`` for podman or skopeo while the block runs; ``[]`` without
        credentials.

        The file (``{"auths": {registry: {"auth": basic}}}``) is created 0600 in a fresh 0700
        directory, and both are removed when the block ends, however it ends.
        """
        if not self:
            yield []
            return
        folder = tempfile.mkdtemp(prefix="modelgate-auth-")  # 0700
        try:
            path = Path(folder) / "auth.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"auths": {self.registry: {"auth": self.basic}}}, f)
            yield ["--authfile", str(path)]
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def parse_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port``; the host defaults to 127.0.0.1 when ``addr`` is ``:port``."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ModelGateError(
            f"registry address {addr!r} is not host:port", field="addr",
            fix="use e.g. 127.0.0.1:5000",
        )
    return (host or "127.0.0.1"), int(port)


def registry_config(addr: str, data_dir: Path, htpasswd: Path | None = None) -> dict:
    """Return the distribution configuration (as data) for one registry instance."""
    host, port = parse_addr(addr)
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            # deleting manifests/blobs lets a later garbage-collect reclaim disk
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"{host}:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "modelgate", "path": str(htpasswd)}}
    return config


def _spec(addr: str, state_dir: Path, config_path: Path | None = None,
          fingerprint: str = "") -> process.ProcessSpec:
    __, port = parse_addr(addr)
    name = f"registry-{port}"
    config_path = config_path or state_dir / f"{name}.yml"
    binary = shutil.which(REGISTRY_BINARY) or REGISTRY_BINARY
    return process.ProcessSpec(
        name=name,
        argv=[binary, "serve", str(config_path)],
        state_dir=state_dir,
        fingerprint=fingerprint,
    )


def registry_url(addr: str) -> str:
    """The registry's base URL (plain HTTP: it listens on a local address)."""
    host, port = parse_addr(addr)
    return f"http://{host}:{port}"


def probe_v2(addr: str, timeout: float = 3.0) -> int | None:
    """Return the HTTP status of ``GET /v2/`` (200, or 401 with auth), None when nothing answers."""
    return process.probe_http(registry_url(addr) + "/v2/", timeout=timeout)[0]


def ensure_registry(addr: str, data_dir: Path, state_dir: Path, *,
                    htpasswd: Path | None = None, timeout: float = 30.0) -> dict:
    """Start a registry on ``addr`` storing into ``data_dir`` unless ours already runs there.

    Returns ``{"changed", "url", "pid", "config", "log"}``. Fails with a clear error when the
    port is held by a process that this state directory did not start.
    """
    if shutil.which(REGISTRY_BINARY) is None:
        raise ModelGateError(
            f"{REGISTRY_BINARY} is not installed", field="registry",
            fix="install the Debian package docker-registry (or point the stage at an "
                "external registry)",
        )
    data_dir = Path(data_dir).resolve()
    state_dir = Path(state_dir).resolve()
    config = registry_config(addr, data_dir, htpasswd)
    fingerprint = sha256_json(config)
    spec = _spec(addr, state_dir, fingerprint=fingerprint)
    state = process.read_state(spec)
    url = registry_url(addr)
    if state and state.get("fingerprint") == fingerprint and probe_v2(addr) in (200, 401):
        return {"changed": False, "url": url, "pid": state["pid"],
                "config": str(spec.state_dir / f"{spec.name}.yml"), "log": str(spec.logfile)}
    host, port = parse_addr(addr)
    if state is None and process.port_in_use(host, port):
        status = probe_v2(addr)
        what = (f"another registry (GET /v2/ -> {status})" if status in (200, 401)
                else "a process that is not a registry")
        raise ModelGateError(
            f"{addr} is already in use by {what}, not started from {state_dir}",
            field="addr",
            fix="pick a free port for the local registry, stop that process, or set the "
                "registry as external (do not manage it) if it is the one to push to",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    config_path = state_dir / f"{spec.name}.yml"
    # JSON is YAML: the registry reads it, and the text is stable for the fingerprint.
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    started = process.start(spec)
    # ready when /v2/ answers like a registry: 200, or 401 when auth is on
    process.wait_http(f"{url}/v2/", timeout, spec, interval=0.3,
                      accept=lambda status: status in (200, 401), what=REGISTRY_BINARY)
    return {"changed": True, "url": url, "pid": started["pid"], "config": str(config_path),
            "log": str(spec.logfile)}


def stop_registry(addr: str, state_dir: Path) -> dict:
    """Stop the registry that ``state_dir`` started on ``addr``; ``changed`` when one ran."""
    spec = _spec(addr, Path(state_dir).resolve())
    return {"changed": process.stop(spec), "url": registry_url(addr)}


def registry_status(addr: str, state_dir: Path) -> dict:
    """Report whether our registry runs on ``addr`` and whether ``/v2/`` answers."""
    spec = _spec(addr, Path(state_dir).resolve())
    state = process.read_state(spec)
    return {
        "running": state is not None,
        "pid": state["pid"] if state else None,
        "url": registry_url(addr),
        "v2_status": probe_v2(addr),
        "log": str(spec.logfile),
    }


def _cmd_registry(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    if args.action == "start":
        emit(ensure_registry(args.addr, Path(args.data_dir), Path(args.state_dir),
                             htpasswd=Path(args.htpasswd) if args.htpasswd else None))
    elif args.action == "stop":
        emit(stop_registry(args.addr, Path(args.state_dir)))
    else:
        status = registry_status(args.addr, Path(args.state_dir))
        emit(status)
        return 0 if status["running"] else 1
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``modelgate registry start|stop|status``."""
    p = subparsers.add_parser("registry", help="run the local OCI registry")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--addr", default=DEFAULT_ADDR, help="host:port to listen on")
    p.add_argument("--data-dir", default="/var/lib/modelgate/registry",
                   help="where the registry stores blobs")
    p.add_argument("--state-dir", default="/var/lib/modelgate/state",
                   help="pidfile, log and config of the supervised process")
    p.add_argument("--htpasswd", default=None, help="bcrypt htpasswd file: require basic auth")
    p.set_defaults(func=_cmd_registry)


def check_reachable(address: str, *, tls_verify: bool = True, timeout: float = 5.0) -> str:
    """Fail fast, before anything is built, when nothing answers like a registry at ``address``.

    Any HTTP answer of ``/v2/`` (200, or 401/403 when auth is on) counts as reachable; returns
    the URL that answered. Without TLS verification plain HTTP is tried too (a loopback registry).
    """
    import ssl

    errors = []
    for scheme in ("https", "http") if not tls_verify else ("https",):
        url = f"{scheme}://{address}/v2/"
        context = ssl._create_unverified_context() if scheme == "https" and not tls_verify else None
        status, error = process.probe_http(url, timeout=timeout, context=context)
        if status is not None and (status < 400 or status in (401, 403)):
            return url
        errors.append(f"{url}: HTTP {status}" if status is not None else f"{url}: {error}")
    raise ModelGateError(
        f"no registry answers at {address} ({'; '.join(errors)})",
        field="modelgate_registry.address",
        fix="start the registry (the provision stage runs the local one: --tags provision), "
        "or correct the address; set tls_verify: false only for a plain-HTTP registry",
    )
