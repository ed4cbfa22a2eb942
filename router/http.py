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
SWARM = frozenset({b"x-pc-app", b"x-pc-hop"})  # what one router tells another
XFF = b"x-forwarded-for"

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


def connection_named(headers: Headers) -> set[bytes]:
    """The headers a Connection field names: hop-by-hop too, whatever they are."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= tokens(value)
    return named


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
    status: int,
    status_reason: bytes,
    headers: Headers,
    via: bytes,
    framing: bytes,
    drop_via: bool,
) -> bytes:
    """The head sent to the client: the app's headers minus hop-by-hop ones,
    `Via`, and `framing` (the Transfer-Encoding / Connection lines the router chose)."""
    named = connection_named(headers) if _any_connection(headers) else ()
    out = [b"HTTP/1.1 %d %b\r\n" % (status, status_reason or reason(status))]
    for name, value in headers:
        low = name.lower()
        if low in HOP or low in named or (drop_via and low == b"via"):
            continue
        if low == b"via":  # a sibling's router: ours comes first
            via = via + b", " + value
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    out.append(b"Via: %b\r\n%b\r\n" % (via, framing))
    return b"".join(out)


def _any_connection(headers: Headers) -> bool:
    return any(len(name) == 10 and name.lower() == b"connection" for name, _ in headers)


def request_head(
    method: bytes,
    url: bytes,
    headers: Headers,
    added: bytes,
    upgrade: bytes | None,
    from_router: bool,
    client_ip: bytes,
) -> bytes:
    """The head sent upstream: the client's headers minus hop-by-hop ones and
    those the router sets (from a client), then `added` (X-Forwarded-*, id, hop)."""
    named = connection_named(headers) if _any_connection(headers) else ()
    out = [b"%b %b HTTP/1.1\r\n" % (method, url)]
    earlier: list[bytes] = []
    for name, value in headers:
        low = name.lower()
        if low in HOP or low in named or low in SWARM:
            continue
        if not from_router and (low in FORWARDED or low == XFF):
            if low == XFF:
                earlier.append(value)
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    if not from_router:
        earlier.append(client_ip)
        out.append(b"X-Forwarded-For: %b\r\n" % b", ".join(earlier))
    if upgrade is not None:
        out.append(b"Connection: Upgrade\r\nUpgrade: %b\r\n" % upgrade)
    out.append(added)
    out.append(b"\r\n")
    return b"".join(out)
