"""Connections from the router to web instances (or siblings' routers), kept
open and reused: one pool of idle connections per address, no cap.

An `UpstreamConnection` parses the app's answers (httptools) and hands the
pieces to the client connection that sent the request (its `owner`), which
frames them for its client. After a 101 it only passes bytes through.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from router.http import Headers
from router.limits import RouterLimits


class Owner(Protocol):
    """What an upstream connection tells the client connection it serves."""

    def response_head(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def interim_head(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_done(self, upstream: UpstreamConnection) -> None: ...
    def upstream_upgraded(self, upstream: UpstreamConnection, rest: bytes) -> None: ...
    def upstream_lost(self, upstream: UpstreamConnection, why: str) -> None: ...
    def from_tunnel(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def pause_client(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Pool, address: str) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.owner: Owner | None = None
        self.headers: Headers = []
        self.reason = b""
        self.reusable = False  # the app keeps the connection open after this answer
        self.used = 0  # requests sent on it
        self.answered = False  # a byte of the current answer arrived
        self.head_only = False  # the current request was HEAD: its answer has no body
        self.interim = False  # the message being parsed is a 1xx (not 101)
        self.tunnel = False
        self.closed = False
        self.idle_since = 0.0

    # -- from the client connection --

    def send(self, owner: Owner, data: bytes, head_only: bool) -> None:
        self.owner = owner
        self.used += 1
        self.answered = False
        self.head_only = head_only
        assert self.transport is not None
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause(self, paused: bool) -> None:
        """Stop (or go on) reading the app's answer: the client reads slower."""
        if self.transport is not None and not self.closed:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        self.owner = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # -- asyncio --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:  # bytes nobody asked for: the connection is no use any more
            self.close()
            return
        if self.tunnel:
            owner.from_tunnel(data)
            owner.flush()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            self.tunnel = True
            owner.upstream_upgraded(self, data[e.args[0] :])
        except HttpParserError as e:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
            owner.upstream_lost(self, f"bad answer ({e})")
        owner.flush()

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed app connection is not used again

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner = self.owner
        self.owner = None
        if owner is not None:
            owner.upstream_lost(self, "reset" if exc else "closed")
            owner.flush()
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client(False)

    # -- httptools --

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        owner = self.owner
        status = self.parser.get_status_code()
        headers, reason = self.headers, self.reason
        self.headers, self.reason = [], b""
        if owner is None:
            return
        if 100 <= status < 200 and status != 101:
            self.interim = True
            owner.interim_head(status, reason, headers)
            return
        self.reusable = self.parser.should_keep_alive()
        owner.response_head(status, reason, headers)
        if self.head_only:  # httptools cannot be told: its next message starts afresh
            self.parser = HttpResponseParser(self)
            self._done()

    def on_body(self, body: bytes) -> None:
        if self.owner is not None:
            self.owner.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        elif not self.tunnel and not self.parser.should_upgrade():
            self._done()

    def _done(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.response_done(self)


class Pool:
    """Idle keep-alive connections by address; the most recently used goes first."""

    def __init__(self, limits: RouterLimits) -> None:
        self.limits = limits
        self.idle: dict[str, list[UpstreamConnection]] = {}

    def take(self, address: str) -> UpstreamConnection | None:
        conns = self.idle.get(address)
        while conns:
            conn = conns.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, address: str) -> UpstreamConnection:
        """A new connection (TimeoutError after `connect_timeout`, OSError when refused)."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: UpstreamConnection(self, address), host.strip("[]"), int(port)
            ),
            self.limits.connect_timeout,
        )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.setdefault(conn.address, []).append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self.idle.get(conn.address)
        if conns and conn in conns:
            conns.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than `idle_timeout` (oldest are first)."""
        for address, conns in list(self.idle.items()):
            while conns and now - conns[0].idle_since > self.limits.idle_timeout:
                conns.pop(0).close()
            if not conns:
                del self.idle[address]

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
