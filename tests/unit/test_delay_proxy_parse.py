"""Pure parts of the delay proxy: address parsing and the request head it forwards."""

from __future__ import annotations

import pytest
from modelgate.delay_proxy import (
    DelayProxy,
    _forward_head,
    _parse_head,
    parse_hostport,
    parse_upstream,
)
from modelgate.errors import ModelGateError


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:18901", ("127.0.0.1", 18901)),
    (":18901", ("127.0.0.1", 18901)),
    ("[::1]:80", ("::1", 80)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["18901", "host:", "host:http", "h:70000"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ModelGateError) as err:
        parse_hostport(text)
    assert err.value.field == "listen"


def test_parse_upstream() -> None:
    assert parse_upstream("http://127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_upstream("http://127.0.0.1:8000/") == ("127.0.0.1", 8000)
    assert parse_upstream("localhost:9000") == ("localhost", 9000)
    assert parse_upstream("http://example") == ("example", 80)
    # a cluster's Route: TLS on the scheme's port
    assert parse_upstream("https://nemotron-w4a16-modelgate.apps.example.com") == (
        "nemotron-w4a16-modelgate.apps.example.com", 443)
    for bad in ("ftp://127.0.0.1:8000", "http://127.0.0.1:8000/v1"):
        with pytest.raises(ModelGateError) as err:
            parse_upstream(bad)
        assert err.value.field == "upstream"


def test_forward_head_drops_hop_headers_and_rewrites_host() -> None:
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: proxy:1\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\nContent-Length: 2\r\nX-Trace: a:b\r\n\r\n")
    line, headers = _parse_head(head)
    assert line == "POST /v1/completions HTTP/1.1"
    assert ("X-Trace", "a:b") in headers
    out = _forward_head(line, headers, "up:8000", close=False).decode()
    assert out.startswith("POST /v1/completions HTTP/1.1\r\n")
    assert "Host: up:8000\r\n" in out
    assert "Content-Length: 2\r\n" in out and "X-Trace: a:b\r\n" in out
    assert "Connection" not in out and "Keep-Alive" not in out
    assert out.endswith("\r\n\r\n")


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ModelGateError):
        DelayProxy("http://127.0.0.1:8000", delay_ms=-1)
    proxy = DelayProxy("http://127.0.0.1:8000", delay_ms=10)
    proxy.set_delay(-5, stretch=-1)  # clamped: a proxy can only add latency
    assert proxy.delay_s == 0.0 and proxy.stretch == 0.0
