"""A delay-injecting HTTP reverse proxy: a chaos helper that makes a server look slower.

``modelgate delay-proxy --listen 127.0.0.1:18901 --upstream http://127.0.0.1:8000 --delay-ms 80``
forwards every request to the upstream unchanged and holds back the response: every byte of it
is released ``delay_ms`` later than it arrived from the upstream, and with ``stretch`` > 0 the
response's timeline is also stretched (a piece that arrived ``t`` seconds after the request was
forwarded is released at ``delay + (1 + stretch) * t``). Streaming responses (server-sent events,
chunked transfer) are passed through piece by piece as the upstream sends them, so a client
measures what it would against a slower server:

* ``delay_ms`` adds to time-to-first-token and request latency, not to inter-token latency
  (a slower prefill, a longer network path);
* ``stretch`` multiplies TTFT, inter-token latency and request latency alike (a slower model).

``modelgate interleave-proxy --listen 127.0.0.1:18902 --upstream baseline=http://127.0.0.1:8000
--upstream candidate=http://127.0.0.1:8001 --routes routes.jsonl`` (``InterleavingProxy``) sends
the requests to its upstreams in turn and logs which one answered each request (by the
response's id), so one load-client run measures two variants at the same moments
(``modelgate.loadtest.split_interleaved`` splits its report per variant); ``--delay-ms NAME=MS``
delays one upstream, a known regression.

They prove that the gate catches a known regression (``bench/gate.py``) and work with any
HTTP/1.1 server: one upstream connection per client connection and upstream, keep-alive kept,
request and response bodies framed by Content-Length, chunked encoding or connection close.
Standard library only (asyncio streams), so it runs in every virtualenv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from modelgate.errors import ModelGateError

# Headers that describe one hop, not the message (RFC 9110 7.6.1); never forwarded as-is.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
_READ_SIZE = 65536
_MAX_HEAD = 64 * 1024
_P = TypeVar("_P", bound="DelayProxy")  # serving_in_thread returns what it was given


@dataclass
class DelayProxyStats:
    """What the proxy did so far (read it while it runs, or after it stops)."""

    connections: int = 0
    requests: int = 0
    responses: int = 0
    upstream_errors: int = 0
    added_delay_s_total: float = 0.0
    by_upstream: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {**asdict(self), "added_delay_s_total": round(self.added_delay_s_total, 3)}


def parse_hostport(text: str, field: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, meaning 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ModelGateError(f"{field} must be HOST:PORT, got {text!r}", field=field,
                             fix="e.g. 127.0.0.1:18901")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_upstream(url: str) -> tuple[str, int]:
    """``http[s]://HOST[:PORT]`` -> (host, port), the port defaulting to the scheme's."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelGateError(f"upstream must be an http:// or https:// URL, got {url!r}",
                             field="upstream", fix="e.g. http://127.0.0.1:8000")
    if parts.path not in ("", "/"):
        raise ModelGateError(f"upstream {url!r} has a path; the proxy forwards paths unchanged",
                             field="upstream", fix="give only scheme, host and port")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def upstream_tls(url: str) -> ssl.SSLContext | None:
    """The TLS context for an ``https://`` upstream (a cluster's Route), None for http.

    Verified against the system's CAs, or ``SSL_CERT_FILE`` where the cluster's ingress
    certificate is signed by its own CA, as the clients that talk to it directly do.
    """
    return ssl.create_default_context() if urlsplit(url).scheme == "https" else None


class _ClosedEarly(Exception):
    """The peer closed the connection in the middle of a message."""


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """One message head up to and including the blank line; None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _ClosedEarly from exc
    except asyncio.LimitOverrunError as exc:
        raise _ClosedEarly("message head too large") from exc
    return head


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, __, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    te = _header(headers, "transfer-encoding") or ""
    return te.lower().split(",")[-1].strip() == "chunked"


async def _body_pieces(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                       until_close: bool) -> AsyncIterator[bytes]:
    """Yield a message body's raw bytes (framing included) as they arrive."""
    if _is_chunked(headers):
        while True:
            size_line = await reader.readline()
            if not size_line.endswith(b"\n"):
                raise _ClosedEarly("chunked body cut off")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # last chunk: optional trailers, then an empty line
                tail = size_line
                while True:
                    line = await reader.readline()
                    if not line.endswith(b"\n"):
                        raise _ClosedEarly("chunked trailer cut off")
                    tail += line
                    if line in (b"\r\n", b"\n"):
                        break
                yield tail
                return
            try:
                data = await reader.readexactly(size + 2)  # chunk data + CRLF
            except asyncio.IncompleteReadError as exc:
                raise _ClosedEarly("chunk cut off") from exc
            # one upstream chunk (e.g. one server-sent event) is one piece downstream
            yield size_line + data
        return
    length = _header(headers, "content-length")
    if length is not None:
        remaining = int(length)
        while remaining > 0:
            data = await reader.read(min(remaining, _READ_SIZE))
            if not data:
                raise _ClosedEarly("body shorter than Content-Length")
            remaining -= len(data)
            yield data
        return
    if until_close:
        while data := await reader.read(_READ_SIZE):
            yield data


def _forward_head(start_line: str, headers: list[tuple[str, str]], host: str | None,
                  close: bool) -> bytes:
    out = [start_line]
    for key, value in headers:
        low = key.lower()
        if low in _HOP_HEADERS:
            continue
        if low == "host" and host is not None:
            value = host
        out.append(f"{key}: {value}")
    if close:
        out.append("Connection: close")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


@dataclass
class _Route:
    """One upstream of the proxy and what it adds to that upstream's responses."""

    name: str
    url: str
    host: str
    port: int
    delay_s: float = 0.0
    stretch: float = 0.0
    tls: ssl.SSLContext | None = None

    @property
    def host_header(self) -> str:
        """``host`` alone on the scheme's own port (a Route is matched by its host name)."""
        default = 443 if self.tls is not None else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


# The response's id (OpenAI-style APIs put it in every JSON body and in each streamed event);
# it is what a load client records per request, so a route can be matched to a request.
_ID_RE = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')
_ID_SCAN_BYTES = 16384


class DelayProxy:
    """An asyncio reverse proxy that delays (and optionally stretches) every response."""

    # whether _record keeps the routes: only then is a response's id looked for
    records_routes = False

    def __init__(self, upstream: str, delay_ms: float = 0.0, stretch: float = 0.0,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        """``listen_port`` 0 picks a free port (read ``port`` after ``start``)."""
        self._routes = [_make_route("upstream", upstream, delay_ms, stretch)]
        self.upstream = upstream
        self.upstream_host, self.upstream_port = self._routes[0].host, self._routes[0].port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.stats = DelayProxyStats()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def delay_s(self) -> float:
        """The delay added to the (first) upstream's responses, in seconds."""
        return self._routes[0].delay_s

    @property
    def stretch(self) -> float:
        """The stretch factor of the (first) upstream's response timeline."""
        return self._routes[0].stretch

    @property
    def port(self) -> int:
        """The port it listens on (after ``start``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL clients should use instead of the upstream's."""
        return f"http://{self.listen_host}:{self.port}"

    def set_delay(self, delay_ms: float, stretch: float | None = None) -> None:
        """Change the delay for responses that start from now on (thread-safe enough:
        a float assignment)."""
        self._routes[0].delay_s = max(0.0, delay_ms) / 1000.0
        if stretch is not None:
            self._routes[0].stretch = max(0.0, stretch)

    def _pick(self) -> int:
        """Index of the route for the next request."""
        return 0

    def _record(self, route: _Route, sent: float, status: int | None,
                response_id: str | None, complete: bool) -> None:
        """Called once per relayed request (a hook for subclasses)."""

    async def start(self) -> None:
        """Listen; returns once the socket is bound."""
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.listen_port, limit=_MAX_HEAD)

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def _handle(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        # one upstream connection per route, opened when a request first goes there
        conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        try:
            while await self._exchange(c_reader, c_writer, conns):
                pass
        except (_ClosedEarly, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a peer went away or sent garbage: drop this connection only
        finally:
            for w in [c_writer, *(w for __, w in conns.values())]:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _refuse(self, c_writer: asyncio.StreamWriter, route: _Route,
                      exc: OSError) -> None:
        self.stats.upstream_errors += 1
        body = f"delay-proxy: upstream {route.url} unreachable: {exc}\n".encode()
        c_writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                       b"Connection: close\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)
        await c_writer.drain()

    async def _exchange(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter,
        conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    ) -> bool:
        """Relay one request and its response; False when the connection should end."""
        head = await _read_head(c_reader)
        if head is None:
            return False
        request_line, req_headers = _parse_head(head)
        method = request_line.split(" ", 1)[0].upper()
        client_close = (_header(req_headers, "connection") or "").lower() == "close" or \
            request_line.endswith("HTTP/1.0")
        self.stats.requests += 1
        index = self._pick()
        route = self._routes[index]
        self.stats.by_upstream[route.name] = self.stats.by_upstream.get(route.name, 0) + 1
        sent = time.time()
        if index not in conns:
            try:
                conns[index] = await asyncio.open_connection(
                    route.host, route.port, limit=_MAX_HEAD, ssl=route.tls,
                    server_hostname=route.host if route.tls is not None else None)
            except OSError as exc:
                self._record(route, sent, 502, None, False)
                await self._refuse(c_writer, route, exc)
                return False
        u_reader, u_writer = conns[index]
        u_writer.write(_forward_head(request_line, req_headers, route.host_header, False))
        async for piece in _body_pieces(c_reader, req_headers, until_close=False):
            u_writer.write(piece)
        await u_writer.drain()
        # The clock of this exchange starts when the request has been handed upstream.
        t0 = time.monotonic()
        delay, stretch = route.delay_s, route.stretch

        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        state: dict[str, Any] = {"upstream_close": False, "status": None, "id": None,
                                 "scan": b""}

        async def pump() -> None:
            # Reads the upstream as fast as it sends, stamping each piece with its arrival
            # time; the relay below releases pieces on the delayed timeline.
            rhead = await _read_head(u_reader)
            if rhead is None:
                raise _ClosedEarly("upstream closed without a response")
            await queue.put((time.monotonic(), rhead))
            status_line, resp_headers = _parse_head(rhead)
            status = int(status_line.split(" ", 2)[1])
            state["status"] = status
            conn = (_header(resp_headers, "connection") or "").lower()
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            framed = _is_chunked(resp_headers) or \
                _header(resp_headers, "content-length") is not None
            state["upstream_close"] = conn == "close" or (not framed and not no_body)
            if not no_body:
                async for piece in _body_pieces(u_reader, resp_headers, until_close=True):
                    if self.records_routes and state["id"] is None and \
                            len(state["scan"]) < _ID_SCAN_BYTES:
                        state["scan"] += piece
                        found = _ID_RE.search(state["scan"])
                        if found:
                            state["id"] = found.group(1).decode("utf-8", "replace")
                    await queue.put((time.monotonic(), piece))
            await queue.put(None)

        pump_task = asyncio.create_task(pump())
        complete = False
        try:
            first = True
            while True:
                item = await queue.get()
                if item is None:
                    break
                arrived, piece = item
                release = t0 + delay + (1.0 + stretch) * (arrived - t0)
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if first:
                    self.stats.added_delay_s_total += max(0.0, time.monotonic() - arrived)
                    first = False
                c_writer.write(piece)
                await c_writer.drain()
            await pump_task  # re-raises an upstream failure
            complete = True
        except BaseException:
            pump_task.cancel()
            raise
        finally:
            self._record(route, sent, state["status"], state["id"], complete)
        self.stats.responses += 1
        if state["upstream_close"]:
            # this upstream ends its connection; the client's may go on (to another route)
            conns.pop(index)[1].close()
        return not (client_close or (state["upstream_close"] and len(self._routes) == 1))


class InterleavingProxy(DelayProxy):
    """Sends requests to its named upstreams in turn (A, B, A, B, ... in order of arrival),
    each with its own added delay, and logs which upstream answered which request.

    Two variants measured by one load client through it share every moment of the run, so
    whatever slows the host for a few seconds slows both alike: the noise that separate
    runs of each variant cannot cancel. ``routes`` (and the JSON-lines file ``routes_path``,
    written as requests finish) hold one record per request: ``seq``, ``upstream``, ``sent``
    (epoch seconds), ``status``, ``response_id`` (the id in the response body, which a load
    client such as GuideLLM records per request) and ``complete``.
    """

    def __init__(self, upstreams: dict[str, str], delays_ms: dict[str, float] | None = None,
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 routes_path: str | Path | None = None) -> None:
        """``upstreams``: name -> base URL, in the order requests go round them."""
        if len(upstreams) < 2:
            raise ModelGateError("interleaving needs two or more upstreams",
                                 field="upstream", fix="give NAME=URL at least twice")
        delays = dict(delays_ms or {})
        unknown = sorted(set(delays) - set(upstreams))
        if unknown:
            raise ModelGateError(f"delay for unknown upstream(s) {', '.join(unknown)}",
                                 field="delay_ms", fix=f"use one of: {', '.join(upstreams)}")
        first, *__ = upstreams.items()
        super().__init__(first[1], delays.get(first[0], 0.0), 0.0, listen_host, listen_port)
        self._routes = [_make_route(name, url, delays.get(name, 0.0), 0.0)
                        for name, url in upstreams.items()]
        self._next = 0
        self.routes: list[dict[str, Any]] = []
        # open for the proxy's lifetime (closed in close()), one line per finished request
        self._routes_file = (
            Path(routes_path).open("a") if routes_path else None  # noqa: SIM115
        )

    records_routes = True

    def _pick(self) -> int:
        index = self._next % len(self._routes)
        self._next += 1
        return index

    def _record(self, route: _Route, sent: float, status: int | None,
                response_id: str | None, complete: bool) -> None:
        rec = {"seq": len(self.routes), "upstream": route.name, "sent": round(sent, 6),
               "status": status, "response_id": response_id, "complete": complete}
        self.routes.append(rec)
        if self._routes_file is not None:
            self._routes_file.write(json.dumps(rec) + "\n")
            self._routes_file.flush()

    async def close(self) -> None:
        await super().close()
        if self._routes_file is not None:
            self._routes_file.close()


def _make_route(name: str, url: str, delay_ms: float, stretch: float) -> _Route:
    if delay_ms < 0 or stretch < 0:
        raise ModelGateError("delay_ms and stretch must be >= 0", field="delay_ms",
                             fix="a proxy can only add latency")
    host, port = parse_upstream(url)
    return _Route(name=name, url=url, host=host, port=port, delay_s=delay_ms / 1000.0,
                  stretch=stretch, tls=upstream_tls(url))


@contextlib.contextmanager
def running_proxy(upstream: str, delay_ms: float = 0.0, stretch: float = 0.0,
                  listen_host: str = "127.0.0.1", listen_port: int = 0) -> Iterator[DelayProxy]:
    """Run a DelayProxy on its own event loop in a background thread, for synchronous code.

    Yields the started proxy (``proxy.url`` is where clients go); stops it on exit.
    """
    with serving_in_thread(DelayProxy(upstream, delay_ms, stretch, listen_host,
                                      listen_port)) as proxy:
        yield proxy


@contextlib.contextmanager
def serving_in_thread(proxy: _P) -> Iterator[_P]:
    """Serve ``proxy`` (a DelayProxy or InterleavingProxy) on its own event loop in a
    background thread; yields it started, stops it on exit."""
    listen_host, listen_port = proxy.listen_host, proxy.listen_port
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def _run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(proxy.start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(proxy.close())
        loop.close()

    thread = threading.Thread(target=_run, name="delay-proxy", daemon=True)
    thread.start()
    started.wait()
    if failure:
        raise ModelGateError(
            f"delay proxy cannot listen on {listen_host}:{listen_port}: {failure[0]}",
            field="listen", fix="choose a free port",
        ) from failure[0]
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# ------------------------------------------------------------------ CLI


def _serve_cli(proxy: DelayProxy, duration: float | None, announce: dict[str, Any]) -> None:
    """Listen, print one JSON line, serve until SIGINT/SIGTERM or ``duration`` seconds."""
    host, port = proxy.listen_host, proxy.listen_port

    async def _main() -> None:
        try:
            await proxy.start()
        except OSError as exc:
            raise ModelGateError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                 field="listen", fix="choose a free port") from exc
        # One JSON line as soon as it listens, so a script can wait for it.
        print(json.dumps({"listening": proxy.url, **announce}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        if duration:
            loop.call_later(duration, stop.set)
        await stop.wait()
        await proxy.close()
        print(f"proxy stopped after {time.monotonic() - started:.0f}s", file=sys.stderr)

    asyncio.run(_main())


def _cmd_delay_proxy(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    host, port = parse_hostport(args.listen)
    proxy = DelayProxy(args.upstream, args.delay_ms, args.stretch, host, port)
    _serve_cli(proxy, args.duration, {"upstream": proxy.upstream, "delay_ms": args.delay_ms,
                                      "stretch": args.stretch})
    emit({"stopped": True, "stats": proxy.stats.to_dict()})
    return 0


def parse_named(items: list[str], option: str, number: bool) -> dict[str, Any]:
    """``NAME=VALUE`` options -> an ordered dict (values as floats when ``number``)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or name in out:
            raise ModelGateError(f"{option} must be NAME=VALUE with a new NAME, got {item!r}",
                                 field=option.lstrip("-"),
                                 fix=f"e.g. {option} baseline=" + ("40" if number else
                                                                   "http://127.0.0.1:8000"))
        try:
            out[name] = float(value) if number else value
        except ValueError as exc:
            raise ModelGateError(f"{option} {item!r}: {value!r} is not a number",
                                 field=option.lstrip("-"), fix="give milliseconds") from exc
    return out


def _cmd_interleave_proxy(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    host, port = parse_hostport(args.listen)
    upstreams = parse_named(args.upstream, "--upstream", number=False)
    proxy = InterleavingProxy(upstreams, parse_named(args.delay_ms, "--delay-ms", number=True),
                              host, port, routes_path=args.routes)
    _serve_cli(proxy, args.duration, {"upstreams": upstreams, "routes": args.routes})
    emit({"stopped": True, "stats": proxy.stats.to_dict()})
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``modelgate delay-proxy`` and ``modelgate interleave-proxy``."""
    p = subparsers.add_parser(
        "delay-proxy", help="reverse proxy that adds latency to an HTTP server (chaos testing)",
        description="Forward HTTP/1.1 requests to --upstream and release each response "
                    "--delay-ms later (streaming responses piece by piece); --stretch F also "
                    "stretches the response timeline by (1+F). Runs until SIGINT/SIGTERM or "
                    "--duration seconds; prints one JSON line when listening and a JSON summary "
                    "at the end.",
    )
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on, e.g. 127.0.0.1:18901")
    p.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="added to every response's first (and every later) byte")
    p.add_argument("--stretch", type=float, default=0.0,
                   help="stretch factor of the response timeline (0.25: 25%% slower streaming)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=_cmd_delay_proxy)

    p = subparsers.add_parser(
        "interleave-proxy", help="reverse proxy that sends requests to several servers in turn",
        description="Forward HTTP/1.1 requests to the --upstream servers in turn (the first "
                    "request to the first, the second to the second, ...), so one load client "
                    "measures them interleaved; --delay-ms NAME=MS delays one upstream's "
                    "responses. Each request's upstream, status and response id go to --routes "
                    "(JSON lines) as it finishes. Runs until SIGINT/SIGTERM or --duration.",
    )
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    p.add_argument("--upstream", action="append", required=True,
                   help="NAME=URL, given twice or more, e.g. baseline=http://127.0.0.1:8000")
    p.add_argument("--delay-ms", action="append", default=[],
                   help="NAME=MS: add MS milliseconds to that upstream's responses")
    p.add_argument("--routes", default=None, help="JSON-lines file of the routed requests")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=_cmd_interleave_proxy)


def main(argv: list[str] | None = None) -> int:
    """``python -m modelgate.delay_proxy delay-proxy|interleave-proxy ...``: these commands
    without modelgate.cli's other commands (a tool virtualenv, or a bench that starts the
    proxy as its own process)."""
    from modelgate.cli import main as cli_main

    return cli_main(argv, modules=("modelgate.delay_proxy",))


if __name__ == "__main__":
    sys.exit(main())
