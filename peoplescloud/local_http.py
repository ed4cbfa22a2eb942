"""A small HTTP/1.1 server on a Unix socket, for the daemon's local API: one
request per connection, JSON answers, bodies with a Content-Length only.

Why not aiohttp: its import alone is about 11 MB of the daemon's RSS, and a
lone node needs it for nothing else (only the swarm's peer API uses it). The
local API's one client (`dashboard.local`, `http.client`) sends one request
per connection, so this server reads one, answers and closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger("pc.dashboard")

MAX_HEAD = 16 * 1024  # request line and headers
READ_TIMEOUT = 10.0  # seconds a client may take to send its request


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    match_info: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    data: Any


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


async def read_request(reader: asyncio.StreamReader, max_body: int) -> Request:
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
    body = await reader.readexactly(length)
    url = urlsplit(target)
    return Request(method, url.path, dict(parse_qsl(url.query)), headers, body)


def _answer_bytes(answer: Answer) -> bytes:
    body = json.dumps(answer.data).encode()
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = "Unknown"
    head = (
        f"HTTP/1.1 {answer.status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class LocalServer:
    """Serves `routes` on a Unix socket readable by the daemon's user only."""

    def __init__(self, routes: Routes, max_body: int) -> None:
        self.routes = routes
        self.max_body = max_body
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Future[Any]] = []  # cancelled at cleanup

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)  # the socket is made 0600: no moment when others may connect
        try:
            self.server = await asyncio.start_unix_server(self._serve, str(path), limit=MAX_HEAD)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

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
                request = await asyncio.wait_for(read_request(reader, self.max_body), READ_TIMEOUT)
                handler, request.match_info = self.routes.find(request.method, request.path)
                answer = await handler(request)
            except HTTPError as e:
                answer = Answer(e.status, {"error": str(e)})
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return  # the client went away or never finished: nobody to answer
            except Exception:
                log.exception("dashboard: a local API call failed")
                answer = Answer(500, {"error": "the node failed on this call; see its log"})
            writer.write(_answer_bytes(answer))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
