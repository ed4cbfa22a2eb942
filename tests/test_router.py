"""The router against a real upstream HTTP server on loopback."""

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from router.proxy import Upstream, app_for_host, hop_token, passed_on, start_router
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("host", "app"),
    [
        ("mybot.localhost:8080", "mybot"),
        ("MyBot.example.org", "mybot"),
        ("localhost", None),
        ("a.b.localhost", None),
        ("mybot.other.org", None),
    ],
)
def test_app_for_host(host: str, app: str | None):
    domain = "example.org" if "example" in host else "localhost"
    assert app_for_host(host, domain) == app


def first_line(text: str) -> str:
    """A router's own page: what went wrong, then "request id: ..."."""
    line, rest = text.split("\n", 1)
    assert rest.startswith("request id: "), text
    return line


async def serve_upstream() -> tuple[web.AppRunner, str]:
    """An app instance that answers with what it received."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen = [request.headers.get(h, "-") for h in ("Host", "X-Forwarded-Host", "X-PC-App")]
        return web.Response(text=f"{request.method} {request.path_qs} {len(body)} {seen}")

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(upstream)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


def test_routes_by_host_and_streams_bodies():
    async def scenario() -> None:
        up_runner, instance = await serve_upstream()
        routes = {"mybot": [Upstream(instance)], "idle": []}
        port = free_port()
        runner = await start_router(
            lambda app, local_only: routes.get(app), "localhost", "n1", "127.0.0.1", port
        )
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/x?y=1"
                async with http.post(
                    url, data=b"z" * 100_000, headers={"Host": "mybot.localhost"}
                ) as r:
                    assert (r.status, await r.text()) == (
                        200,
                        "POST /x?y=1 100000 ['mybot.localhost', 'mybot.localhost', '-']",
                    )
                    assert r.headers["Via"] == "1.1 n1"
                async with http.get(url, headers={"Host": "idle.localhost"}) as r:
                    assert r.status == 503 and "no running web process" in await r.text()
                async with http.get(url, headers={"Host": "ghost.localhost"}) as r:
                    assert (r.status, first_line(await r.text())) == (
                        404,
                        "no app named ghost here",
                    )
                async with http.get(url, headers={"Host": f"localhost:{port}"}) as r:
                    hint = f"no app here: use http://APP.localhost:{port}/"
                    assert (r.status, first_line(await r.text())) == (404, hint)
                routes["mybot"] = [Upstream(f"127.0.0.1:{free_port()}")]  # nobody listens there
                async with http.get(url, headers={"Host": "mybot.localhost"}) as r:
                    assert r.status == 502
        finally:
            await runner.close()
            await up_runner.cleanup()

    asyncio.run(scenario())


def test_a_web_process_on_a_sibling_is_reached_through_its_router():
    """n1 runs no instance of mybot; n2 does. n1 passes requests to n2's router,
    which serves them from its own instance and never passes them back."""

    async def scenario() -> None:
        up_runner, instance = await serve_upstream()
        p1, p2 = free_port(), free_port()
        n1_routes = {"mybot": [Upstream(f"127.0.0.1:{p2}", router=True)]}
        n2_routes = {"mybot": [Upstream(instance)], "ghost": [Upstream(f"127.0.0.1:{p1}", True)]}

        def lookup(routes: dict, local: dict):  # local: what a router runs itself
            return lambda app, local_only: (local if local_only else routes).get(app, [])

        secret = b"the swarm secret"
        r1 = await start_router(
            lookup(n1_routes | {"ghost": [Upstream(f"127.0.0.1:{p2}", True)]}, {}),
            "localhost",
            "n1",
            "127.0.0.1",
            p1,
            hop_key=lambda: secret,
        )
        r2 = await start_router(
            lookup(n2_routes, {"mybot": [Upstream(instance)]}),
            "other.org",
            "n2",
            "127.0.0.1",
            p2,
            hop_key=lambda: secret,
        )
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{p1}/x"
                async with http.get(url, headers={"Host": "mybot.localhost"}) as r:
                    assert (r.status, await r.text()) == (
                        200,
                        "GET /x 0 ['mybot.localhost', 'mybot.localhost', '-']",
                    )
                    assert r.headers["Via"] == "1.1 n1, 1.1 n2"
                # Both routers think the other runs it: one hop, then "no web process".
                async with http.get(url, headers={"Host": "ghost.localhost"}) as r:
                    assert r.status == 503 and "ghost has no running web process" in await r.text()
                    assert r.headers["Via"] == "1.1 n1, 1.1 n2"
                # A client cannot pose as a router: its X-PC-App is ignored, and the
                # X-Forwarded-* the app sees are the router's.
                forged = {
                    "Host": "mybot.other.org",
                    "X-PC-App": "ghost",
                    "X-PC-Hop": f"{int(time.time())}:{'0' * 64}",
                    "X-Forwarded-Host": "evil.example",
                }
                async with http.get(f"http://127.0.0.1:{p2}/y", headers=forged) as r:
                    assert (r.status, await r.text()) == (
                        200,
                        "GET /y 0 ['mybot.other.org', 'mybot.other.org', '-']",
                    )
                    assert r.headers["Via"] == "1.1 n2"
        finally:
            await r1.close()
            await r2.close()
            await up_runner.cleanup()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "host", [b"caf\xc3\xa9.localhost", b"\xff\xfe.localhost", "bücher.localhost".encode("idna")]
)
def test_a_host_that_is_no_app_name_gets_a_plain_answer(
    host: bytes, caplog: pytest.LogCaptureFixture
):
    """Non-ASCII (or undecodable) Host headers: a plain 4xx, no traceback in the log."""

    async def scenario() -> tuple[bytes, list[str]]:
        port = free_port()
        runner = await start_router(
            lambda app, local_only: None, "localhost", "n1", "127.0.0.1", port
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer, [r.getMessage() + str(r.exc_info) for r in caplog.records]
        finally:
            await runner.close()

    with caplog.at_level("DEBUG"):
        answer, logged = asyncio.run(scenario())
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404")), answer
    assert b"Traceback" not in answer and b"internal" not in answer.lower()
    assert not any("Traceback" in m or "Error" in m for m in logged), logged


@pytest.mark.parametrize(
    ("app", "hop"),
    [
        ("mybot", "²:abc"),  # str.isdigit says yes, int() no
        ("mybot\udcff", "{now}:abc"),  # an undecodable byte in the app header
        ("mybot", "{now}:\udcffabc"),  # ... or in the hop
        ("mybot", "{now}:é"),  # compare_digest takes ASCII strings only
        ("", "{now}:abc"),
    ],
)
def test_a_garbled_hop_is_no_hop(app: str, hop: str):
    now = time.time()
    headers = {"X-PC-App": app, "X-PC-Hop": hop.replace("{now}", str(int(now)))}
    assert passed_on(headers, b"secret", now) is None
    good = {"X-PC-App": "mybot", "X-PC-Hop": hop_token(b"secret", "mybot", now)}
    assert passed_on(good, b"secret", now) == "mybot"
