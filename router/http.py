"""HTTP/1.1 framing for the proxy: which headers pass, and the heads it writes.

Headers stay bytes, in the client's (or the app's) order and spelling: the
router forwards what it got, minus what belongs to one connection, plus the
X-Forwarded-* fields and X-Request-Id. It never invents Accept-Encoding,
User-Agent or the like.
"""

from __future__ import annotations

import os
import re
from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 7.6.1): for one connection, never forwarded.
# Framing (Transfer-Encoding) is written again by whoever sends the message on.
HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the router from what it saw; a client's own values are dropped (X-Forwarded-For
# is extended instead). Between routers of one swarm they pass unchanged.
FORWARDED = frozenset(
    {b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"x-request-id"}
)
# What one router tells another, and what nginx in front tells the router.
SWARM = frozenset({b"x-pc-app", b"x-pc-hop", b"x-pc-front"})
XFF = b"x-forwarded-for"
RESPONSE_SPECIAL = HOP | {b"content-length", b"via"}
SWARM_HOP = HOP | SWARM  # dropped from a sibling router's request
CLIENT_DROP = SWARM_HOP | FORWARDED | {XFF}  # dropped from a client's request
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})

# A request id a client may choose (Heroku's rule): 20 to 200 of these characters.
REQUEST_ID = re.compile(rb"[A-Za-z0-9+/=_.:-]{20,200}")
_ID_PREFIX = os.urandom(6).hex()
_ids = iter(range(1 << 62))


def new_request_id() -> str:
    """Unique per router process: a random prefix and a counter (no syscall per request)."""
    return f"{_ID_PREFIX}-{next(_ids):012x}"


def tokens(value: bytes) -> set[bytes]:
    """b"Keep-Alive, Upgrade" -> {b"keep-alive", b"upgrade"}."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def has_body(method: bytes, status: int) -> bool:
    """Whether a response to `method` with `status` carries a body (RFC 9112 6.3)."""
    return not (method == b"HEAD" or status < 200 or status in (204, 304))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def response_head(
    status: int, status_reason: bytes, headers: Headers, via: bytes, keep_via: bool
) -> tuple[list[bytes], bool, bool]:
    """The head for the client, as pieces to join, without its framing lines and
    blank line: the app's headers minus hop-by-hop ones, then `Via` (the app's own
    only when `keep_via`: a sibling's router). Also whether the app sent a
    Content-Length, and whether it sent Transfer-Encoding."""
    out = [b"HTTP/1.1 %d %b\r\n" % (status, status_reason or reason(status))]
    sized = chunked = False
    named: set[bytes] = set()
    for name, value in headers:
        low = name.lower()
        if low in RESPONSE_SPECIAL:
            if low == b"content-length":
                sized = True
            elif low == b"transfer-encoding":
                chunked = True
                continue
            elif low == b"connection":
                named |= _beyond_plain(value)
                continue
            elif low == b"via":
                if keep_via:
                    via = via + b", " + value
                continue
            else:
                continue
        out.extend((name, b": ", value, b"\r\n"))
    if named:  # rare: the app named more headers as hop-by-hop
        kept = [(n, v) for n, v in headers if n.lower() not in named | {b"connection"}]
        return response_head(status, status_reason, kept, via, keep_via)[0], sized, chunked
    out.extend((b"Via: ", via, b"\r\n"))
    return out, sized, chunked


def request_head(
    method: bytes,
    url: bytes,
    headers: Headers,
    added: bytes,
    upgrade: bytes | None,
    from_router: bool,
    client_ip: bytes | None,
) -> bytes:
    """The head sent upstream: the client's headers minus hop-by-hop ones and
    those the router sets (from a client), then `added` (X-Forwarded-*, id, hop)."""
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    drop = SWARM_HOP if from_router else CLIENT_DROP
    earlier: list[bytes] = []
    named: set[bytes] = set()
    for name, value in headers:
        low = name.lower()
        if low in drop:
            if low == XFF:
                earlier.append(value)
            elif low == b"connection":
                named |= _beyond_plain(value)
            continue
        out.extend((name, b": ", value, b"\r\n"))
    if named:  # rare: the client named more headers as hop-by-hop
        kept = [(n, v) for n, v in headers if n.lower() not in named | {b"connection"}]
        return request_head(method, url, kept, added, upgrade, from_router, client_ip)
    if not from_router:  # None: nginx in front has already appended the client
        if client_ip is not None:
            earlier.append(client_ip)
        out.extend((b"X-Forwarded-For: ", b", ".join(earlier), b"\r\n"))
    if upgrade is not None:
        out.extend((b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n"))
    out.extend((added, b"\r\n"))
    return b"".join(out)


def _beyond_plain(value: bytes) -> set[bytes]:
    """What a Connection field names besides the usual keep-alive/close/upgrade."""
    low = value.lower()
    if low in PLAIN_CONNECTION:
        return set()
    return tokens(low) - PLAIN_CONNECTION
