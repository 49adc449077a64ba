"""Unit tests for the native OCI push client: parsing, retries, Bearer-token auth, redaction.

The Bearer flow needs a token service, and none runs on this machine (Debian's docker-registry
only does htpasswd Basic auth, which tests/integration/test_modelcar_registry.py drives), so a
small in-process HTTP server plays a registry with a token realm here: it implements just the
requests the client makes, and checks each token and digest it receives.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelgate import oci_push
from modelgate.errors import ModelGateError
from modelgate.registry import RegistryCredentials

USER, PASSWORD, TOKEN = "alice", "Sup3r-s3cret-pa55word", "tok-4f1e2d"


@pytest.mark.parametrize(("ref", "parts"), [
    ("127.0.0.1:5000/modelgate/tiny:sha256-abc", ("127.0.0.1:5000", "modelgate/tiny",
                                                  "sha256-abc")),
    ("quay.io/org/team/model:v1.0", ("quay.io", "org/team/model", "v1.0")),
    ("localhost/x:y", ("localhost", "x", "y")),
])
def test_reference_parse(ref, parts):
    r = oci_push.Reference.parse(ref)
    assert (r.registry, r.repository, r.tag) == parts


@pytest.mark.parametrize("ref", ["tiny:v1", "quay.io/org/model", "quay.io/Org/model:v1",
                                 "quay.io/org/model@sha256:" + "0" * 64, "quay.io/m:bad tag"])
def test_reference_parse_rejects(ref):
    with pytest.raises(ModelGateError) as exc:
        oci_push.Reference.parse(ref)
    assert exc.value.field == "ref"


def test_challenge_parse():
    scheme, params = oci_push._challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:a/b:pull,push"}


def test_with_retries_retries_transient_only():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise oci_push.TransientRegistryError("connection reset by peer")
        return "ok"

    counter = [0]
    assert oci_push.with_retries(flaky, retries=3, backoff=0.0, counter=counter) == "ok"
    assert counter == [3]

    def denied() -> None:
        calls.append(1)
        raise oci_push.RegistryAuthError("unauthorized")

    calls.clear()
    with pytest.raises(oci_push.RegistryAuthError):
        oci_push.with_retries(denied, retries=3, backoff=0.0)
    assert len(calls) == 1  # a 401 is not retried

    calls.clear()
    with pytest.raises(oci_push.TransientRegistryError):
        oci_push.with_retries(lambda: flaky() if len(calls) < 99 else None, retries=1,
                              backoff=0.0)
    assert len(calls) == 2


def _client(addr: str, password: str = PASSWORD) -> oci_push.RegistryClient:
    return oci_push.RegistryClient(addr, credentials=RegistryCredentials(addr, USER, password),
                                   tls_verify=False)


# --------------------------------------------------------------------------- token registry


class _TokenRegistry(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.fail_next_puts = 0  # answer this many blob PUTs with 503 first
        self.log: list[str] = []
        self.seen_auth: list[str] = []

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _TokenRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output quiet
        pass

    def _reply(self, status: int, headers: dict[str, str] | None = None,
               body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        self.server.seen_auth.append(auth)
        if auth == f"Bearer {TOKEN}":
            return True
        self._body()
        realm = f"http://{self.server.addr}/token"
        self._reply(401, {"WWW-Authenticate":
                          f'Bearer realm="{realm}",service="test-registry"'},
                    b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
        return False

    def _route(self) -> None:
        path, __, query = self.path.partition("?")
        self.server.log.append(f"{self.command} {path}")
        if path == "/v2/":
            return self._reply(401, {"WWW-Authenticate": 'Bearer realm="x"'})
        if path == "/token":
            good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") != good or "scope=repository" not in query:
                return self._reply(401)
            return self._reply(200, {"Content-Type": "application/json"},
                               json.dumps({"token": TOKEN}).encode())
        if not self._authorized():
            return None
        parts = path.split("/")
        if "manifests" in parts:
            tag = parts[-1]
            if self.command == "PUT":
                data = self._body()
                self.server.manifests[tag] = data
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                return self._reply(201, {"Docker-Content-Digest": digest})
            if tag not in self.server.manifests:
                return self._reply(404)
            digest = "sha256:" + hashlib.sha256(self.server.manifests[tag]).hexdigest()
            return self._reply(200, {"Docker-Content-Digest": digest})
        if self.command == "HEAD":
            return self._reply(200 if parts[-1] in self.server.blobs else 404)
        if self.command == "POST":
            return self._reply(202, {"Location": path + "upload-1?_state=x"})
        if self.command == "PUT":
            data = self._body()
            if self.server.fail_next_puts:
                self.server.fail_next_puts -= 1
                return self._reply(503)
            digest = dict(p.split("=", 1) for p in query.split("&"))["digest"]
            digest = digest.replace("%3A", ":")
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                return self._reply(400, body=b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            self.server.blobs[digest] = data
            return self._reply(201, {"Docker-Content-Digest": digest})
        return self._reply(405)

    do_GET = do_HEAD = do_POST = do_PUT = _route


@pytest.fixture()
def token_registry() -> Iterator[_TokenRegistry]:
    server = _TokenRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _layout(root: Path) -> tuple[Path, str, dict]:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(b"{}")}
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **put(bytes([i]) * n)}
              for i, n in ((1, 3 << 20), (2, 1000))]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config, "layers": layers}
    data = json.dumps(manifest).encode()
    return root, put(data)["digest"], manifest


def test_bearer_push_retries_503_and_is_idempotent(token_registry, tmp_path):
    layout, digest, manifest = _layout(tmp_path / "oci")
    ref = f"{token_registry.addr}/org/model:v1"
    client = _client(token_registry.addr)
    token_registry.fail_next_puts = 1
    result = oci_push.push_layout(layout, ref, digest, manifest, client=client, backoff=0.0)
    assert result.changed and result.attempts == 2
    assert {b.action for b in result.blobs} == {"uploaded"}
    assert set(token_registry.blobs) == {d["digest"] for d in [manifest["config"],
                                                               *manifest["layers"]]}
    assert token_registry.blobs[manifest["layers"][0]["digest"]] == bytes([1]) * (3 << 20)
    # the password went only to the token service; the registry saw only the token
    assert all(a in ("", f"Bearer {TOKEN}") for a in token_registry.seen_auth)

    before = len(token_registry.log)
    again = oci_push.push_layout(layout, ref, digest, manifest, client=client, backoff=0.0)
    assert again.changed is False
    assert {b.action for b in again.blobs} == {"present"}
    assert token_registry.log[before:] == ["HEAD /v2/org/model/manifests/v1"]  # nothing sent


def test_wrong_password_is_a_clear_error_without_the_secret(token_registry, tmp_path):
    layout, digest, manifest = _layout(tmp_path / "oci")
    wrong = PASSWORD[::-1]
    client = _client(token_registry.addr, wrong)
    with pytest.raises(oci_push.RegistryAuthError) as exc:
        oci_push.push_layout(layout, f"{token_registry.addr}/org/model:v1", digest, manifest,
                             client=client, retries=0)
    err = exc.value
    text = " ".join([str(err), repr(err), json.dumps(err.to_dict()),
                     "".join(traceback.format_exception(err))])
    assert "401" in text and "unauthorized" in text
    assert wrong not in text and base64.b64encode(f"{USER}:{wrong}".encode()).decode() \
        not in text
    assert err.__cause__ is None and err.__context__ is None
    assert not token_registry.blobs


def test_corrupt_layout_blob_is_refused_by_digest(token_registry, tmp_path):
    layout, digest, manifest = _layout(tmp_path / "oci")
    small = manifest["layers"][1]["digest"].removeprefix("sha256:")
    (layout / "blobs" / "sha256" / small).write_bytes(bytes([9]) * 1000)  # same size
    client = _client(token_registry.addr)
    with pytest.raises(oci_push.ToolError, match="DIGEST_INVALID"):
        oci_push.push_layout(layout, f"{token_registry.addr}/org/model:v1", digest, manifest,
                             client=client, retries=0)
    assert "v1" not in token_registry.manifests
