"""The answering half of a client connection: send a request on to an upstream
connection and frame the app's answer for the client (see upstreams.Owner),
or answer with one of the router's own pages.

`Relay` is a base of `clients.ClientConnection`, which reads the requests and
owns the connection's life (`finish`, `close`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from router import pages
from router.http import LAST_CHUNK, Headers, chunk, has_body, response_head
from router.limits import RouterLimits
from router.upstreams import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy import Router

log = logging.getLogger(__name__)


class Exchange:
    """One request and its answer. Most fields keep their class default: a request
    costs one small dict, not thirty assignments."""

    method = b"GET"
    url = b""
    http10 = False
    keep_alive = True
    upgrade: bytes | None = None
    chunked = False  # the request's body comes chunked
    index: dict[bytes, bytes] = {}  # noqa: RUF012 - lowercased name -> value (the last one)
    buffered = 0
    received = 0  # bytes of the request's body so far (the body limit counts them)
    request_done = False
    app = ""
    address = ""
    head = b""
    router_hop = False  # the upstream is a sibling's router
    relayed = False  # from a sibling's router (which logs it)
    request_id = "-"
    upstream: UpstreamConnection | None = None
    connecting: asyncio.Task[UpstreamConnection] | None = None
    retried = False
    status = 0
    started = False  # the answer's head went out
    done = False  # the whole answer went out (or is in the buffer)
    out_chunked = False
    until_close = False  # the app ends its answer by closing
    close_after = False
    bytes = 0

    def __init__(self) -> None:
        self.headers: Headers = []
        self.body: list[bytes] = []  # what came before an upstream was there to take it
        self.t0 = self.t_connect = time.monotonic()


class Relay:
    """The answering half; `ClientConnection` gives it these attributes and the
    three methods below."""

    router: Router
    limits: RouterLimits
    transport: asyncio.Transport | None
    active: Exchange | None
    tunnel: UpstreamConnection | None
    out: list[bytes]
    closed: bool
    deadline: float
    paused: set[str]  # why reading from the client is paused
    client_ip: bytes
    scheme: bytes  # b"http" or b"https": which listener

    def finish(self, ex: Exchange) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _pause_reading(self, why: str, paused: bool) -> None:
        raise NotImplementedError

    def answer(self, ex: Exchange, status: int, text: str, close: bool = False) -> None:
        """The router's own answer (an error page) to `ex`."""
        ex.status = status
        ex.close_after = ex.close_after or close or not ex.keep_alive
        head_only = ex.method == b"HEAD"
        data = pages.page(status, text, ex.request_id, self.router.via, ex.close_after, head_only)
        self.write_answer(ex, data)

    def write_answer(self, ex: Exchange, data: bytes) -> None:
        """Send a whole answer the router made (it says Connection: close when
        `ex.keep_alive` is false)."""
        ex.close_after = ex.close_after or not ex.keep_alive
        ex.started = ex.done = True
        ex.bytes = len(data)
        ex.body = []
        self.out.append(data)
        self.flush()
        if ex.request_done or ex.close_after:
            self.finish(ex)

    def send(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        """The request's head and what came of its body so far, in one write."""
        ex.upstream = upstream
        ex.t_connect = time.monotonic()
        wait = self.limits.first_byte_timeout if ex.request_done else self.limits.idle_timeout
        self.deadline = ex.t_connect + wait
        if ex.upgrade is not None:  # the rest is for the new protocol, if the app agrees:
            upstream.send(self, ex.head, False)  # never HTTP the app could read as a request
            return
        data = ex.head + b"".join(ex.body) if ex.body else ex.head
        ex.body = []
        upstream.send(self, data, ex.method == b"HEAD")
        if self.paused:
            self._pause_reading("buffer", False)

    def forward(self, ex: Exchange) -> None:
        """To `ex.address` on a kept-alive connection, else on a new one."""
        upstream = self.router.pool.take(ex.address)
        if upstream is not None:
            self.send(ex, upstream)
        else:
            self.connect(ex)

    def connect(self, ex: Exchange) -> None:
        self.deadline = time.monotonic() + self.limits.connect_timeout + 1  # wait_for's turn
        task = asyncio.ensure_future(self.router.pool.connect(ex.address))
        ex.connecting = task
        task.add_done_callback(lambda t: self._connected(ex, t))

    def _connected(self, ex: Exchange, task: asyncio.Task[UpstreamConnection]) -> None:
        ex.connecting = None
        if task.cancelled():
            return
        error = task.exception()
        if ex is not self.active or self.closed or ex.done:
            if error is None:
                task.result().close()
            return
        if error is None:
            self.send(ex, task.result())
        elif isinstance(error, TimeoutError):
            self.answer(ex, 504, pages.text_for(504, ex.app), close=not ex.request_done)
        else:
            log.info("router: %s -> %s: %s", ex.app, ex.address, error)
            self.answer(ex, 502, pages.text_for(502, ex.app), close=not ex.request_done)
        self.flush()

    # -- from the upstream connection (see upstreams.Owner) --

    def interim_head(self, status: int, reason: bytes, headers: Headers) -> None:
        ex = self.active
        if ex is not None and not ex.http10:  # 100 Continue and the like
            out = response_head(status, reason, headers, self.router.via, False)[0]
            self.out.append(b"".join(out) + b"\r\n")

    def response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        ex = self.active
        assert ex is not None
        out, sized, chunked = response_head(status, reason, headers, self.router.via, ex.router_hop)
        self._head(ex, status, out, sized, chunked)

    def _head(
        self, ex: Exchange, status: int, out: list[bytes], sized: bool, chunked: bool
    ) -> None:
        """Add the framing lines the router chooses to the head in `out`, and send it."""
        self.deadline = time.monotonic() + self.limits.idle_timeout
        ex.status, ex.started = status, True
        if status == 101:
            out.extend((b"Connection: Upgrade\r\nUpgrade: ", ex.upgrade or b"", b"\r\n"))
        else:
            if has_body(ex.method, status) and (chunked or not sized):
                ex.until_close = not chunked  # the app ends its answer by closing
                if ex.http10:
                    ex.close_after = True
                else:
                    ex.out_chunked = True
                    out.append(b"Transfer-Encoding: chunked\r\n")
            if ex.close_after or not ex.keep_alive:
                ex.close_after = True
                out.append(b"Connection: close\r\n")
            elif ex.http10:
                out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        head = b"".join(out)
        ex.bytes += len(head)
        self.out.append(head)

    def response_body(self, data: bytes) -> None:
        ex = self.active
        assert ex is not None
        ex.bytes += len(data)
        self.deadline = time.monotonic() + self.limits.idle_timeout
        self.out.append(chunk(data) if ex.out_chunked else data)

    def response_done(self, upstream: UpstreamConnection) -> None:
        ex = self.active
        assert ex is not None
        if ex.out_chunked:
            self.out.append(LAST_CHUNK)
        ex.done = True
        ex.upstream = None
        if upstream.reusable and ex.request_done and not ex.until_close and ex.upgrade is None:
            self.router.pool.release(upstream)
        else:
            upstream.close()
        if ex.request_done or ex.close_after:
            self.finish(ex)

    def upstream_upgraded(self, upstream: UpstreamConnection, rest: bytes) -> None:
        ex = self.active
        if ex is None or ex.upgrade is None or ex.status != 101:
            upstream.close()
            self.close()
            return
        self.tunnel = upstream
        ex.done = True
        self.router.log(ex, self)
        if rest:
            self.out.append(rest)
        if ex.body:
            upstream.write(b"".join(ex.body))
            ex.body = []
        self._pause_reading("buffer", False)

    def from_tunnel(self, data: bytes) -> None:
        self.deadline = time.monotonic() + self.limits.idle_timeout
        self.out.append(data)

    def upstream_lost(self, upstream: UpstreamConnection, why: str) -> None:
        ex = self.active
        if self.tunnel is upstream:
            self.close()
        elif ex is None or ex.upstream is not upstream:
            return
        elif ex.started:
            if ex.until_close:  # the app's way to end this answer
                self.response_done(upstream)
            else:  # cut short: the client must not take it for the whole answer
                self.close()
        elif upstream.used > 1 and not upstream.answered and not ex.retried and not ex.chunked \
                and b"content-length" not in ex.index:  # fmt: skip
            # A kept-alive connection the app had just closed: try once on a new one.
            ex.retried = True
            ex.upstream = None
            ex.body = []
            self.connect(ex)
        else:
            ex.upstream = None
            log.info("router: %s -> %s: %s before answering", ex.app, ex.address, why)
            self.answer(ex, 502, pages.text_for(502, ex.app), close=not ex.request_done)

    def pause_client(self, paused: bool) -> None:
        self._pause_reading("upstream", paused)

    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
