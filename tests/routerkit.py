"""What the router's tests share: a router on its own loop in a thread, an
`http.server` app that records what reached it, a WebSocket echo app, and raw
HTTP over sockets (so the tests see exactly the bytes on the wire)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from router.limits import RouterLimits
from router.proxy import Router, Upstream, start_router


class RouterThread:
    """A router serving `routes` (app -> upstreams; missing: no such app)."""

    def __init__(
        self,
        routes: dict[str, list[Upstream]],
        limits: RouterLimits = RouterLimits(),  # noqa: B008 - frozen
        name: str = "n1",
        domain: str = "localhost",
        local: dict[str, list[Upstream]] | None = None,
        **options: Any,
    ) -> None:
        self.routes = routes
        self.lines: list[tuple[str, str]] = []  # what on_request got
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        def lookup(app: str, local_only: bool) -> list[Upstream] | None:
            return (local if local is not None and local_only else routes).get(app)

        def on_request(app: str, line: str) -> None:
            self.lines.append((app, line))

        started = start_router(
            lookup, domain, name, "127.0.0.1", 0, limits=limits, on_request=on_request, **options
        )
        self.router: Router = self.run(started)
        self.port = self.router.addresses[0][1]

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.run(self.router.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def wait_lines(self, n: int, timeout: float = 5) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.lines)


@contextlib.contextmanager
def router(routes: dict[str, list[Upstream]], **kw: Any) -> Iterator[RouterThread]:
    r = RouterThread(routes, **kw)
    try:
        yield r
    finally:
        r.close()


class Seen:
    """What the app received: one dict per request, and how many connections it accepted."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.accepted = 0


class App(BaseHTTPRequestHandler):
    """An app as `http.server` serves it (HTTP/1.1, keep-alive): it reads a body
    by its Content-Length (or chunked, decoded here) and answers by path."""

    protocol_version = "HTTP/1.1"
    seen: Seen

    def log_message(self, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()  # no trailers: the blank line
            return out
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def handle_one(self) -> None:
        body = self.body()
        self.seen.requests.append(
            {"method": self.command, "path": self.path, "headers": self.headers.items()}
            | {"body": body}
        )
        path = self.path.split("?")[0]
        if path == "/slow":
            time.sleep(float(self.headers.get("X-Sleep", "2")))
        if path == "/chunked":  # an answer sent chunked
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/unsized":  # an answer that ends when the app closes
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
            return
        answer = json.dumps(
            {"method": self.command, "length": len(body), "sha": hashlib.sha256(body).hexdigest()}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if path == "/hop":  # hop-by-hop headers the client must not see
            self.send_header("Connection", "X-Internal")
            self.send_header("X-Internal", "secret")
            self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_HEAD = handle_one


@contextlib.contextmanager
def app_server() -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, Any]:
            seen.accepted += 1
            return super().get_request()

    handler = type("Handler", (App,), {"seen": seen})
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


# -- WebSocket: just enough of RFC 6455 for an echo --

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def ws_frame(payload: bytes, mask: bool) -> bytes:
    assert len(payload) < 126
    if not mask:
        return bytes([0x81, len(payload)]) + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


def ws_read(read: Callable[[int], bytes]) -> bytes:
    """One small frame's payload, unmasked."""
    first, second = read(2)
    assert first == 0x81, first
    size, masked = second & 0x7F, second & 0x80
    key = read(4) if masked else b"\0\0\0\0"
    return bytes(b ^ key[i % 4] for i, b in enumerate(read(size)))


@contextlib.contextmanager
def ws_echo_server() -> Iterator[str]:
    """An app that upgrades to WebSocket and echoes each text frame back."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
            )
            reader = conn.makefile("rb")
            with contextlib.suppress(OSError, ValueError, AssertionError):
                while True:
                    conn.sendall(ws_frame(ws_read(reader.read), mask=False))

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


# -- raw HTTP --


def raw(port: int, data: bytes, timeout: float = 10, host: str = "127.0.0.1") -> bytes:
    """Send `data`, read until the router closes the connection."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def get(port: int, host: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    """GET `path` from `host` on its own connection: (status, headers, body)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    return parse(raw(port, request.encode()))


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lowercased name, body as sent) of one raw response."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice in {head!r}"
        headers[name.lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body
