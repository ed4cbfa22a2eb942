"""The peer API's client: signs and sends this node's requests to its siblings
(see swarm/peer.py for the protocol)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from swarm.invite import Invite
from swarm.peer import (
    H_SIGNATURE,
    PeerError,
    PeerUnreachable,
    join_request_key,
    join_response_key,
    sign,
    unseal,
)


class _Broken(Exception):
    """The connection failed or closed mid-answer."""


class _Response:
    """One HTTP/1.1 answer on its own connection (the server closes it after)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}

    async def read_head(self) -> None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ")[1])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            raise _Broken from None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it comes; _Broken if it ends before it says it is complete."""
        try:
            if self.headers.get("transfer-encoding") == "chunked":
                while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    yield await self.reader.readexactly(size)
                    await self.reader.readexactly(2)
                await self.reader.readuntil(b"\r\n")  # the final chunk's end
            elif "content-length" in self.headers:
                yield await self.reader.readexactly(int(self.headers["content-length"]))
            else:
                raise _Broken  # every answer of the peer API says where it ends
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            raise _Broken from None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        self.writer.close()


async def _post(
    address: str,
    path: str,
    raw: bytes,
    headers: dict[str, str],
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> _Response:
    """Send the request and read the answer's head (OSError, _Broken, TimeoutError).

    `connect_timeout` bounds the connection; `read_timeout` the rest (None: no bound).
    """
    host, _, port = address.rpartition(":")
    connecting = asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 16)
    reader, writer = await asyncio.wait_for(connecting, connect_timeout)
    response = _Response(reader, writer)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: {address}\r\n"
        for name, value in {
            **headers,
            "Content-Type": "application/json",
            "Content-Length": str(len(raw)),
            "Connection": "close",
        }.items():
            head += f"{name}: {value}\r\n"
        writer.write(head.encode() + b"\r\n" + raw)
        async with asyncio.timeout(read_timeout):
            await writer.drain()
            await response.read_head()
    except BaseException:
        response.close()
        raise
    return response


class PeerClient:
    """Signs and sends this node's requests to its siblings (a connection each)."""

    def __init__(
        self,
        node_name: str,
        secret_provider: Callable[[], bytes],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_name = node_name
        self.secret_provider = secret_provider
        self.clock = clock

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release: every request has its own connection."""

    def _prepare(
        self, node: str, route: str, body: Any, invite: Invite | None
    ) -> tuple[bytes, dict[str, str]]:
        raw = json.dumps(body).encode()
        path = f"/peer/{route}"
        if invite is not None:
            key = join_request_key(invite.key)
            return raw, sign(key, "POST", path, raw, self.node_name, self.clock(), invite.invite_id)
        secret = self.secret_provider()
        if not secret:
            raise PeerError("this node is not in a swarm")
        return raw, sign(secret, "POST", path, raw, self.node_name, self.clock(), recipient=node)

    async def call(
        self,
        node: str,
        address: str,
        route: str,
        body: Any,
        *,
        timeout: float = 10.0,
        invite: Invite | None = None,
    ) -> Any:
        """`route`'s JSON answer from the node named `node` at `address` (host:port),
        or PeerError.

        With `invite`, the request is signed with the invite instead of the
        swarm secret, and the (encrypted) answer is decrypted with it.
        """
        label = f"{node} ({address})"
        raw, headers = self._prepare(node, route, body, invite)
        try:
            async with asyncio.timeout(timeout):
                response = await _post(address, f"/peer/{route}", raw, headers)
                try:
                    status, answer = response.status, await response.read()
                finally:
                    response.close()
        except TimeoutError:
            raise PeerError(f"{label} did not answer within {timeout:g} s") from None
        except (OSError, _Broken):
            raise PeerUnreachable(f"{label} does not answer") from None
        if status != 200:
            raise _refusal(node, status, answer)
        if invite is not None:
            aad = headers[H_SIGNATURE].encode()
            try:
                answer = unseal(join_response_key(invite.key), answer, aad)
            except ValueError:
                raise PeerError(f"{label} sent an answer this invite cannot decrypt") from None
        try:
            return json.loads(answer)
        except ValueError:
            raise PeerError(f"{label} answered something that is not JSON") from None

    async def stream(
        self,
        node: str,
        address: str,
        route: str,
        body: Any,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float | None = None,
        lines: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        """The lines `route` streams from `node`, as they come (the last may lack "\\n");
        with `lines=False`, chunks of bytes as they come (a file).

        `read_timeout` bounds the wait for each chunk (None: a followed log may be
        quiet for hours). Close it (`contextlib.aclosing`) to stop early: the
        sibling then stops too.
        """
        label = f"{node} ({address})"
        raw, headers = self._prepare(node, route, body, None)
        try:
            response = await _post(
                address, f"/peer/{route}", raw, headers, connect_timeout, read_timeout
            )
        except TimeoutError:
            raise PeerError(f"{label} did not answer in time") from None
        except (OSError, _Broken):
            raise PeerError(f"{label} does not answer") from None
        chunks = response.chunks()
        try:
            try:
                if response.status != 200:
                    raise _refusal(node, response.status, await response.read())
                rest = b""
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(chunks), read_timeout)
                    except StopAsyncIteration:
                        break
                    if not lines:
                        yield chunk
                        continue
                    *whole, rest = (rest + chunk).split(b"\n")
                    for line in whole:
                        yield line + b"\n"
                if rest:
                    yield rest
            except TimeoutError:
                raise PeerError(f"{label} stopped sending for {read_timeout:g} s") from None
            except (OSError, _Broken):
                raise PeerError(f"{label} broke off the stream") from None
        finally:
            await chunks.aclose()
            response.close()  # a stream is never reused: closing tells the sibling to stop


def _refusal(node: str, status: int, answer: bytes) -> PeerError:
    """The PeerError for a non-200 answer."""
    try:
        data = json.loads(answer)
        reason, exit_code = str(data["error"]), int(data.get("exit_code", 1))
    except (ValueError, TypeError, KeyError):
        return PeerError(f"{node} answered HTTP {status}: is this a People's Cloud peer address?")
    if status in (401, 403):
        return PeerError(f"{node} refused: {reason}", exit_code)
    return PeerError(f"{node}: {reason}", exit_code)
