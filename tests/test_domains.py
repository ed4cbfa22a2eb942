"""Custom domains: which names are taken, who may add them, the router's view
(tests/test_node.py's real Node), and the router's hooks over real HTTP."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from peoplescloud.certs import CertRecord, describe
from peoplescloud.domains import HostTable, check_host
from peoplescloud.errors import ConfigError, NotFound, PCError
from peoplescloud.service import Node
from router.proxy import start_router
from tests.conftest import free_port
from tests.test_node import node  # noqa: F401 - the fixture
from tests.test_router import serve_upstream


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("www.Example.ORG.", "www.example.org"),
        ("example.org", "example.org"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_a_valid_name_is_lowercased_without_its_dot(text: str, host: str):
    assert check_host(text, "localhost") == host


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("localhost", "not a DNS name"),  # one label
        ("*.example.org", "not a DNS name"),
        ("-a.example.org", "not a DNS name"),
        ("a_b.example.org", "not a DNS name"),
        ("example.org:443", "not a DNS name"),
        ("example.org/x", "not a DNS name"),
        ("a..example.org", "not a DNS name"),
        ("x" * 64 + ".example.org", "not a DNS name"),
        (".".join(["abcdefgh"] * 29), "not a DNS name"),  # 260 characters
        ("10.0.0.1", "an address"),
        ("bücher.example", "xn--"),
        ("mybot.apps.example.net", "under this node's domain"),
        ("apps.example.net", "under this node's domain"),
    ],
)
def test_an_invalid_name_is_refused_with_what_to_do(text: str, why: str):
    with pytest.raises(ConfigError, match=why):
        check_host(text, "apps.example.net")


def test_a_domain_belongs_to_one_app(node: Node):  # noqa: F811
    node.domains_add("ann", "annbot", "WWW.Example.org")
    assert node.domains("ann", "annbot") == ["www.example.org"]
    with pytest.raises(PCError, match="annbot already has www.example.org"):
        node.domains_add("ann", "annbot", "www.example.org")
    with pytest.raises(PCError, match="belongs to another app") as refused:
        node.domains_add("ann", "annbot-copy", "www.example.org.")
    assert "annbot" not in str(refused.value).replace("annbot-copy", "")  # no name told
    assert node.domains("ann", "annbot-copy") == []
    with pytest.raises(PCError, match=r"belongs to another app \(annbot\)"):  # admins: which
        node.domains_add("root", "annbot-copy", "www.example.org")
    assert node.app_info("ann", "annbot")["domains"] == "www.example.org"
    # pending until a node with TLS orders it
    assert [r.host for r in node.certs("ann", "annbot")] == ["www.example.org"]
    assert "pending" in node.certs("ann", "annbot")[0].status

    node.domains_remove("ann", "annbot", "www.example.org")
    assert node.state.read().domains == {} and node.state.read().certs == {}
    with pytest.raises(NotFound):
        node.domains_remove("ann", "annbot", "www.example.org")
    node.domains_add("ann", "annbot-copy", "www.example.org")  # free again
    whats = [e.what for e in node.events("ann", "annbot", 10)]
    assert "domains:add www.example.org" in whats and "domains:remove www.example.org" in whats


def test_only_who_may_use_an_app_manages_its_domains(node: Node):  # noqa: F811
    with pytest.raises(NotFound):
        node.domains_add("bob", "annbot", "bob.example.org")
    with pytest.raises(NotFound):
        node.domains("bob", "annbot")
    node.domains_add("ann", "annbot", "ann.example.org")
    with pytest.raises(NotFound):
        node.domains_remove("bob", "annbot", "ann.example.org")
    with pytest.raises(NotFound):
        node.certs("bob", "annbot")
    node.sharing_add("ann", "annbot", "bob")  # a collaborator may, as with config
    node.domains_add("bob", "annbot", "bob.example.org")
    node.domains_add("root", "annbot", "root.example.org")  # an admin may
    assert len(node.domains("ann", "annbot")) == 3


def test_another_apps_domain_is_refused_even_in_a_stale_read(node: Node):  # noqa: F811
    """The check happens inside the change, not on a copy read before it."""
    real_read = node.state.read
    stale = real_read()
    node.domains_add("ann", "annbot", "race.example.org")
    node.state.read = lambda: stale  # type: ignore[method-assign]
    try:
        with pytest.raises(PCError, match="belongs to another app"):
            node.domains_add("ann", "annbot-copy", "race.example.org")
    finally:
        node.state.read = real_read  # type: ignore[method-assign]
    assert real_read().domains == {"race.example.org": "annbot"}


def test_destroying_an_app_frees_its_domains(node: Node):  # noqa: F811
    node.domains_add("ann", "annbot", "gone.example.org")
    node.destroy("ann", "annbot")
    snap = node.state.read()
    assert snap.domains == {} and snap.certs == {}
    node.domains_add("ann", "annbot-copy", "gone.example.org")


def test_the_host_table_follows_the_state_and_expires_challenges(node: Node):  # noqa: F811
    table = HostTable(node.state)
    assert table.app_for("t.example.org") is None
    node.domains_add("ann", "annbot", "t.example.org")
    assert table.app_for("t.example.org") == "annbot"
    with node.state.change() as s:
        s.challenges["tok"] = {"answer": "tok.print", "expires": time.time() + 60}
        s.challenges["old"] = {"answer": "old.print", "expires": time.time() - 1}
    assert table.challenge("tok") == "tok.print"
    assert table.challenge("old") is None and table.challenge("nope") is None


def test_the_host_table_reads_the_state_only_when_domains_or_challenges_change(
    node: Node,  # noqa: F811
):
    reads = []
    real_read = node.state.read

    class Counting:  # the state a swarm member has: `members` changes at each lease renewal
        version = 0
        touched = 0

        def version_of(self, *fields: str) -> int:
            return self.touched if {"domains", "challenges"} & set(fields) else self.version

        def read(self):
            reads.append(1)
            return real_read()

    state = Counting()
    table = HostTable(state)  # type: ignore[arg-type]
    table.app_for("x.example.org")
    for _ in range(5):
        state.version += 1  # a lease renewal
        table.app_for("x.example.org")
    assert len(reads) == 1
    node.domains_add("ann", "annbot", "x.example.org")
    state.touched = state.version = 9
    assert table.app_for("x.example.org") == "annbot" and len(reads) == 2


def test_a_certificate_is_due_when_missing_expiring_or_its_back_off_passed():
    now = 1_000_000_000.0
    assert CertRecord(app="a").due(30, now)
    valid = CertRecord(app="a", chain="x", not_after="2001-12-09T01:46:40Z")  # now + 90 days
    assert not valid.due(30, now) and valid.due(100, now)
    failed = CertRecord(app="a", reason="no", next_try=now + 60, failures=1)
    assert not failed.due(30, now) and failed.due(30, now + 61)
    assert describe(failed, True, now).startswith("failed: no (next try ")
    assert describe(CertRecord(app="a"), False, now) == "pending (TLS is off on this node)"
    assert describe(valid, True, now) == "valid"


def test_the_router_routes_custom_domains_and_answers_challenges():
    async def scenario() -> None:
        up_runner, instance = await serve_upstream()
        from router.proxy import Upstream

        routes = {"mybot": [Upstream(instance)]}
        asked: list[str] = []

        def resolve(host: str) -> str | None:
            asked.append(host)
            return "mybot" if host == "www.example.org" else None

        port = free_port()
        runner = await start_router(
            lambda app, local_only: routes.get(app),
            "localhost",
            "n1",
            "127.0.0.1",
            port,
            resolve_host=resolve,
            challenge=lambda token: "tok.print" if token == "tok" else None,
        )
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}"
                async with http.get(f"{url}/p", headers={"Host": "WWW.example.org.:80"}) as r:
                    assert r.status == 200 and (await r.text()).startswith("GET /p 0 ")
                async with http.get(f"{url}/", headers={"Host": "other.example.org"}) as r:
                    assert r.status == 404
                async with http.get(f"{url}/", headers={"Host": "mybot.localhost"}) as r:
                    assert r.status == 200  # APP.<domain> never asks resolve_host
                assert asked == ["www.example.org", "other.example.org"]
                well_known = f"{url}/.well-known/acme-challenge/"
                async with http.get(well_known + "tok", headers={"Host": "any.example"}) as r:
                    assert (r.status, await r.text()) == (200, "tok.print")
                    assert r.headers["Content-Type"].startswith("text/plain")
                async with http.get(well_known + "nope", headers={"Host": "mybot.localhost"}) as r:
                    assert r.status == 404  # never passed on to the app
        finally:
            await runner.close()
            await up_runner.cleanup()

    asyncio.run(scenario())


def test_the_router_serves_the_same_routing_over_https_picked_by_sni(tmp_path):  # type: ignore[no-untyped-def]
    import ssl

    from aiohttp import web

    from peoplescloud.state import Snapshot
    from peoplescloud.tls import SniContexts, self_signed
    from router.proxy import Upstream

    async def scenario() -> None:
        async def echo(request: web.Request) -> web.Response:
            return web.Response(text=request.headers.get("X-Forwarded-Proto", "-"))

        upstream = web.Application()
        upstream.router.add_route("*", "/{tail:.*}", echo)
        up = web.AppRunner(upstream)
        await up.setup()
        up_port = free_port()
        await web.TCPSite(up, "127.0.0.1", up_port).start()

        chain, key = self_signed("www.example.org")
        sni = SniContexts("localhost", tmp_path / "tls")
        sni.refresh(Snapshot(certs={"www.example.org": {"app": "a", "chain": chain, "key": key}}))
        port, tls_port = free_port(), free_port()
        runner = await start_router(
            lambda app, local_only: [Upstream(f"127.0.0.1:{up_port}")] if app == "a" else None,
            "localhost",
            "n1",
            "127.0.0.1",
            port,
            resolve_host=lambda host: "a" if host == "www.example.org" else None,
            challenge=lambda token: "proof",
            tls=(sni.context, tls_port),
        )
        try:
            assert [a[1] for a in runner.addresses] == [port, tls_port]
            trust = ssl.create_default_context(cadata=chain)  # verifies name and chain
            connector = aiohttp.TCPConnector(ssl=trust, resolver=Loopback())
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.get(f"https://www.example.org:{tls_port}/") as r:
                    assert (r.status, await r.text()) == (200, "https")
                async with http.get(
                    f"http://127.0.0.1:{port}/", headers={"Host": "a.localhost"}
                ) as r:
                    assert await r.text() == "http"
                # ACME answers live on the plain HTTP port only
                url = f"https://www.example.org:{tls_port}/.well-known/acme-challenge/x"
                async with http.get(url) as r:
                    assert (r.status, await r.text()) == (200, "https")  # the app's, not "proof"
        finally:
            await runner.close()
            await up.cleanup()

    asyncio.run(scenario())


class Loopback(aiohttp.abc.AbstractResolver):
    """Every name is 127.0.0.1: HTTPS with the real name (SNI, verification) on loopback."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list:  # type: ignore[override]
        import socket

        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        return None


def test_the_domain_commands_call_the_node_and_print_tables():
    from gitserver.service import CertRow
    from tests.test_commands import FakeNode, call

    fake = FakeNode()
    status, out, err = call("domains:add mybot WWW.Example.org.", fake)
    assert (status, err) == (0, "") and out.startswith("-----> www.example.org now routes to mybot")
    assert fake.calls[-1] == ("domains_add", ("alice", "mybot", "WWW.Example.org."))
    status, out, _ = call("domains:remove mybot www.example.org", fake)
    assert status == 0 and fake.calls[-1] == (
        "domains_remove",
        ("alice", "mybot", "www.example.org"),
    )
    status, _, err = call("domains:add mybot", fake)
    assert status == 2 and "missing HOST" in err and "usage: domains:add APP HOST" in err
    fake.domains = lambda user, app: []  # type: ignore[method-assign]
    assert "has no custom domain" in call("domains mybot", fake)[1]
    fake.certs = lambda user, app: [  # type: ignore[method-assign]
        CertRow("www.example.org", "CN=Test CA", "2027-01-01T00:00:00Z", "valid"),
        CertRow("a.example.org", "-", "-", "failed: refused"),
    ]
    status, out, _ = call("certs mybot", fake)
    assert status == 0 and out.splitlines() == [
        "HOST             ISSUER      NOT AFTER             STATUS",
        "www.example.org  CN=Test CA  2027-01-01T00:00:00Z  valid",
        "a.example.org    -           -                     failed: refused",
    ]
