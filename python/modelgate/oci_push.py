"""Push an image from an OCI image layout to a registry over the OCI distribution API.

Why not ``skopeo copy``: measured on the 2-core bench host (bench/modelcar.py), skopeo 1.9
copies layers one at a time and re-reads and re-digests every blob in Go (about 3.8 CPU-s per
GiB), while the registry itself already spends about 4.3 CPU-s per GiB verifying and writing
what it receives. This client sends each blob file as it is (``sendfile`` on plain HTTP), in
parallel, and lets the registry verify the digest (a mismatch is refused with
``DIGEST_INVALID``), so the push costs the registry's work and little more. skopeo stays the
tool for pulls, inspection and verification.

Per blob: ``HEAD`` (present: skip), optionally a cross-repository mount
(``POST ?mount=&from=``), else ``POST`` an upload and ``PUT`` the whole file with its digest
(one monolithic request). Then the manifest is ``PUT`` byte for byte, so its digest is kept.
Auth: none, Basic, or Bearer tokens (``WWW-Authenticate: Bearer realm=...,service=...``).
Credentials are only ever put in request headers: never in a URL, an argv, a log or an error.
TLS is verified unless ``tls_verify`` is False (then HTTPS without verification, falling back to
plain HTTP, like skopeo's ``--tls-verify=false``); CAs and client certificates in
``/etc/containers/certs.d/<host>/`` are used as skopeo uses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import quote, urlencode, urljoin, urlsplit

from modelgate.errors import ModelGateError, ToolError
from modelgate.registry import RegistryCredentials, redact

MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))
DEFAULT_PARALLEL = 4
_TIMEOUT = 300.0
_STREAM_CHUNK = 4 << 20
_MAX_REDIRECTS = 3
_T = TypeVar("_T")
_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class RegistryAuthError(ModelGateError):
    """The registry refused our credentials (HTTP 401/403)."""


class RegistryNotFound(ToolError):
    """The reference does not exist in the registry (yet)."""


class TransientRegistryError(ToolError):
    """A failure worth retrying: connection refused/reset, timeouts, 429, 5xx."""


@dataclass
class BlobPush:
    """What happened to one blob: ``present`` (skipped), ``mounted`` or ``uploaded``."""

    digest: str
    size: int
    action: str
    attempts: int = 1


@dataclass
class LayoutPush:
    """The outcome of :func:`push_layout`; ``changed`` False when the tag already matched."""

    changed: bool
    manifest_digest: str
    ref: str
    blobs: list[BlobPush] = field(default_factory=list)
    attempts: int = 1

    def to_dict(self) -> dict:
        """Plain-data form (for JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """``registry/repository:tag`` split into its parts."""

    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """Parse ``host[:port]/repo[/more]:tag``; a digest reference is refused (we push tags)."""
        host, sep, rest = ref.partition("/")
        name, __, tag = rest.rpartition(":")
        looks_like_host = "." in host or ":" in host or host == "localhost"
        if not (sep and looks_like_host and "@" not in ref and _NAME_RE.fullmatch(name)
                and _TAG_RE.fullmatch(tag)):
            raise ModelGateError(f"{ref!r} is not a registry reference host[:port]/repo:tag",
                                 field="ref", fix="use e.g. registry.example.com/models/tiny:v1")
        return cls(host, name, tag)


def _reason(exc: BaseException) -> str:
    """A short, lower-case reason for a network failure (matches skopeo's wording)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "i/o timeout"
    if isinstance(exc, ssl.SSLError):
        return f"tls handshake failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return "no such host"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "EOF: the registry closed the connection"
    return f"{type(exc).__name__}: {exc}".lower()


class _HashingWriter:
    """A file-like sink that hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self._h, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        """Hash and write one chunk."""
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    def digest(self) -> str:
        """``sha256:<hex>`` of everything written."""
        return "sha256:" + self._h.hexdigest()


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_codes(self) -> str:
        """The registry's error codes and messages (the OCI ``errors`` body), briefly."""
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            errors = json.loads(self.body or b"{}").get("errors") or []
            return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:500]
        return self.body[:200].decode(errors="replace")


CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


def _load_certs_d(ctx: ssl.SSLContext, host: str) -> None:
    """Trust ``certs.d/<host>/*.crt`` and present ``*.cert``/``*.key`` pairs, as skopeo does."""
    for root in CERTS_DIRS:
        folder = root / host
        if not folder.is_dir():
            continue
        for crt in sorted(folder.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(crt))
        for cert in sorted(folder.glob("*.cert")):
            key = cert.with_suffix(".key")
            if key.is_file():
                ctx.load_cert_chain(str(cert), str(key))


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """Parse ``WWW-Authenticate: Bearer realm="...",service="..."`` into (scheme, params)."""
    scheme, __, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
    return scheme.lower(), params


class RegistryClient:
    """One registry's HTTP API, with auth; thread-safe (one connection per request)."""

    def __init__(self, registry: str, *, credentials: RegistryCredentials | None = None,
                 tls_verify: bool = True, timeout: float = _TIMEOUT) -> None:
        self.registry = registry
        self.tls_verify = tls_verify
        self.timeout = timeout
        self.credentials = credentials or RegistryCredentials(registry)
        self._basic = self.credentials.basic
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._auth: tuple[str, dict[str, str]] | None = None  # the challenge, once seen
        self._tokens: dict[str, str] = {}  # scope -> bearer token

    # ---------------------------------------------------------------- plumbing

    def redact(self, text: str) -> str:
        """``text`` with our secrets and tokens replaced by ``***`` (belt and braces)."""
        return redact(text, [*self.credentials.secrets, *self._tokens.values()])

    def _connect(self, scheme: str, host: str) -> http.client.HTTPConnection:
        if scheme == "https":
            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            _load_certs_d(ctx, host)
            return http.client.HTTPSConnection(host, timeout=self.timeout, context=ctx)
        return http.client.HTTPConnection(host, timeout=self.timeout)

    def base_url(self) -> str:
        """``https://registry`` (or ``http://`` for an insecure registry that has no TLS)."""
        with self._lock:
            if self._scheme:
                return f"{self._scheme}://{self.registry}"
        schemes = ["https"] if self.tls_verify else ["https", "http"]
        failure = ""
        for scheme in schemes:
            conn = self._connect(scheme, self.registry)
            try:
                conn.request("GET", "/v2/")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException) as exc:
                failure = _reason(exc)
                continue
            finally:
                conn.close()
            with self._lock:
                self._scheme = scheme
            return f"{scheme}://{self.registry}"
        raise TransientRegistryError(
            f"cannot reach the registry {self.registry}: {failure}",
            fix="check the address and that the registry runs; for a plain-HTTP registry "
                "set tls_verify false")

    def _headers(self, scope: str, host: str) -> dict[str, str]:
        # credentials go only to the registry itself, never to a redirect's other host
        if host != self.registry:
            return {}
        with self._lock:
            auth, token = self._auth, self._tokens.get(scope)
        if auth and auth[0] == "bearer" and token:
            return {"Authorization": f"Bearer {token}"}
        if auth and auth[0] == "basic" and self._basic:
            return {"Authorization": f"Basic {self._basic}"}
        return {}

    def _fetch_token(self, params: dict[str, str], scope: str) -> str:
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ToolError(f"the registry's token realm {realm!r} is not a URL")
        if parts.scheme == "http" and self.tls_verify and self._basic:
            raise ModelGateError(
                f"the registry asks for credentials to be sent to {realm} over plain HTTP",
                field="tls_verify", fix="use an HTTPS token service, or tls_verify false "
                "only for a trusted local registry")
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        path = (parts.path or "/") + "?" + (parts.query + "&" if parts.query else "") \
            + urlencode(query)
        headers = {"Authorization": f"Basic {self._basic}"} if self._basic else {}
        conn = self._connect(parts.scheme, parts.netloc)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            failure = _reason(exc)
        else:
            failure = ""
        finally:
            conn.close()
        if failure:
            raise TransientRegistryError(f"token service {parts.netloc}: {failure}")
        if status in (401, 403):
            raise self._auth_error(status, f"token service {parts.netloc}")
        if status >= 500 or status == 429:
            raise TransientRegistryError(f"token service {parts.netloc}: HTTP {status}")
        try:
            data = json.loads(body)
            return str(data.get("token") or data["access_token"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ToolError(f"token service {parts.netloc} answered HTTP {status} "
                            "without a token") from None

    def _auth_error(self, status: int, where: str) -> RegistryAuthError:
        why = "no credentials were given" if not self._basic else "the credentials were refused"
        return RegistryAuthError(
            f"the registry refused the request: unauthorized (HTTP {status}) at {where}; {why}",
            field="username/password",
            fix="check the registry credentials (and that the account may push to this "
                "repository)")

    def request(self, method: str, url: str, *, scope: str,
                headers: dict[str, str] | None = None, body: bytes | None = None,
                file: Path | None = None, sink: BinaryIO | None = None) -> _Response:
        """Send one request (authenticating once on a 401 challenge); return the response.

        ``url`` is absolute or a path on the registry. Network failures, 429 and 5xx raise
        :class:`TransientRegistryError`; 401/403 after authenticating raise
        :class:`RegistryAuthError`; other statuses are returned. With ``sink``, a 200 answer's
        body is streamed into it instead of being kept.
        """
        if not url.startswith(("http://", "https://")):
            url = urljoin(self.base_url(), url)
        parts = urlsplit(url)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        for authenticated in (False, True):
            hdrs = {**(headers or {}), **self._headers(scope, parts.netloc)}
            resp, failure = self._send(parts.scheme, parts.netloc, method, target, hdrs,
                                       body, file, sink)
            if failure:
                raise TransientRegistryError(f"{method} {parts.netloc}{parts.path}: {failure}",
                                             fix="retry later; check the registry's health")
            assert resp is not None
            if resp.status == 401 and not authenticated and parts.netloc == self.registry:
                self._authenticate(resp.headers.get("www-authenticate", ""), scope)
                continue
            break
        assert resp is not None
        if resp.status in (401, 403):
            raise self._auth_error(resp.status, f"{method} {parts.path}")
        if resp.status == 429 or resp.status >= 500:
            raise TransientRegistryError(
                f"{method} {parts.netloc}{parts.path}: HTTP {resp.status} {resp.error_codes()}",
                fix="retry later; check the registry's health")
        return resp

    def _authenticate(self, header: str, scope: str) -> None:
        scheme, params = _challenge(header)
        if scheme == "bearer":
            token = self._fetch_token(params, scope)
            with self._lock:
                self._auth = (scheme, params)
                self._tokens[scope] = token
        elif scheme == "basic" and self._basic:
            with self._lock:
                self._auth = (scheme, params)
        else:
            raise self._auth_error(401, self.registry)

    def _send(self, scheme: str, host: str, method: str, target: str,
              headers: dict[str, str], body: bytes | None, file: Path | None,
              sink: BinaryIO | None = None) -> tuple[_Response | None, str]:
        """One HTTP exchange; returns (response, "") or (None, reason) on a network failure."""
        conn = self._connect(scheme, host)
        try:
            if file is None:
                conn.request(method, target, body=body, headers=headers)
            else:
                self._send_file(conn, method, target, headers, file)
            resp = conn.getresponse()
            data = b""
            if sink is not None and resp.status == 200:
                while chunk := resp.read(_STREAM_CHUNK):
                    sink.write(chunk)
            else:
                data = resp.read()
            return _Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                             data), ""
        except (OSError, http.client.HTTPException) as exc:
            return None, _reason(exc)
        finally:
            conn.close()

    @staticmethod
    def _send_file(conn: http.client.HTTPConnection, method: str, target: str,
                   headers: dict[str, str], file: Path) -> None:
        with file.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in {**headers, "Content-Length": str(size)}.items():
                conn.putheader(k, v)
            conn.endheaders()
            assert conn.sock is not None
            # zero-copy from the page cache on plain HTTP; TLS sockets fall back to send()
            sent = conn.sock.sendfile(f, 0, size)
            if sent != size:
                raise OSError(f"sent {sent} of {size} bytes of {file.name}")

    # ---------------------------------------------------------------- API

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """The digest ``repo:reference`` resolves to, or None when it does not exist."""
        scope = f"repository:{repo}:pull"
        path = f"/v2/{repo}/manifests/{quote(reference)}"
        resp = self.request("HEAD", path, scope=scope, headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 404:
            return None
        if resp.status == 200 and resp.headers.get("docker-content-digest"):
            return resp.headers["docker-content-digest"]
        resp = self.request("GET", path, scope=scope, headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise ToolError(f"GET manifest {repo}:{reference}: HTTP {resp.status} "
                            f"{resp.error_codes()}")
        return "sha256:" + hashlib.sha256(resp.body).hexdigest()

    def get_manifest(self, repo: str, reference: str) -> tuple[str, bytes]:
        """The manifest ``repo:reference`` (tag or digest) as sent: its digest and bytes."""
        resp = self.request("GET", f"/v2/{repo}/manifests/{quote(reference)}",
                            scope=f"repository:{repo}:pull", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status != 200:
            raise (RegistryNotFound if resp.status == 404 else ToolError)(
                f"GET manifest {repo}:{reference}: HTTP {resp.status} {resp.error_codes()}")
        return "sha256:" + hashlib.sha256(resp.body).hexdigest(), resp.body

    def download_blob(self, repo: str, digest: str, dest: Path) -> int:
        """Stream blob ``digest`` of ``repo`` into ``dest``, checking its digest; its size.

        Registries answer blob GETs with redirects to their storage: they are followed, with
        credentials sent only to the registry itself (``_headers``).
        """
        url = f"/v2/{repo}/blobs/{digest}"
        part = dest.with_name(f".{dest.name}.part")
        for __ in range(_MAX_REDIRECTS + 1):
            with part.open("wb") as f:
                hashing = _HashingWriter(f)
                resp = self.request("GET", url, scope=f"repository:{repo}:pull", sink=hashing)
            location = resp.headers.get("location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url if url.startswith("http") else self.base_url() + url, location)
                continue
            break
        if resp.status != 200:
            part.unlink(missing_ok=True)
            raise ToolError(f"GET blob {digest} of {repo}: HTTP {resp.status} "
                            f"{resp.error_codes()}")
        if hashing.digest() != digest:
            part.unlink(missing_ok=True)
            raise TransientRegistryError(f"blob {digest} of {repo} arrived as {hashing.digest()}",
                                         fix="retry; check the registry's storage")
        part.replace(dest)
        return hashing.size

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether ``repo`` already has the blob (so it need not be sent)."""
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}",
                            scope=f"repository:{repo}:pull,push")
        if resp.status not in (200, 404):
            raise ToolError(f"HEAD blob {digest} in {repo}: HTTP {resp.status}")
        return resp.status == 200

    def start_upload(self, repo: str, digest: str, mount_from: str | None = None
                     ) -> str | None:
        """Open an upload session and return its URL; None when ``mount_from`` mounted it."""
        scope = f"repository:{repo}:pull,push"
        path = f"/v2/{repo}/blobs/uploads/"
        if mount_from:
            scope += f" repository:{mount_from}:pull"
            path += "?" + urlencode({"mount": digest, "from": mount_from})
        resp = self.request("POST", path, scope=scope)
        if resp.status == 201 and mount_from:
            return None
        if resp.status != 202 or not resp.headers.get("location"):
            raise ToolError(f"POST upload to {repo}: HTTP {resp.status} {resp.error_codes()}")
        return urljoin(self.base_url() + path, resp.headers["location"])

    def upload_blob(self, repo: str, location: str, digest: str, path: Path) -> None:
        """Send the whole blob file in one ``PUT <location>?digest=`` (monolithic upload)."""
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        resp = self.request("PUT", url, scope=f"repository:{repo}:pull,push", file=path,
                            headers={"Content-Type": "application/octet-stream"})
        if resp.status != 201:
            hint = (" (the layout's blob does not match its name: rebuild the layout)"
                    if b"DIGEST_INVALID" in resp.body else "")
            raise ToolError(f"PUT blob {digest} to {repo}: HTTP {resp.status} "
                            f"{resp.error_codes()}{hint}")
        got = resp.headers.get("docker-content-digest")
        if got and got != digest:
            raise ToolError(f"the registry stored {digest} as {got}")

    def put_manifest(self, repo: str, tag: str, data: bytes, media_type: str) -> str:
        """PUT the manifest bytes unchanged under ``tag``; return the registry's digest."""
        resp = self.request("PUT", f"/v2/{repo}/manifests/{quote(tag)}",
                            scope=f"repository:{repo}:pull,push", body=data,
                            headers={"Content-Type": media_type})
        if resp.status not in (200, 201):
            raise ToolError(f"PUT manifest {repo}:{tag}: HTTP {resp.status} "
                            f"{resp.error_codes()}")
        return resp.headers.get("docker-content-digest") or \
            "sha256:" + hashlib.sha256(data).hexdigest()


def with_retries(fn: Callable[[], _T], *, retries: int, backoff: float,
                 counter: list[int] | None = None) -> _T:
    """Call ``fn``; retry a :class:`TransientRegistryError` up to ``retries`` times.

    Waits ``backoff * 2**n`` seconds between tries. ``counter[0]`` receives the number of tries.
    """
    attempt = 0
    while True:
        attempt += 1
        if counter is not None:
            counter[0] = attempt
        try:
            return fn()
        except TransientRegistryError:
            if attempt > retries:
                raise
        time.sleep(backoff * 2 ** (attempt - 1))


def _blob_path(layout: Path, digest: str) -> Path:
    algo, __, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ModelGateError(f"{digest!r} is not a sha256 digest", field="layout")
    return layout / "blobs" / algo / hexpart


def push_layout(layout: Path, ref: str, manifest_digest: str, manifest: dict, *,
                client: RegistryClient, retries: int = 3, backoff: float = 2.0,
                parallel: int = DEFAULT_PARALLEL, mount_from: Sequence[str] = ()
                ) -> LayoutPush:
    """Push the manifest ``manifest_digest`` (with its config and layers) from ``layout``.

    Idempotent: nothing is sent when ``ref`` already resolves to ``manifest_digest``. Blobs the
    repository has are skipped; blobs in a ``mount_from`` repository of the same registry are
    mounted; the others are uploaded, ``parallel`` at a time, largest first. Each request is
    retried on transient failures.
    """
    layout = Path(layout)
    target = Reference.parse(ref)
    tries = [1]
    current = with_retries(lambda: client.manifest_digest(target.repository, target.tag),
                           retries=retries, backoff=backoff, counter=tries)
    if current == manifest_digest:
        return LayoutPush(False, manifest_digest, ref, [
            BlobPush(d["digest"], d["size"], "present")
            for d in [manifest["config"], *manifest["layers"]]], attempts=tries[0])

    descs = {d["digest"]: d for d in [manifest["config"], *manifest["layers"]]}
    for d in descs.values():  # fail before sending anything when the layout is incomplete
        p = _blob_path(layout, d["digest"])
        if not p.is_file() or p.stat().st_size != d["size"]:
            raise ModelGateError(f"{layout} lacks blob {d['digest']} (or its size is wrong)",
                                 field="layout", fix="rebuild the layout")

    def one(desc: dict) -> BlobPush:
        digest, counter = desc["digest"], [1]

        def attempt() -> str:
            if client.blob_exists(target.repository, digest):
                return "present"
            location = None
            for source in mount_from:
                if source == target.repository:
                    continue
                location = client.start_upload(target.repository, digest, source)
                if location is None:
                    return "mounted"
                break  # the registry opened an upload instead: use it
            location = location or client.start_upload(target.repository, digest)
            client.upload_blob(target.repository, location, digest,
                               _blob_path(layout, digest))
            return "uploaded"

        action = with_retries(attempt, retries=retries, backoff=backoff, counter=counter)
        return BlobPush(digest, desc["size"], action, counter[0])

    order = sorted(descs.values(), key=lambda d: -int(d["size"]))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        done = {b.digest: b for b in pool.map(one, order)}
    data = _blob_path(layout, manifest_digest).read_bytes()
    media_type = manifest.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
    put_tries = [1]
    stored = with_retries(lambda: client.put_manifest(target.repository, target.tag, data,
                                                      media_type),
                          retries=retries, backoff=backoff, counter=put_tries)
    if stored != manifest_digest:
        raise ToolError(f"the registry stored the manifest as {stored}, "
                        f"not {manifest_digest}")
    blobs = [done[d] for d in descs]
    return LayoutPush(True, manifest_digest, ref, blobs,
                      attempts=max([tries[0], put_tries[0], *(b.attempts for b in blobs)]))
