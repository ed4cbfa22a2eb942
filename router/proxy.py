"""A small streaming reverse proxy.

The router knows nothing of apps or runtimes: it asks `lookup(app, local_only)`
for the upstreams of an app and spreads requests over them. An upstream is a
web instance on this node ("127.0.0.1:49153"), or the router of a sibling node
that runs one: a web process on another machine is reached through that
machine's router, since instances publish their ports on loopback only.

A request passed on to a sibling's router names the app in `X-PC-App` and
proves where it comes from in `X-PC-Hop` (an HMAC with the swarm's secret).
That router serves it from its own instances only, so requests never go round
in circles, and keeps the `X-Forwarded-*` headers the first router set. From
anyone else those two headers are ignored and the request is routed by its
Host. Every response says in `Via` which routers it passed.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import ClientError, ClientSession, ClientTimeout, web

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) are for one connection, never forwarded.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}

H_APP = "X-PC-App"  # on a request one router passes to another: the app it is for
H_HOP = "X-PC-Hop"  # "timestamp:hmac": a sibling's router sent it
HOP_SKEW = 30  # seconds a hop's timestamp may be off


@dataclass(frozen=True)
class Upstream:
    address: str  # "host:port"
    router: bool = False  # a sibling's router, not an instance


Lookup = Callable[[str, bool], list[Upstream] | None]  # (app, local_only) -> upstreams
# (None: no such app)
SESSION = web.AppKey("session", ClientSession)


def app_for_host(host: str, domain: str) -> str | None:
    """ "mybot.example.org:8080" with domain "example.org" -> "mybot"."""
    name = host.split(":", 1)[0].lower().rstrip(".")
    if not name.isascii():  # no app's name; may even hold undecodable bytes (surrogates)
        return None
    suffix = "." + domain.lower()
    if not name.endswith(suffix):
        return None
    app = name[: -len(suffix)]
    return app if app and "." not in app else None


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


ACME_PREFIX = "/.well-known/acme-challenge/"


def make_app(
    lookup: Lookup,
    domain: str,
    name: str,
    hop_key: Callable[[], bytes] = bytes,
    resolve_host: Callable[[str], str | None] = lambda host: None,
    challenge: Callable[[str], str | None] = lambda token: None,
) -> web.Application:
    """The router of node `name` for apps at APP.`domain`; `hop_key()` is the
    swarm's secret (empty on a lone node: nothing is passed on). `resolve_host`
    maps a custom domain to its app; `challenge` answers ACME HTTP-01 tokens."""
    counter = itertools.count()
    via = f"1.1 {name}"

    def answer(status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text, headers={"Via": via})

    def custom_app(host: str) -> str | None:
        hostname = host.split(":", 1)[0].lower().rstrip(".")
        return resolve_host(hostname) if hostname.isascii() and hostname else None

    async def proxy(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(ACME_PREFIX) and not request.secure:
            token = request.path[len(ACME_PREFIX) :]
            proof = challenge(token) if request.method == "GET" else None
            if proof is not None:
                return web.Response(text=proof, content_type="text/plain")
            return answer(404, "no such challenge\n")
        key = hop_key()
        sibling_app = passed_on(request.headers, key, time.time())
        app = sibling_app or app_for_host(request.host, domain) or custom_app(request.host)
        if app is None:
            port = request.host.rpartition(":")[2] if ":" in request.host else ""
            where = f"APP.{domain}:{port}" if re.fullmatch(r"[0-9]+", port) else f"APP.{domain}"
            return answer(404, f"no app here: use http://{where}/\n")
        upstreams = lookup(app, sibling_app is not None)
        if upstreams is None:
            return answer(404, f"no app named {app} here\n")
        if not upstreams:
            return answer(503, f"{app} has no running web process\n")
        target = upstreams[next(counter) % len(upstreams)]
        # Host goes through as the client sent it, as apps expect (Heroku does too).
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers.pop(H_APP, None)
        headers.pop(H_HOP, None)
        if sibling_app is None:  # from a client: say who asked (a sibling's router did)
            client = request.remote or ""
            earlier = headers.get("X-Forwarded-For")  # proxies in front of this one
            headers["X-Forwarded-For"] = f"{earlier}, {client}" if earlier else client
            headers["X-Forwarded-Host"] = request.host
            headers["X-Forwarded-Proto"] = request.scheme
        if target.router:
            headers[H_APP] = app
            headers[H_HOP] = hop_token(key, app, time.time())
        session = request.app[SESSION]
        try:
            async with session.request(
                request.method,
                f"http://{target.address}{request.rel_url}",
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_HEADERS and k.lower() != "via":
                        response.headers.add(k, v)
                inner = upstream.headers.get("Via") if target.router else None
                response.headers["Via"] = f"{via}, {inner}" if inner else via
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientError as e:
            log.warning("router: %s -> %s failed: %s", app, target.address, e)
            return answer(502, f"{app} did not answer\n")

    async def session_ctx(application: web.Application) -> AsyncIterator[None]:
        timeout = ClientTimeout(total=None, sock_connect=5)
        async with ClientSession(timeout=timeout, auto_decompress=False) as session:
            application[SESSION] = session
            yield

    application = web.Application()
    application.cleanup_ctx.append(session_ctx)
    application.router.add_route("*", "/{tail:.*}", proxy)
    return application


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
) -> web.AppRunner:
    """Serve until `runner.cleanup()`; with `tls`, the same routing over HTTPS on
    its port too (`runner.addresses`: HTTP first, then HTTPS)."""
    application = make_app(lookup, domain, name, hop_key, resolve_host, challenge)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    if tls is not None:
        await web.TCPSite(runner, host, tls[1], ssl_context=tls[0]).start()
    return runner
