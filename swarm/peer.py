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
iterator is closed (peoplescloud.local_http cancels the handler).

This module is the protocol both ends share (signatures, sealing, the replay
guard, errors); swarm/peer_server.py answers requests, swarm/peer_client.py
sends them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from peoplescloud.errors import PCError

MAX_SKEW = 30  # seconds a request's timestamp may differ from the server's clock
NONCE_TTL = 2 * MAX_SKEW  # a nonce older than this can no longer pass the skew check
MAX_NONCES = 100_000  # nonces remembered at once; beyond that, requests wait
MAX_BODY = 1024 * 1024

H_SENDER = "X-PC-Sender"
H_TIMESTAMP = "X-PC-Timestamp"
H_NONCE = "X-PC-Nonce"
H_INVITE = "X-PC-Invite"
H_SIGNATURE = "X-PC-Signature"
# The body's SHA-256, which the signature covers: the server checks the signature
# before it reads a byte of the body, then that the body has this hash.
H_BODY = "X-PC-Body-SHA256"
BODY_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
BAD_SIGNATURE = "bad signature (or a request meant for another node)"
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
INVITE_RE = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")


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


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical(
    method: str,
    path: str,
    body_sha256: str,
    ts: str,
    nonce: str,
    sender: str,
    invite_id: str,
    recipient: str,
) -> bytes:
    parts = ["pc-peer-2", method, path, body_sha256, ts, nonce, sender]
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
    ts, nonce, digest = str(int(now)), secrets.token_hex(16), body_hash(body)
    text = canonical(method, path, digest, ts, nonce, sender, invite_id, recipient)
    mac = hmac.new(key, text, "sha256")
    headers = {H_SENDER: sender, H_TIMESTAMP: ts, H_NONCE: nonce, H_SIGNATURE: mac.hexdigest()}
    headers[H_BODY] = digest
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
