"""Unit tests for the one readiness wait (process.wait_http) and the vLLM proof (check_ready).

An in-process HTTP server plays the endpoint (vLLM's /health, /v1/models, /v1/completions);
what "dies" is a short shell script or a stubbed container state, so no real server starts.
"""

from __future__ import annotations

import http.server
import json
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from modelgate import process, rhaiis, serving
from modelgate.errors import ToolError
from modelgate.process import EndpointNotReady


class _Endpoint(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.health_after = 0  # answer /health 503 this many times first
        self.status = 200
        self.models = ["tiny"]
        self.hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Endpoint

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.hits += 1
        if self.path == "/v1/models":
            self._json(200, {"data": [{"id": m} for m in self.server.models]})
        elif self.server.hits <= self.server.health_after:
            self._json(503, {})
        else:
            self._json(self.server.status, {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json(200, {"choices": [{"text": " Paris"}], "usage": {"completion_tokens": 2}})


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    server = _Endpoint()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_url() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_wait_returns_once_the_endpoint_answers(endpoint):
    endpoint.health_after = 2
    waited = process.wait_http(f"{endpoint.url}/health", 10, interval=0.05)
    assert endpoint.hits == 3 and 0 <= waited < 10


def test_accept_takes_other_statuses(endpoint):
    endpoint.status = 401  # a registry with auth on
    with pytest.raises(EndpointNotReady):
        process.wait_http(endpoint.url, 0.2, interval=0.05)
    process.wait_http(endpoint.url, 5, interval=0.05, accept=lambda s: s in (200, 401))


def test_timeout_is_a_clear_error():
    url = _free_url()
    t0 = time.monotonic()
    with pytest.raises(EndpointNotReady) as exc:
        process.wait_http(url, 0.3, interval=0.05)
    assert time.monotonic() - t0 < 5
    err = exc.value
    assert not err.ended and err.url == url
    assert f"{url} did not answer within 0s (last error:" in err.message
    assert "refused" in err.message and err.fix


def test_early_exit_when_the_server_ends(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("starting\nValueError: no such model\n")
    calls = []

    def ended() -> str | None:
        calls.append(1)
        return "exited" if len(calls) >= 2 else None

    t0 = time.monotonic()
    with pytest.raises(EndpointNotReady) as exc:
        process.wait_http(_free_url(), 60, interval=0.05, ended=ended, what="vllm-1", log=log)
    assert time.monotonic() - t0 < 5  # did not wait for the timeout
    err = exc.value
    assert err.ended and err.reason == "exited"
    assert err.message.startswith("vllm-1 exited before http://")
    assert "ValueError: no such model" in err.message and str(log) in (err.fix or "")


def test_a_supervised_process_that_exits_ends_the_wait(tmp_path):
    spec = process.ProcessSpec(name="dies", state_dir=tmp_path,
                               argv=[sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    process.start(spec)
    try:
        with pytest.raises(EndpointNotReady) as exc:
            process.wait_http(_free_url(), 30, spec, interval=0.05)
    finally:
        process.stop(spec)
    assert exc.value.ended and "dies exited before" in exc.value.message
    assert "boom" in exc.value.message


def test_check_ready_proves_the_server(endpoint):
    ready = serving.check_ready(endpoint.url, "tiny", timeout=5)
    assert ready.ok and ready.models == ["tiny"] and ready.completion_text == " Paris"


def test_check_ready_tells_a_failed_proof_from_a_failed_wait(endpoint, tmp_path):
    endpoint.models = ["other"]
    with pytest.raises(ToolError) as exc:
        serving.check_ready(endpoint.url, "tiny", timeout=5)
    assert not isinstance(exc.value, EndpointNotReady)
    assert "/v1/models lists ['other'], not 'tiny'" in exc.value.message

    log = tmp_path / "vllm.log"
    log.write_text("RuntimeError: CUDA out of memory\n")
    with pytest.raises(EndpointNotReady) as exc:
        serving.check_ready(_free_url(), "tiny", timeout=30, log=log, ended=lambda: "exited",
                            interval=0.05)
    err = exc.value
    assert err.ended and "the server exited before /health answered" in err.message
    assert "vLLM error: RuntimeError: CUDA out of memory" in err.message


def test_local_server_that_exits_during_start_up(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fake = tmp_path / "python"  # stands in for the serve venv's python: fails at once
    fake.write_text("#!/bin/sh\necho 'ValueError: the model does not fit'\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    port = int(_free_url().rsplit(":", 1)[1])
    spec = serving.local_server_spec(model, "tiny", port, str(fake), serving.ServingArgs(),
                                     tmp_path / "state")
    t0 = time.monotonic()
    with pytest.raises(ToolError) as exc:
        serving.start_local_server(spec, timeout=60)
    assert time.monotonic() - t0 < 10
    msg = exc.value.message
    assert f"local vLLM server on port {port} exited during start-up" in msg
    assert "vLLM error: ValueError: the model does not fit" in msg
    assert process.read_state(spec) is None


def test_rhaiis_container_that_stops_is_reported_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(rhaiis, "container_state", lambda name: {
        "running": False, "status": "exited", "exit_code": 1, "fingerprint": None, "id": "x"})
    monkeypatch.setattr(rhaiis, "container_log",
                        lambda name: "INFO start\nValueError: bad shape\n")
    log_file = tmp_path / "logs" / "server.log"
    with pytest.raises(ToolError) as exc:
        rhaiis.wait_ready("c1", _free_url(), "tiny", 60, log_file=log_file, poll_s=0.05)
    msg = exc.value.message
    assert msg.startswith("RHAIIS container c1 stopped during start-up (exited, exit code 1)")
    assert "vLLM error: ValueError: bad shape" in msg
    assert log_file.read_text().endswith("ValueError: bad shape\n")


def test_rhaiis_container_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(rhaiis, "container_state", lambda name: {
        "running": True, "status": "running", "exit_code": 0, "fingerprint": None, "id": "x"})
    monkeypatch.setattr(rhaiis, "container_log", lambda name: "")
    url = _free_url()
    with pytest.raises(ToolError, match=f"did not answer {url}/health within 0s"):
        rhaiis.wait_ready("c1", url, "tiny", 0.2, poll_s=0.05)


def test_registry_probe_is_the_shared_probe(endpoint):
    endpoint.status = 401
    addr = endpoint.url.removeprefix("http://")
    from modelgate import registry

    assert registry.probe_v2(addr) == 401
    assert registry.probe_v2(_free_url().removeprefix("http://")) is None
    assert registry.check_reachable(addr, tls_verify=False).startswith("http://")
