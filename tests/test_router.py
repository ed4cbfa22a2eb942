"""The router against a real upstream HTTP server on loopback."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from router.proxy import app_for_host, start_router
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


def test_routes_by_host_and_streams_bodies():
    async def scenario() -> None:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            return web.Response(text=f"{request.method} {request.path_qs} {len(body)}")

        upstream = web.Application()
        upstream.router.add_route("*", "/{tail:.*}", echo)
        up_runner = web.AppRunner(upstream)
        await up_runner.setup()
        up_port = free_port()
        await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
        routes = {"mybot": [f"127.0.0.1:{up_port}"], "idle": []}
        port = free_port()
        runner = await start_router(lambda app: routes.get(app, []), "localhost", "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/x?y=1"
                async with http.post(
                    url, data=b"z" * 100_000, headers={"Host": "mybot.localhost"}
                ) as r:
                    assert (r.status, await r.text()) == (200, "POST /x?y=1 100000")
                async with http.get(url, headers={"Host": "idle.localhost"}) as r:
                    assert r.status == 503 and "no running web process" in await r.text()
                async with http.get(url, headers={"Host": "localhost"}) as r:
                    assert r.status == 404
                routes["mybot"] = [f"127.0.0.1:{free_port()}"]  # nobody listens there
                async with http.get(url, headers={"Host": "mybot.localhost"}) as r:
                    assert r.status == 502
        finally:
            await runner.cleanup()
            await up_runner.cleanup()

    asyncio.run(scenario())
