"""The peer API's server: answers `POST /peer/<route>` for members (and, on invite
routes, for joiners), refusing before any handler runs every request that fails
a check (see swarm/peer.py for the protocol)."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from peoplescloud.errors import PCError
from peoplescloud.local_http import Answer, HttpServer, Request, Routes
from peoplescloud.settings import NODE_NAME_RE
from swarm.peer import (
    BAD_SIGNATURE,
    BODY_HASH_RE,
    H_BODY,
    H_INVITE,
    H_NONCE,
    H_SENDER,
    H_SIGNATURE,
    H_TIMESTAMP,
    INVITE_RE,
    MAX_BODY,
    MAX_SKEW,
    NONCE_RE,
    NonceCache,
    body_hash,
    canonical,
    join_request_key,
    join_response_key,
    seal,
)

log = logging.getLogger(__name__)

MemberHandler = Callable[[str, Any], Awaitable[Any]]  # (sender, body) -> answer
InviteHandler = Callable[[str, str, Any], Awaitable[Any]]  # (sender, invite id, body) -> answer


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _error(status: int, reason: str, exit_code: int = 1) -> Answer:
    return Answer(status, {"error": reason, "exit_code": exit_code})


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

    def app(self) -> HttpServer:
        routes = Routes()
        routes.add("POST", "/peer/{route}", self.handle)
        return HttpServer(routes, MAX_BODY, name="peer API")

    async def handle(self, request: Request) -> Answer:
        route = request.match_info["route"]
        # Everything is checked before the body is read (it is signed by its hash),
        # so a stranger gets no byte buffered; the body is bounded (MAX_BODY) too.
        try:
            sender, invite_id, invite_key = self._authenticate(request, route)
        except _Refused as refused:
            return _error(refused.status, refused.reason)
        body = await request.read()
        if body_hash(body) != request.headers[H_BODY.lower()]:
            return _error(401, BAD_SIGNATURE)
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
            # Sent as it comes; an iterator that fails aborts the connection (see
            # local_http._send) so the client sees a broken stream.
            return Answer(200, answer, "application/octet-stream")
        if route in self.invite_handlers:
            key = join_response_key(invite_key)
            aad = request.headers[H_SIGNATURE.lower()].encode()
            raw = seal(key, json.dumps(answer).encode(), aad)
            return Answer(200, raw, "application/octet-stream")
        return Answer(200, answer)

    def _authenticate(self, request: Request, route: str) -> tuple[str, str, bytes]:
        """(sender, invite id, invite key) of a request that passes every check, or _Refused.

        The invite key is kept for sealing the answer: once the handler redeemed
        the invite, looking it up again would say "already used".
        """
        h = request.headers
        sender, ts, nonce, signature, digest = (
            h.get(name.lower(), "")
            for name in (H_SENDER, H_TIMESTAMP, H_NONCE, H_SIGNATURE, H_BODY)
        )
        invite_id = h.get(H_INVITE.lower(), "")
        if not (sender and ts and nonce and signature and digest):
            raise _Refused(401, "unsigned request")
        well_formed = (
            NODE_NAME_RE.fullmatch(sender)
            and BODY_HASH_RE.fullmatch(digest)
            and ts.isascii()
            and ts.isdigit()
            and NONCE_RE.fullmatch(nonce)
            and (not invite_id or INVITE_RE.fullmatch(invite_id))
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
        text = canonical(
            request.method, request.path, digest, ts, nonce, sender, invite_id, recipient
        )
        expected = hmac.new(key, text, "sha256").hexdigest()
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


def make_peer_app(
    secret_provider: Callable[[], bytes],
    is_member: Callable[[str], bool],
    handlers: dict[str, MemberHandler],
    **options: Any,
) -> HttpServer:
    """The peer API's server, not yet listening (options: see `PeerServer`)."""
    return PeerServer(secret_provider, is_member, handlers, **options).app()


async def start_peer_server(app: HttpServer, host: str, port: int) -> HttpServer:
    """Serve `app` until `app.cleanup()`; a client that goes away ends its stream."""
    await app.start_tcp(host, port)
    return app
