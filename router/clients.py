"""One client's connection to the router: read requests (httptools), pass each to
an upstream connection, frame the answers back; keep-alive, pipelining (served
in order), timeouts, and after a 101 a plain byte tunnel.

Everything here runs in asyncio's callbacks, no task per request: the hot path
is parse, one write upstream, parse, one write back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from router import pages
from router.http import LAST_CHUNK, chunk, new_request_id
from router.relay import Exchange, Relay
from router.upstreams import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy import Router

log = logging.getLogger(__name__)

MAX_BUFFERED = 64 * 1024  # request body held while an upstream connects; then reading pauses


class ClientConnection(Relay, asyncio.Protocol):
    def __init__(self, router: Router, scheme: bytes) -> None:
        self.router = router
        self.limits = router.limits
        self.scheme = scheme
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = b""
        self.port = 0
        self.parsing: Exchange | None = None  # the request being read
        self.active: Exchange | None = None  # the request being answered
        self.waiting: deque[Exchange] = deque()  # pipelined behind it
        self.ready: Exchange | None = None  # headers complete: start after this read
        self.raw = False  # past an Upgrade request's head: no more HTTP from the client
        self.tunnel: UpstreamConnection | None = None
        self.refuse = 0  # a status to answer with once this read is parsed
        self.in_head = False  # between a request's first byte and the end of its headers
        self.head_size = 0  # of the head being read: its line and the headers so far
        self.head_bytes = 0  # bytes read while its head is unfinished (a bound on memory)
        self.served = 0  # requests answered on this connection
        self.out: list[bytes] = []
        self.forwarded = (b"", b"")  # (Host, its X-Forwarded-* lines): the last one, kept
        self.paused: set[str] = set()
        self.closed = False
        self.deadline = time.monotonic() + self.limits.header_timeout

    # -- asyncio --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client_ip = str(peer[0]).encode() if peer else b""
        self.port = sock[1] if isinstance(sock, tuple) else 0  # a Unix socket's is a path
        self.router.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.deadline = time.monotonic() + self.limits.idle_timeout
            self.tunnel.write(data)
            return
        if self.raw:  # bytes after an Upgrade request: held until the app says 101
            if self.active is not None:
                self.active.body.append(data)
                self._pause_reading("buffer", True)
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            self.raw = True
            upgrading = self.ready or self.active
            if upgrading is not None and e.args[0] < len(data):
                upgrading.body.append(data[e.args[0] :])
        except HttpParserError:
            self.refuse = self.refuse or 400
        if self.refuse:
            self.fail(self.refuse)
        elif self.in_head and self._unfinished_head(len(data)):
            self.fail(431)  # a head still unfinished, and already too big
        elif self.ready is not None:
            ex, self.ready = self.ready, None
            self.start(ex)
        self.flush()

    def _unfinished_head(self, read: int) -> bool:
        """Whether a head that has not ended yet is past the limit. httptools holds
        a header's unfinished name or value itself: count the bytes that came
        meanwhile (at worst one read of a pipelined earlier request too many)."""
        self.head_bytes += read
        return max(self.head_bytes, self.head_size) > self.limits.max_header_kb * 1024

    def eof_received(self) -> bool | None:
        return None  # a client that stops sending is gone (as nginx takes it): close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.router.clients.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
        ex = self.active
        if ex is None:
            return
        if ex.connecting is not None:
            ex.connecting.cancel()
        if ex.upstream is not None:  # gone mid-answer: the app's connection is half-used
            ex.upstream.close()
        if not ex.done and self.tunnel is None:
            ex.status = 499  # the client went away (nginx's and Heroku's code): no app error
            self.router.log(ex, self)
        self.active = None

    def pause_writing(self) -> None:
        self._pause_upstream(True)

    def resume_writing(self) -> None:
        self._pause_upstream(False)

    def _pause_upstream(self, paused: bool) -> None:
        upstream = self.tunnel or (self.active.upstream if self.active else None)
        if upstream is not None:
            upstream.pause(paused)

    # -- httptools: the request --

    def on_message_begin(self) -> None:
        self.parsing = Exchange()
        self.in_head = True
        self.head_size = self.head_bytes = 0
        if self.active is None and self.served:
            self.deadline = time.monotonic() + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.url += url
        self.head_size += len(url)
        if len(ex.url) > self.limits.max_header_kb * 1024:
            self.refuse = self.refuse or 414

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if len(ex.headers) > self.limits.max_headers or (
            self.head_size > self.limits.max_header_kb * 1024
        ):
            self.refuse = self.refuse or 431

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.in_head = False
        if self.refuse:
            return
        parser = self.parser
        ex.method = parser.get_method()
        ex.http10 = parser.get_http_version() == "1.0"
        ex.keep_alive = parser.should_keep_alive()
        ex.index = index = {name.lower(): value for name, value in ex.headers}
        ex.upgrade = index.get(b"upgrade") if parser.should_upgrade() else None
        te = index.get(b"transfer-encoding")
        ex.chunked = te is not None
        if (te is not None and te.strip().lower() != b"chunked") or ex.method == b"CONNECT":
            self.refuse = 501
            return
        length = index.get(b"content-length", b"").strip()
        if length.isdigit() and int(length) > self.limits.max_body_mb << 20:
            self.refuse = 413  # said before a byte of it reaches the app
            return
        if ex.upgrade is not None:
            ex.close_after = True  # unless the app says 101, the client expects a close
        if self.active is None and self.ready is None:
            self.ready = ex
        else:
            self.waiting.append(ex)
            self._pause_reading("queue", True)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or self.refuse:
            return
        ex.received += len(body)
        if ex.received > self.limits.max_body_mb << 20:  # a chunked body past the limit
            self.refuse = 413
            return
        if ex is self.active and ex.upstream is not None and not ex.done:
            ex.upstream.write(chunk(body) if ex.chunked else body)
            self.deadline = time.monotonic() + self.limits.idle_timeout  # a slow body
        elif not ex.done:  # not sent yet (a request answered already drops its body)
            ex.body.append(chunk(body) if ex.chunked else body)
            ex.buffered += len(body)
            if ex.buffered > MAX_BUFFERED:
                self._pause_reading("buffer", True)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.request_done = True
        if ex is self.active and ex.upstream is not None and not ex.done:
            # The whole request is with the app: its turn.
            self.deadline = time.monotonic() + self.limits.first_byte_timeout
        if ex.chunked and not ex.done:
            if ex is self.active and ex.upstream is not None:
                ex.upstream.write(LAST_CHUNK)
            else:
                ex.body.append(LAST_CHUNK)
        if ex is self.active and ex.done and not self.raw:
            self.finish(ex)

    # -- the exchange --

    def start(self, ex: Exchange) -> None:
        self.active = ex
        self.router.route(ex, self)

    # -- ending --

    def finish(self, ex: Exchange) -> None:
        self.flush()
        if ex is not self.active:
            return
        self.active = None
        self.served += 1
        self.router.log(ex, self)
        if ex.close_after or self.closed:
            self.close()
            return
        self.deadline = time.monotonic() + self.limits.idle_timeout
        if self.waiting:
            nxt = self.waiting.popleft()
            if not self.waiting:
                self._pause_reading("queue", False)
            self.start(nxt)

    def fail(self, status: int) -> None:
        """A request the router cannot serve: answer `status`, then close."""
        ex = self.parsing or Exchange()
        self.parsing = None
        self.in_head = False
        if ex.started or (self.active is not None and self.active is not ex):
            self.close()  # mid-answer: nothing more can be said
            return
        if ex.connecting is not None:
            ex.connecting.cancel()
        if ex.upstream is not None:
            ex.upstream.close()
            ex.upstream = None
        self.active = ex
        if ex.request_id == "-":
            ex.request_id = new_request_id()
        self.answer(ex, status, pages.text_for(status, ex.app), close=True)

    def expired(self, now: float) -> None:
        """The deadline passed: what that means depends on what the connection waits for."""
        ex = self.active
        if self.tunnel is not None or (ex is not None and ex.started):
            self.close()  # idle
        elif ex is not None and not ex.done:
            if ex.connecting is not None:
                ex.connecting.cancel()
                ex.connecting = None
            if ex.upstream is not None:
                ex.upstream.close()
                ex.upstream = None
            # The app is slow to answer, or the client to send its body.
            status = 504 if ex.request_done else 408
            self.answer(ex, status, pages.text_for(status, ex.app), close=True)
        elif self.parsing is not None:
            self.fail(408)  # the head is still on its way
        else:
            self.close()  # nothing sent (yet, or since the last answer): close quietly

    def close(self) -> None:
        self.flush()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _pause_reading(self, why: str, paused: bool) -> None:
        if self.transport is None or self.closed:
            return
        before = bool(self.paused)
        if paused:
            self.paused.add(why)
        else:
            self.paused.discard(why)
        if before != bool(self.paused):
            if self.paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
