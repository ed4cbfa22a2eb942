"""A small HTTP/1.1 server on asyncio streams, for the daemon's local API (a Unix
socket) and the swarm's peer API (TCP): one request per connection, bodies with a
Content-Length only, read when the handler asks (so it may check the headers
first), JSON or raw answers, and streamed answers in chunked encoding.

Why not aiohttp: its import alone is about 10 MB of the daemon's RSS. Both APIs'
clients (`dashboard.local`, `swarm.peer_client`) send one request per
connection, so this server reads one, answers and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger("pc.dashboard")

MAX_HEAD = 16 * 1024  # request line and headers
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
LINGER = 1.0  # seconds to drop a refused request's body (see _linger)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    length: int  # of the body, at most the server's max_body
    reader: asyncio.StreamReader
    match_info: dict[str, str] = field(default_factory=dict)
    body_read: asyncio.Event = field(default_factory=asyncio.Event)
    _body: bytes | None = None

    async def read(self) -> bytes:
        """The body (read once, on the first call: a handler may refuse before)."""
        if self._body is None:
            self._body = await asyncio.wait_for(self.reader.readexactly(self.length), READ_TIMEOUT)
            self.body_read.set()
        return self._body


@dataclass
class Answer:
    """`data` is JSON; or bytes sent as they are; or an AsyncIterator of chunks,
    streamed (chunked encoding) as they come."""

    status: int
    data: Any
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Answer]]


class HTTPError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Routes:
    """(method, "/apps/{app}/logs") -> handler; `{name}` matches one path segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, list[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, pattern.strip("/").split("/"), handler))

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        allowed = False
        for want, pattern, handler in self._routes:
            if len(pattern) != len(parts):
                continue
            match: dict[str, str] = {}
            for p, got in zip(pattern, parts, strict=True):
                if p.startswith("{") and p.endswith("}"):
                    if not got:
                        break
                    match[p[1:-1]] = got
                elif p != got:
                    break
            else:
                if want == method:
                    return handler, match
                allowed = True
        if allowed:
            raise HTTPError(405, f"{method} is not allowed on {path}")
        raise HTTPError(404, f"no such call: {path}")


async def read_head(reader: asyncio.StreamReader, max_body: int) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HTTPError(431, "the request's headers are too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ")
    except ValueError:
        raise HTTPError(400, "a bad request line") from None
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPError(400, "a bad header line")
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HTTPError(411, "send the body with a Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HTTPError(400, "a bad Content-Length") from None
    if not 0 <= length <= max_body:
        raise HTTPError(413, f"the body may have at most {max_body} bytes")
    url = urlsplit(target)
    return Request(method, url.path, dict(parse_qsl(url.query)), headers, length, reader)


def _head(answer: Answer, length: str) -> bytes:
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = "Unknown"
    return (
        f"HTTP/1.1 {answer.status} {phrase}\r\n"
        f"Content-Type: {answer.content_type}\r\n"
        f"{length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def _send(writer: asyncio.StreamWriter, answer: Answer) -> None:
    """Write `answer`. A stream whose iterator fails ends without its last (empty)
    chunk, so the client sees a broken stream, never one that looks complete."""
    if not isinstance(answer.data, AsyncIterator):
        body = answer.data if isinstance(answer.data, bytes) else json.dumps(answer.data).encode()
        writer.write(_head(answer, f"Content-Length: {len(body)}") + body)
        await writer.drain()
        return
    chunks = answer.data
    try:
        writer.write(_head(answer, "Transfer-Encoding: chunked"))
        async for chunk in chunks:
            data = chunk.encode() if isinstance(chunk, str) else chunk
            if data:
                writer.write(b"%x\r\n%b\r\n" % (len(data), data))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class HttpServer:
    """Serves `routes` on a Unix socket (the daemon's user only) or a TCP port.

    A client that goes away (closes its end) cancels its handler and ends its stream.
    """

    def __init__(self, routes: Routes, max_body: int, name: str = "local API") -> None:
        self.routes = routes
        self.max_body = max_body
        self.name = name  # in the log
        self.server: asyncio.Server | None = None
        self.tasks: list[asyncio.Future[Any]] = []  # cancelled at cleanup

    async def start_unix(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)  # the socket is made 0600: no moment when others may connect
        try:
            self.server = await asyncio.start_unix_server(self._serve, str(path), limit=MAX_HEAD)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def start_tcp(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each TCP socket it listens on."""
        assert self.server is not None
        return [s.getsockname()[:2] for s in self.server.sockets]

    async def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(read_head(reader, self.max_body), READ_TIMEOUT)
                handler, request.match_info = self.routes.find(request.method, request.path)
            except HTTPError as e:
                await _send(writer, Answer(e.status, {"error": str(e)}))
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return  # the client went away or never finished: nobody to answer
            work = asyncio.ensure_future(self._answer(handler, request, writer))
            gone = asyncio.ensure_future(_closed(request))
            try:
                await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not work.done():  # the client went away: stop working for it
                    work.cancel()
                await asyncio.gather(work, gone, return_exceptions=True)
            if request.length and not request.body_read.is_set():
                await _linger(reader)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(
        self, handler: Handler, request: Request, writer: asyncio.StreamWriter
    ) -> None:
        try:
            answer = await handler(request)
        except HTTPError as e:
            answer = Answer(e.status, {"error": str(e)})
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return  # the client went away or never sent its body
        except Exception:
            log.exception("%s: a call to %s failed", self.name, request.path)
            answer = Answer(500, {"error": "the node failed on this call; see its log"})
        try:
            await _send(writer, answer)
        except ConnectionError:
            pass  # the client went away
        except Exception:
            log.exception("%s: the answer to %s broke off", self.name, request.path)


async def _closed(request: Request) -> None:
    """Return when the client closes its end (it sends nothing after its request)."""
    if request.length:
        await request.body_read.wait()  # the handler reads the body (or refuses it) first
    try:
        while await request.reader.read(1 << 12):
            pass
    except ConnectionError:
        pass


async def _linger(reader: asyncio.StreamReader) -> None:
    """Drop, for a second at most, the body of a request refused without reading it:
    closing with unread bytes would reset the connection, and the client could
    lose the answer."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER):
            while await reader.read(1 << 16):
                pass
