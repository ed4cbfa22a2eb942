"""Authenticated node-to-node requests over HTTP ("logs of app X", "run", "status", "join").

Every request is `POST /peer/<route>` with a JSON body, signed with HMAC-SHA256
over (method, path, SHA-256 of the body, timestamp, nonce, sender, invite id,
recipient). The key is the swarm secret; a member route also needs the sender
to be a member. The server refuses, before any handler runs, a request that is
unsigned or wrongly signed, addressed to another node, from a non-member, more
than `MAX_SKEW` seconds off its clock, or whose nonce it has already seen: a
machine that is not a member gets a short JSON error and nothing else. Naming
the recipient keeps a captured request from being replayed to another member.

Invite routes (`join`) are the one exception: the joiner has no swarm secret
yet. It signs with a key derived from its invite (`Invite.key`, the SHA-256 of
the token's secret), which the server looks up by invite id from the swarm's
`InviteRecord`. The answer (swarm secret, kubo swarm key, members) crosses plain
HTTP, so it is encrypted (AES-GCM) with another key derived from the invite:
only the holder of the token can read it, and the token's secret itself never
crosses the wire. Remaining risk: whoever reads the token before it is used
(chat logs, shoulder surfing) can join in its place; hence one use and a short
expiry. Between members, bodies are authenticated but not encrypted: app logs
and `run` output cross the network in clear, as with the rest of the peer API.

A handler returns JSON-able data, or an async iterator of `bytes`/`str` chunks
which is streamed as it comes (`logs -f`, `run` output). Checks that can fail
(unknown app, ...) belong before the iterator is returned, so they become an
error answer rather than a broken stream. When the client goes away the
iterator is closed, provided the server runs with `handler_cancellation=True`
(as `start_peer_server` does).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarm.errors import PCError
from swarm.invite import Invite
from swarm.settings import NODE_NAME_RE

log = logging.getLogger(__name__)

MAX_SKEW = 30  # seconds a request's timestamp may differ from the server's clock
NONCE_TTL = 2 * MAX_SKEW  # a nonce older than this can no longer pass the skew check
MAX_NONCES = 100_000  # nonces remembered at once; beyond that, requests wait
MAX_BODY = 1024 * 1024

H_SENDER = "X-PC-Sender"
H_TIMESTAMP = "X-PC-Timestamp"
H_NONCE = "X-PC-Nonce"
H_INVITE = "X-PC-Invite"
H_SIGNATURE = "X-PC-Signature"
BAD_SIGNATURE = "bad signature (or a request meant for another node)"
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_INVITE_RE = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")

MemberHandler = Callable[[str, Any], Awaitable[Any]]  # (sender, body) -> answer
InviteHandler = Callable[[str, str, Any], Awaitable[Any]]  # (sender, invite id, body) -> answer


class PeerError(PCError):
    """A sibling could not be reached, refused the request, or failed it."""

    def __init__(self, reason: str, exit_code: int = 1) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


class PeerUnreachable(PeerError):
    """Nothing answered at the sibling's address."""


# -- signatures and sealing ------------------------------------------------------------


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)


def join_request_key(invite_key: bytes) -> bytes:
    """The HMAC key of a request authenticated by an invite."""
    return _derive(invite_key, b"peoplescloud join request")


def join_response_key(invite_key: bytes) -> bytes:
    """The AES-GCM key of the answer to a request authenticated by an invite."""
    return _derive(invite_key, b"peoplescloud join response")


def _canonical(
    method: str,
    path: str,
    body: bytes,
    ts: str,
    nonce: str,
    sender: str,
    invite_id: str,
    recipient: str,
) -> bytes:
    parts = ["pc-peer-2", method, path, hashlib.sha256(body).hexdigest(), ts, nonce, sender]
    return "\n".join([*parts, invite_id, recipient]).encode()


def sign(
    key: bytes,
    method: str,
    path: str,
    body: bytes,
    sender: str,
    now: float,
    invite_id: str = "",
    recipient: str = "",
) -> dict[str, str]:
    """The headers that authenticate one request (a fresh nonce each time).

    `recipient` is the name of the node it is for; a request authenticated by
    an invite names none (the joiner does not know it; the invite is one-time).
    """
    ts, nonce = str(int(now)), secrets.token_hex(16)
    canonical = _canonical(method, path, body, ts, nonce, sender, invite_id, recipient)
    mac = hmac.new(key, canonical, "sha256")
    headers = {H_SENDER: sender, H_TIMESTAMP: ts, H_NONCE: nonce, H_SIGNATURE: mac.hexdigest()}
    if invite_id:
        headers[H_INVITE] = invite_id
    return headers


def seal(key: bytes, data: bytes, aad: bytes) -> bytes:
    """`data` encrypted and authenticated with AES-GCM (random nonce prepended)."""
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, data, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The data `seal` sealed, or ValueError when the key or the data is wrong."""
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, ValueError):
        raise ValueError("cannot decrypt: wrong key or damaged data") from None


class NonceCache:
    """Nonces seen in the last `ttl` seconds, at most `limit` of them."""

    def __init__(
        self,
        ttl: float = NONCE_TTL,
        limit: int = MAX_NONCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.limit, self.clock = ttl, limit, clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after

    def add(self, nonce: str) -> bool:
        """Remember `nonce`: False when it was seen already (a replay).

        Raises OverflowError when full of fresh nonces: forgetting one early
        would let its request be replayed, so the request is refused instead.
        """
        now = self.clock()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        if len(self._seen) >= self.limit:
            raise OverflowError("too many requests")
        self._seen[nonce] = now + self.ttl
        return True


# -- server ----------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _error(status: int, reason: str, exit_code: int = 1) -> web.Response:
    return web.json_response({"error": reason, "exit_code": exit_code}, status=status)


class PeerServer:
    """Answers `POST /peer/<route>` for members (and, on invite routes, for joiners).

    `name` is this node's: member requests must be addressed to it.
    `secret_provider()` gives the swarm secret (empty: this node is in no swarm);
    `invite_key(invite_id)` gives an invite's `InviteRecord.key` or raises a
    PCError saying why that invite cannot be used (unknown, expired, used).
    """

    def __init__(
        self,
        secret_provider: Callable[[], bytes],
        is_member: Callable[[str], bool],
        handlers: dict[str, MemberHandler],
        *,
        name: str,
        invite_handlers: dict[str, InviteHandler] | None = None,
        invite_key: Callable[[str], bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        invite_handlers = invite_handlers or {}
        if set(handlers) & set(invite_handlers):
            raise ValueError(
                f"routes both member and invite: {set(handlers) & set(invite_handlers)}"
            )
        if invite_handlers and invite_key is None:
            raise ValueError("invite routes need an invite_key lookup")
        self.name = name
        self.secret_provider = secret_provider
        self.is_member = is_member
        self.handlers = dict(handlers)
        self.invite_handlers = dict(invite_handlers)
        self.invite_key = invite_key
        self.clock = clock
        self.nonces = NonceCache()

    def app(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY)
        application.router.add_post("/peer/{route}", self.handle)
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        body = await request.read()
        try:
            sender, invite_id, invite_key = self._authenticate(request, route, body)
        except _Refused as refused:
            return _error(refused.status, refused.reason)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return _error(400, "the request body is not JSON")
        try:
            if route in self.invite_handlers:
                answer = await self.invite_handlers[route](sender, invite_id, data)
            elif route in self.handlers:
                answer = await self.handlers[route](sender, data)
            else:
                return _error(404, f"no peer request named {route!r}")
        except PCError as e:
            return _error(400, str(e), e.exit_code)
        except Exception:
            log.exception("peer request %s from %s failed", route, sender)
            return _error(500, f"{route} failed on this node (see its log)")
        if isinstance(answer, AsyncIterator):
            if route in self.invite_handlers:
                raise TypeError(f"invite route {route} cannot stream: its answer is encrypted")
            return await self._stream(request, answer)
        raw = json.dumps(answer).encode()
        if route in self.invite_handlers:
            key = join_response_key(invite_key)
            raw = seal(key, raw, request.headers[H_SIGNATURE].encode())
            return web.Response(body=raw, content_type="application/octet-stream")
        return web.Response(body=raw, content_type="application/json")

    def _authenticate(
        self, request: web.Request, route: str, body: bytes
    ) -> tuple[str, str, bytes]:
        """(sender, invite id, invite key) of a request that passes every check, or _Refused.

        The invite key is kept for sealing the answer: once the handler redeemed
        the invite, looking it up again would say "already used".
        """
        h = request.headers
        sender, ts, nonce, signature = (
            h.get(name, "") for name in (H_SENDER, H_TIMESTAMP, H_NONCE, H_SIGNATURE)
        )
        invite_id = h.get(H_INVITE, "")
        if not (sender and ts and nonce and signature):
            raise _Refused(401, "unsigned request")
        well_formed = (
            NODE_NAME_RE.match(sender)
            and ts.isdigit()
            and _NONCE_RE.match(nonce)
            and (not invite_id or _INVITE_RE.match(invite_id))
        )
        if not well_formed:
            raise _Refused(401, "malformed signature headers")
        skew = abs(self.clock() - int(ts))
        if skew > MAX_SKEW:
            raise _Refused(
                401, f"request time is {skew:.0f} s off this node's clock: check both clocks"
            )
        invited = route in self.invite_handlers
        invite_key = b""
        if invited:
            if not invite_id:
                raise _Refused(401, "this request needs an invite")
            assert self.invite_key is not None
            try:
                invite_key = self.invite_key(invite_id)
            except PCError as e:
                raise _Refused(403, str(e)) from None
            key = join_request_key(invite_key)
        else:
            key = self.secret_provider()
            if not key:
                raise _Refused(403, "this node is not in a swarm")
        recipient = "" if invited else self.name
        canonical = _canonical(
            request.method, request.path, body, ts, nonce, sender, invite_id, recipient
        )
        expected = hmac.new(key, canonical, "sha256").hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise _Refused(401, "invalid invite secret" if invited else BAD_SIGNATURE)
        if not invited and not self.is_member(sender):
            raise _Refused(403, f"{sender} is not a member of this swarm")
        try:
            fresh = self.nonces.add(nonce)
        except OverflowError:
            raise _Refused(503, "too many requests: try again in a minute") from None
        if not fresh:
            raise _Refused(401, "replayed request")
        return sender, invite_id, invite_key

    async def _stream(
        self, request: web.Request, chunks: AsyncIterator[bytes | str]
    ) -> web.StreamResponse:
        """Send chunks as they come. An iterator that fails aborts the connection
        (the exception propagates to aiohttp, which logs it) so the client sees a
        broken stream, never one that looks complete."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk.encode() if isinstance(chunk, str) else chunk)
        except ConnectionResetError:
            return response  # the client went away
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await response.write_eof()
        return response


def make_peer_app(
    secret_provider: Callable[[], bytes],
    is_member: Callable[[str], bool],
    handlers: dict[str, MemberHandler],
    **options: Any,
) -> web.Application:
    """The peer API as an aiohttp application (options: see `PeerServer`)."""
    return PeerServer(secret_provider, is_member, handlers, **options).app()


async def start_peer_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` until `runner.cleanup()`; a client that goes away ends its stream."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


# -- client ----------------------------------------------------------------------------


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
