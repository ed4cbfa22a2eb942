"""The router: `Host: APP.DOMAIN` (or a custom domain) -> a web instance of the app.

The router knows nothing of apps or runtimes: it asks `lookup(app, local_only)`
for the upstreams of an app and spreads requests over them. An upstream is a
web instance on this node ("127.0.0.1:49153"), or the router of a sibling node
that runs one: a web process on another machine is reached through that
machine's router, since instances publish their ports on loopback only.

A request passed on to a sibling's router names the app in `X-PC-App` and
proves where it comes from in `X-PC-Hop` (an HMAC with the swarm's secret).
That router serves it from its own instances only, so requests never go round
in circles, and keeps the `X-Forwarded-*` headers and `X-Request-Id` the first
router set. From anyone else those two headers are ignored and the request is
routed by its Host. Every response says in `Via` which routers it passed.

The HTTP work is in `clients.py` (the client's side), `upstreams.py` (the
app's side, pooled) and `http.py` (which headers pass); this file decides
where a request goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router import pages
from router.clients import ClientConnection
from router.http import REQUEST_ID, new_request_id, request_head
from router.limits import RouterLimits
from router.relay import Exchange, Relay
from router.upstreams import Pool

H_APP = "X-PC-App"  # on a request one router passes to another: the app it is for
H_HOP = "X-PC-Hop"  # "timestamp:hmac": a sibling's router sent it
HOP_SKEW = 30  # seconds a hop's timestamp may be off
CHALLENGE = b"/.well-known/acme-challenge/"
FORWARDED = b"X-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\nX-Forwarded-Port: %d\r\n"


@dataclass(frozen=True)
class Upstream:
    address: str  # "host:port"
    router: bool = False  # a sibling's router, not an instance


Lookup = Callable[[str, bool], list[Upstream] | None]  # (app, local_only) -> upstreams
# (None: no such app)


def app_for_host(host: str, domain: str) -> str | None:
    """ "mybot.example.org:8080" with domain "example.org" -> "mybot"."""
    name = host_name(host)
    if not name.isascii():  # no app's name; may even hold undecodable bytes (surrogates)
        return None
    suffix = "." + domain.lower()
    if not name.endswith(suffix):
        return None
    app = name[: -len(suffix)]
    return app if app and "." not in app else None


def host_name(host: str) -> str:
    """ "Shop.Example.org.:8080" -> "shop.example.org"."""
    return host.split(":", 1)[0].lower().rstrip(".")


def hop_token(key: bytes, app: str, now: float) -> str:
    ts = str(int(now))
    return f"{ts}:{hmac.new(key, f'pc-hop-1 {app} {ts}'.encode(), hashlib.sha256).hexdigest()}"


def passed_on(headers: Mapping[str, str], key: bytes, now: float) -> str | None:
    """The app a sibling's router passed this request on for, if its hop is genuine."""
    app, hop = headers.get(H_APP, ""), headers.get(H_HOP, "")
    ts = hop.split(":", 1)[0]
    if not (key and app and app.isascii() and hop.isascii() and re.fullmatch(r"[0-9]{1,12}", ts)):
        return None
    if abs(now - int(ts)) > HOP_SKEW:
        return None
    return app if hmac.compare_digest(hop, hop_token(key, app, int(ts))) else None


def _text(value: bytes) -> str:
    """A header value for a log line: printable ASCII, no quotes, bounded."""
    text = value[:200].decode("ascii", "replace")
    return "".join(c if " " < c < "\x7f" and c != '"' else "?" for c in text)


class Router:
    """The router of node `name` for apps at APP.`domain`; `hop_key()` is the
    swarm's secret (empty on a lone node: nothing is passed on)."""

    def __init__(
        self,
        lookup: Lookup,
        domain: str,
        name: str,
        hop_key: Callable[[], bytes],
        resolve_host: Callable[[str], str | None],
        challenge: Callable[[str], str | None],
        limits: RouterLimits,
        on_request: Callable[[str, str], None] | None,
        front: int | None = None,
    ) -> None:
        self.lookup = lookup
        self.front = front  # the port nginx serves in front of this router (router/front.py)
        self.domain = domain
        self.via = f"1.1 {name}".encode()
        self.hop_key = hop_key
        self.resolve_host = resolve_host
        self.challenge = challenge
        self.limits = limits
        self.on_request = on_request
        self.pool = Pool(limits)
        self.clients: set[ClientConnection] = set()
        self.servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self.turn = 0  # round robin over an app's upstreams
        self.hosts: dict[bytes, str | None] = {}  # Host -> APP.domain's app (a cache)
        self.sweeper: asyncio.Task[None] | None = None

    def route(self, ex: Exchange, conn: ClientConnection) -> None:
        """Answer `ex` here, or send it on (`conn.forward`)."""
        index = ex.index
        sibling_app = None
        if b"x-pc-hop" in index:
            headers = {H_APP: index.get(b"x-pc-app", b""), H_HOP: index[b"x-pc-hop"]}
            text = {k: v.decode("latin-1") for k, v in headers.items()}
            sibling_app = passed_on(text, self.hop_key(), time.time())
        client_ip: bytes | None = conn.client_ip
        if self.front is not None and conn.scheme == b"http":  # nginx's Unix socket
            client_ip = self.from_front(index, conn)
        given = index.get(b"x-request-id")
        sane = given is not None and REQUEST_ID.fullmatch(given) is not None
        ex.request_id = given.decode() if given and sane else new_request_id()
        host = index.get(b"host", b"")
        if conn.scheme == b"http" and ex.url.startswith(CHALLENGE) and ex.method == b"GET":
            answer = self.challenge(ex.url[len(CHALLENGE) :].decode("latin-1"))
            if answer is None:
                conn.answer(ex, 404, "no such ACME challenge here")
            else:
                conn.write_answer(ex, plain(answer, ex, self.via))
            return
        app = sibling_app or self.app_of(host)
        if app is None:
            hint = pages.no_app_here(self.domain, host.decode("latin-1"))
            conn.answer(ex, 404, hint)
            return
        ex.relayed = sibling_app is not None
        upstreams = self.lookup(app, ex.relayed)
        if upstreams is None:  # no such app: nor a log to write to
            conn.answer(ex, 404, pages.text_for(404, app))
            return
        ex.app = app
        if not upstreams:
            conn.answer(ex, 503, pages.text_for(503, app))
            return
        self.turn += 1
        target = upstreams[self.turn % len(upstreams)]
        ex.address, ex.router_hop = target.address, target.router
        added = b"Transfer-Encoding: chunked\r\n" if ex.chunked else b""
        if sibling_app is None:  # from a client: say who asked (a sibling's router did)
            if conn.forwarded[0] != host:  # once per connection, mostly
                conn.forwarded = host, FORWARDED % (conn.scheme, host, conn.port)
            added += conn.forwarded[1]
        if sibling_app is None or given != ex.request_id.encode():
            added += b"X-Request-Id: " + ex.request_id.encode() + b"\r\n"
        if target.router:
            hop = hop_token(self.hop_key(), app, time.time())
            added += f"{H_APP}: {app}\r\n{H_HOP}: {hop}\r\n".encode()
        relayed = sibling_app is not None
        ex.head = request_head(ex.method, ex.url, ex.headers, added, ex.upgrade, relayed, client_ip)
        conn.forward(ex)

    def from_front(self, index: Mapping[bytes, bytes], conn: ClientConnection) -> bytes | None:
        """nginx passed this request on: who the client is (per request: nginx
        sends different clients' requests on one connection). It appended the
        client to X-Forwarded-For (then None: that header is complete), or, on
        what a sibling's router sent, named the sender in X-PC-Front."""
        assert self.front is not None
        conn.port = self.front
        sender = index.get(b"x-pc-front")
        if sender is not None:
            conn.client_ip = sender
            return sender
        conn.client_ip = index.get(b"x-forwarded-for", b"").rpartition(b",")[2].strip()
        return None

    def app_of(self, host: bytes) -> str | None:
        """The app a Host names: APP.domain, else a custom domain."""
        try:
            app = self.hosts[host]
        except KeyError:
            if len(self.hosts) > 1000:
                self.hosts.clear()
            app = self.hosts[host] = app_for_host(host.decode("latin-1"), self.domain)
        if app is None:
            name = host_name(host.decode("latin-1"))
            if name and name.isascii():
                return self.resolve_host(name)
        return app

    def log(self, ex: Exchange, conn: Relay) -> None:
        """One Heroku-style line per request, for the app's log (the entry router's only)."""
        if self.on_request is None or not ex.app or ex.relayed:
            return
        now = time.monotonic()
        connect = round((ex.t_connect - ex.t0) * 1000)
        service = round((now - ex.t_connect) * 1000) if ex.address else 0
        path = ex.url.split(b"?", 1)[0]
        line = (
            f'method={ex.method.decode()} path="{_text(path)}" '
            f"host={_text(ex.index.get(b'host', b''))} request_id={ex.request_id} "
            f'fwd="{conn.client_ip.decode()}" connect={connect}ms service={service}ms '
            f"status={ex.status} bytes={ex.bytes} protocol={conn.scheme.decode()}"
        )
        self.on_request(ex.app, line)

    async def sweep(self) -> None:
        """Now and then: act on passed deadlines, close pooled connections idle too long."""
        while True:
            await asyncio.sleep(self.limits.tick())
            now = time.monotonic()
            for conn in [c for c in self.clients if c.deadline < now]:
                conn.expired(now)
            self.pool.sweep(now)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        for conn in list(self.clients):
            conn.close()
        self.pool.close()
        for server in self.servers:
            await server.wait_closed()


def plain(text: str, ex: Exchange, via: bytes) -> bytes:
    """A 200 text/plain answer (an ACME challenge's key authorization)."""
    body = text.encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nVia: %b\r\n%b\r\n%b"
        % (len(body), via, b"" if ex.keep_alive else b"Connection: close\r\n", body)
    )


async def start_router(
    lookup: Lookup,
    domain: str,
    name: str,
    host: str,
    port: int,
    hop_key: Callable[[], bytes] = bytes,
    *,
    resolve_host: Callable[[str], str | None] = lambda host: None,
    challenge: Callable[[str], str | None] = lambda token: None,
    tls: tuple[ssl.SSLContext, int] | None = None,
    limits: RouterLimits = RouterLimits(),  # noqa: B008 - frozen, never changed
    on_request: Callable[[str, str], None] | None = None,
    unix: str | None = None,
) -> Router:
    """Serve HTTP on `host`:`port` (and HTTPS on `tls`'s port, its context choosing
    certificates by SNI) until `Router.close()`. `resolve_host` maps a custom
    domain (lowercased, no port) to its app; `challenge` answers ACME HTTP-01
    tokens on the plain port, for any Host; `on_request(app, line)` gets a log
    line per request. With `unix`, plain HTTP is served on that Unix socket
    instead, for nginx in front on `port` (router/front.py), which says who each
    client is."""
    front = port if unix else None
    router = Router(
        lookup, domain, name, hop_key, resolve_host, challenge, limits, on_request, front
    )
    loop = asyncio.get_running_loop()
    listeners: list[tuple[int, ssl.SSLContext | None, bytes]] = [(port, None, b"http")]
    if tls is not None:
        listeners.append((tls[1], tls[0], b"https"))
    try:
        if unix is not None:
            listeners.pop(0)
            server = await loop.create_unix_server(
                functools.partial(ClientConnection, router, b"http"), unix, backlog=1024
            )
            router.servers.append(server)
            router.addresses.append((unix, 0))
        for listen_port, context, scheme in listeners:
            server = await loop.create_server(
                functools.partial(ClientConnection, router, scheme),
                host,
                listen_port,
                ssl=context,
                reuse_address=True,
                backlog=1024,
            )
            router.servers.append(server)
            router.addresses.append(server.sockets[0].getsockname()[:2])
    except BaseException:
        await router.close()
        raise
    router.sweeper = asyncio.ensure_future(router.sweep())
    return router
