"""A small streaming reverse proxy.

The router knows nothing of apps or runtimes: it asks `lookup(app)` for the
addresses ("127.0.0.1:49153") of the app's running web instances and spreads
requests over them. The node passes a lookup that reads its reconciler.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

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
    "host",
    "content-length",
}

Lookup = Callable[[str], list[str]]
SESSION = web.AppKey("session", ClientSession)


def app_for_host(host: str, domain: str) -> str | None:
    """ "mybot.example.org:8080" with domain "example.org" -> "mybot"."""
    name = host.split(":", 1)[0].lower().rstrip(".")
    suffix = "." + domain.lower()
    if not name.endswith(suffix):
        return None
    app = name[: -len(suffix)]
    return app if app and "." not in app else None


def make_app(lookup: Lookup, domain: str) -> web.Application:
    counter = itertools.count()

    async def proxy(request: web.Request) -> web.StreamResponse:
        app = app_for_host(request.host, domain)
        if app is None:
            return web.Response(status=404, text=f"no app here: use http://APP.{domain}/\n")
        addresses = lookup(app)
        if not addresses:
            return web.Response(status=503, text=f"{app} has no running web process\n")
        target = addresses[next(counter) % len(addresses)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        session = request.app[SESSION]
        try:
            async with session.request(
                request.method,
                f"http://{target}{request.rel_url}",
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_HEADERS:
                        response.headers.add(k, v)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientError as e:
            log.warning("router: %s -> %s failed: %s", app, target, e)
            return web.Response(status=502, text=f"{app} did not answer\n")

    async def session_ctx(application: web.Application):  # type: ignore[no-untyped-def]
        timeout = ClientTimeout(total=None, sock_connect=5)
        async with ClientSession(timeout=timeout, auto_decompress=False) as session:
            application[SESSION] = session
            yield

    application = web.Application()
    application.cleanup_ctx.append(session_ctx)
    application.router.add_route("*", "/{tail:.*}", proxy)
    return application


async def start_router(lookup: Lookup, domain: str, host: str, port: int) -> web.AppRunner:
    """Serve until `runner.cleanup()`."""
    runner = web.AppRunner(make_app(lookup, domain), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
