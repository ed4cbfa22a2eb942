"""Invite tokens: how a new node proves it was invited to a swarm.

`pc swarm invite` prints a token, `pc swarm join TOKEN` consumes it. The token is
one copy-pasteable line, `pcjoin1.` + unpadded urlsafe base64 of compact JSON,
carrying the swarm id, the peer API address of a live member, the invite's id,
a one-time secret and the expiry.

The swarm stores (replicated) an `InviteRecord` per invite: the SHA-256 of the
secret and the expiry, never the secret itself. The joiner never sends the
secret either: it signs its join request with `Invite.key` (that same SHA-256),
and the member it talks to checks the signature against `InviteRecord.key`
(see `swarm.peer`). So the secret is not on the wire, and a passive listener
cannot replay it or read the answer, which is encrypted with a key derived from it.

Judging an invite is pure: `usable` says whether it may be used now and
`redeem` returns the record marked used. The caller writes that record through
the consensus (refusing the write when the stored record is already used), so a
token cannot be used twice, not even through two nodes at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from peoplescloud.errors import PCError

PREFIX = "pcjoin1."
_ANY_VERSION = re.compile(r"^pcjoin\d+\.")
_HOST_PORT = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class InviteError(PCError):
    """An invite token that cannot be used: garbage, unknown, expired or used."""

    exit_code = 4


def check_address(address: str) -> str:
    """`host:port` (or `[v6]:port`) of a peer API, or InviteError."""
    m = _HOST_PORT.match(address)
    if not m or not 0 < int(m.group(1)) < 65536:
        raise InviteError(f"invalid peer address {address!r}: use host:port")
    return address


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Invite:
    """What a token carries: everything a new node needs to ask to join."""

    swarm_id: str
    address: str  # host:port of a member's peer API
    invite_id: str
    secret: str
    expires: int  # unix seconds

    @property
    def key(self) -> bytes:
        """The key the join request is signed with: SHA-256 of the secret."""
        return _digest(self.secret)


@dataclass(frozen=True)
class InviteRecord:
    """What the swarm keeps about an invite (replicated, so never the secret)."""

    invite_id: str
    secret_sha256: str  # hex
    expires: int  # unix seconds
    used_at: int | None = None
    used_by: str | None = None

    @property
    def key(self) -> bytes:
        """The key a join request for this invite must be signed with."""
        return bytes.fromhex(self.secret_sha256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InviteRecord:
        return cls(**data)


def make_invite(
    swarm_id: str, address: str, ttl_seconds: int, now: float
) -> tuple[str, InviteRecord]:
    """A new token (to print once) and the record the swarm stores for it."""
    if ttl_seconds <= 0:
        raise InviteError(f"an invite must live a positive number of seconds, not {ttl_seconds}")
    check_address(address)
    invite = Invite(
        swarm_id=swarm_id,
        address=address,
        invite_id=secrets.token_hex(8),
        secret=secrets.token_urlsafe(32),
        expires=int(now) + int(ttl_seconds),
    )
    payload = {
        "s": invite.swarm_id,
        "a": invite.address,
        "i": invite.invite_id,
        "k": invite.secret,
        "e": invite.expires,
    }
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    token = PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    record = InviteRecord(invite.invite_id, invite.key.hex(), invite.expires)
    return token, record


def parse_invite(token: str) -> Invite:
    """The invite in a token as pasted (surrounding whitespace is fine), or InviteError."""
    token = token.strip()
    if not token.startswith(PREFIX):
        if _ANY_VERSION.match(token):
            version = token.split(".", 1)[0]
            raise InviteError(
                f"this invite token is for another version of People's Cloud ({version}.): "
                "upgrade this node or ask for a new token"
            )
        raise InviteError(
            f"this is not a People's Cloud invite token (it should start with {PREFIX})"
        )
    body = token[len(PREFIX) :]
    damaged = InviteError("this invite token is damaged: was it copied completely?")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise damaged from None
    if not isinstance(data, dict):
        raise damaged
    fields = {"s": str, "a": str, "i": str, "k": str, "e": int}
    if set(data) != set(fields) or not all(isinstance(data[k], t) for k, t in fields.items()):
        raise damaged
    if not all(data[k] for k in ("s", "a", "i", "k")):
        raise damaged
    check_address(data["a"])
    return Invite(data["s"], data["a"], data["i"], data["k"], data["e"])


def usable(records: dict[str, InviteRecord], invite_id: str, now: float) -> InviteRecord:
    """The record of an invite that may be used now, or InviteError saying why not."""
    record = records.get(invite_id)
    if record is None:
        raise InviteError("unknown invite: ask for a new one with `pc swarm invite`")
    if record.used_at is not None:
        by = f" by {record.used_by}" if record.used_by else ""
        raise InviteError(f"this invite was already used{by} at {_when(record.used_at)}")
    if now >= record.expires:
        raise InviteError(
            f"this invite expired at {_when(record.expires)}: "
            "ask for a new one with `pc swarm invite`"
        )
    return record


def redeem(records: dict[str, InviteRecord], invite_id: str, now: float, by: str) -> InviteRecord:
    """The record marked used by node `by`; the caller commits it through consensus.

    The secret is not an argument: the joiner proved it by signing the join
    request with `Invite.key` (checked by `swarm.peer` against `InviteRecord.key`).
    """
    return replace(usable(records, invite_id, now), used_at=int(now), used_by=by)
