"""The delay proxy against a real local HTTP server: it adds the delay it is asked to add.

The upstream is a stdlib ThreadingHTTPServer started here, answering a fixed body
(Content-Length), a streamed body (chunked, one chunk every 60 ms, like server-sent events) and
an echo of a POST body. Timings are measured with http.client from this process; the bounds
leave room for a loaded 2-core host (the proxy may add a few ms of its own, never remove any).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from modelgate.delay_proxy import InterleavingProxy, running_proxy, serving_in_thread
from modelgate.errors import ModelGateError

CHUNKS = 5
CHUNK_GAP_S = 0.06


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # http.server calls do_<METHOD>
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(CHUNKS):
                data = f"data: {i}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(CHUNK_GAP_S)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        body = b"hello " * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = json.dumps({"echo": body.decode(), "host": self.headers["Host"]}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _timed_stream(base: str, path: str = "/stream") -> tuple[float, float, list[bytes]]:
    """(seconds to the first body piece, seconds to the end, the pieces) of one GET."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    t0 = time.monotonic()
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    pieces = []
    first = None
    while data := resp.read1(65536):
        if first is None:
            first = time.monotonic() - t0
        pieces.append(data)
    total = time.monotonic() - t0
    conn.close()
    assert first is not None
    return first, total, pieces


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2]


def test_fixed_delay_adds_to_first_byte_and_total_not_to_gaps(upstream: str) -> None:
    direct = [_timed_stream(upstream) for __ in range(3)]
    with running_proxy(upstream, delay_ms=200) as proxy:
        proxied = [_timed_stream(proxy.url) for __ in range(3)]
        # the proxy counts a response once its upstream side has ended too, which can be a
        # moment after the client has read the last byte
        deadline = time.monotonic() + 5
        while proxy.stats.responses < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = proxy.stats.to_dict()
    d_first, d_total = _median([d[0] for d in direct]), _median([d[1] for d in direct])
    p_first, p_total = _median([p[0] for p in proxied]), _median([p[1] for p in proxied])
    # the 200 ms land on the first byte and on the whole request ...
    assert 0.19 <= p_first - d_first <= 0.30, (d_first, p_first)
    assert 0.19 <= p_total - d_total <= 0.30, (d_total, p_total)
    # ... while the stream keeps its pace: the body still spans ~ (CHUNKS-1) gaps
    assert p_total - p_first == pytest.approx(d_total - d_first, abs=0.06)
    # the SSE events arrive intact, piece by piece (not buffered into one blob)
    assert b"".join(proxied[0][2]) == b"".join(direct[0][2])
    assert len(proxied[0][2]) >= 3
    assert stats["requests"] == 3 and stats["responses"] == 3
    assert stats["added_delay_s_total"] >= 0.55


def test_stretch_slows_the_whole_stream(upstream: str) -> None:
    __, d_total, __ = _timed_stream(upstream)
    with running_proxy(upstream, stretch=1.0) as proxy:
        __, p_total, pieces = _timed_stream(proxy.url)
    span = (CHUNKS - 1) * CHUNK_GAP_S
    assert d_total >= span
    # stretch 1.0 doubles the timeline: the total grows by about the upstream's own duration
    assert p_total - d_total >= 0.8 * span, (d_total, p_total)
    assert p_total <= 2.0 * d_total + 0.15
    assert b"".join(pieces).count(b"data: ") == CHUNKS


def test_keep_alive_post_and_content_length(upstream: str) -> None:
    with running_proxy(upstream, delay_ms=100) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        times = []
        for i in range(3):  # three exchanges on one client connection
            t0 = time.monotonic()
            conn.request("POST", "/echo", body=json.dumps({"i": i}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            times.append(time.monotonic() - t0)
            assert resp.status == 201
            assert json.loads(payload["echo"]) == {"i": i}
            # the upstream sees its own address as Host, like a reverse proxy should send
            assert payload["host"] == upstream.removeprefix("http://")
        conn.request("GET", "/fixed")
        resp = conn.getresponse()
        assert resp.read() == b"hello " * 1000
        conn.close()
        assert proxy.stats.connections == 1
        assert proxy.stats.requests == 4
    assert min(times) >= 0.1


def test_unreachable_upstream_is_a_502() -> None:
    with running_proxy("http://127.0.0.1:1", delay_ms=0) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 502
        assert b"unreachable" in resp.read()
        assert proxy.stats.upstream_errors == 1


def test_cli_runs_listens_and_reports(upstream: str) -> None:
    code = ("import sys; from modelgate.cli import main; "
            "sys.exit(main(sys.argv[1:], modules=('modelgate.delay_proxy',)))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "delay-proxy", "--listen", "127.0.0.1:0",
         "--upstream", upstream, "--delay-ms", "150", "--duration", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["delay_ms"] == 150
        d_first, __, __ = _timed_stream(upstream)
        p_first, __, __ = _timed_stream(ready["listening"])
        assert p_first - d_first >= 0.14
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stats"]["responses"] == 1


class _Named(BaseHTTPRequestHandler):
    """An OpenAI-like upstream: every POST answers a JSON body with a fresh id and the
    upstream's own name, streamed as one server-sent event when asked to."""

    protocol_version = "HTTP/1.1"
    counter = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).counter += 1
        name = self.server.name  # type: ignore[attr-defined]
        data = json.dumps({"id": f"cmpl-{name}-{type(self).counter}", "served_by": name})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        event = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n")
        self.wfile.flush()


@contextlib.contextmanager
def _named_upstreams(tls: ssl.SSLContext | None = None) -> Iterator[dict[str, str]]:
    """Upstreams ``a`` and ``b`` (``_Named``), over TLS for ``localhost`` with ``tls``."""
    servers = {}
    for name in ("a", "b"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.name = name  # type: ignore[attr-defined]
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    try:
        yield {n: (f"https://localhost:{s.server_address[1]}" if tls else
                   f"http://127.0.0.1:{s.server_address[1]}") for n, s in servers.items()}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture()
def two_upstreams() -> Iterator[dict[str, str]]:
    with _named_upstreams() as urls:
        yield urls


def _post(conn: http.client.HTTPConnection) -> tuple[float, dict[str, str]]:
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", body=b"{}", headers={"Content-Type": "x"})
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200
    return time.monotonic() - t0, json.loads(body.removeprefix("data: ").strip())


def test_interleaving_proxy_alternates_and_logs_each_route(
        two_upstreams: dict[str, str], tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.jsonl"
    proxy = InterleavingProxy(two_upstreams, {"b": 150}, routes_path=routes_file)
    with serving_in_thread(proxy):
        # one keep-alive client connection: its requests still go a, b, a, b, ...
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        answers = [_post(conn) for __ in range(6)]
        conn.close()
        deadline = time.monotonic() + 5
        while len(proxy.routes) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    served = [a[1]["served_by"] for a in answers]
    assert served == ["a", "b"] * 3
    # only b's responses carry the 150 ms
    a_times = [t for t, body in answers if body["served_by"] == "a"]
    b_times = [t for t, body in answers if body["served_by"] == "b"]
    assert min(b_times) >= 0.15 and max(a_times) < min(b_times)
    logged = [json.loads(line) for line in routes_file.read_text().splitlines()]
    assert logged == proxy.routes
    # every record names the upstream that produced exactly that response id
    assert [(r["upstream"], r["response_id"]) for r in logged] == \
        [(body["served_by"], body["id"]) for __, body in answers]
    assert all(r["status"] == 200 and r["complete"] for r in logged)
    assert proxy.stats.by_upstream == {"a": 3, "b": 3}


def test_interleaving_proxy_refuses_bad_setups(two_upstreams: dict[str, str]) -> None:
    with pytest.raises(ModelGateError, match="two or more"):
        InterleavingProxy({"a": two_upstreams["a"]})
    with pytest.raises(ModelGateError, match="unknown upstream") as err:
        InterleavingProxy(two_upstreams, {"c": 10})
    assert err.value.field == "delay_ms"


def test_interleave_cli_parses_named_upstreams(two_upstreams: dict[str, str],
                                               tmp_path: Path) -> None:
    code = ("import sys; from modelgate.cli import main; "
            "sys.exit(main(sys.argv[1:], modules=('modelgate.delay_proxy',)))")
    routes_file = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "interleave-proxy", "--listen", "127.0.0.1:0",
         "--upstream", f"a={two_upstreams['a']}", "--upstream", f"b={two_upstreams['b']}",
         "--delay-ms", "a=20", "--routes", str(routes_file), "--duration", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["upstreams"] == two_upstreams
        host, port = ready["listening"].removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        served = [_post(conn)[1]["served_by"] for __ in range(4)]
        conn.close()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert served == ["a", "b", "a", "b"]
    assert json.loads(out)["stats"]["by_upstream"] == {"a": 2, "b": 2}
    assert len(routes_file.read_text().splitlines()) == 4


@pytest.fixture()
def tls_upstreams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Two HTTPS servers with a certificate for ``localhost`` that only SSL_CERT_FILE trusts:
    the Routes of a cluster whose ingress has its own CA."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with _named_upstreams(ctx) as urls:
        yield urls


def test_interleaving_proxy_reaches_tls_upstreams(tls_upstreams: dict[str, str]) -> None:
    proxy = InterleavingProxy(tls_upstreams)
    with serving_in_thread(proxy):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        answers = [_post(conn)[1] for __ in range(4)]
        conn.close()
    assert [a["served_by"] for a in answers] == ["a", "b", "a", "b"]
    assert proxy.stats.upstream_errors == 0
