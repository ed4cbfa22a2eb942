"""The peer API's client: signs and sends this node's requests to its siblings
(see swarm/peer.py for the protocol)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp

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


class PeerClient:
    """Signs and sends this node's requests to its siblings (one connection pool)."""

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
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

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
            async with self._http().post(
                f"http://{address}/peer/{route}",
                data=raw,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                status, answer = response.status, await response.read()
        except TimeoutError:
            raise PeerError(f"{label} did not answer within {timeout:g} s") from None
        except aiohttp.ClientError:
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
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        try:
            response = await self._http().post(
                f"http://{address}/peer/{route}", data=raw, headers=headers, timeout=timeout
            )
        except TimeoutError:
            raise PeerError(f"{label} did not answer in time") from None
        except aiohttp.ClientError:
            raise PeerError(f"{label} does not answer") from None
        try:
            try:
                if response.status != 200:
                    raise _refusal(node, response.status, await response.read())
                chunks = response.content if lines else response.content.iter_chunked(1 << 16)
                async for chunk in chunks:
                    yield chunk
            except TimeoutError:
                raise PeerError(f"{label} stopped sending for {read_timeout:g} s") from None
            except aiohttp.ClientError:
                raise PeerError(f"{label} broke off the stream") from None
        finally:
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
