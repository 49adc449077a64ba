"""The delay proxy against a real local HTTP server: it adds the delay it is asked to add.

The upstream is a stdlib ThreadingHTTPServer started here, answering a fixed body
(Content-Length), a streamed body (chunked, one chunk every 60 ms, like server-sent events) and
an echo of a POST body. Timings are measured with http.client from this process; the bounds
leave room for a loaded 2-core host (the proxy may add a few ms of its own, never remove any).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from modelgate.delay_proxy import running_proxy

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
    direct = [_timed_stream(upstream) for _ in range(3)]
    with running_proxy(upstream, delay_ms=200) as proxy:
        proxied = [_timed_stream(proxy.url) for _ in range(3)]
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
    _, d_total, _ = _timed_stream(upstream)
    with running_proxy(upstream, stretch=1.0) as proxy:
        _, p_total, pieces = _timed_stream(proxy.url)
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
        d_first, _, _ = _timed_stream(upstream)
        p_first, _, _ = _timed_stream(ready["listening"])
        assert p_first - d_first >= 0.14
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stats"]["responses"] == 1
