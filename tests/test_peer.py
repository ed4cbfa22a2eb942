"""The peer API: real servers on 127.0.0.1 (port 0), our client and an independent one (aiohttp)."""

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from peoplescloud.errors import NotFound
from swarm.invite import InviteError, make_invite, parse_invite, redeem, usable
from swarm.peer import (
    BAD_SIGNATURE,
    NonceCache,
    PeerError,
    join_request_key,
    join_response_key,
    sign,
    unseal,
)
from swarm.peer_client import PeerClient
from swarm.peer_server import PeerServer, start_peer_server
from tests.conftest import free_port

SECRET = b"the swarm secret, 32 bytes long!"
MEMBERS = {"node1", "node2", "node3"}


async def echo(sender: str, body: object) -> object:
    return {"sender": sender, "body": body}


async def missing(sender: str, body: object) -> object:
    raise NotFound("no app named ghost")


async def boom(sender: str, body: object) -> object:
    raise RuntimeError("a bug")


async def three_lines(sender: str, body: object) -> AsyncIterator[bytes | str]:
    async def lines() -> AsyncIterator[bytes | str]:
        yield "line 1\n"
        yield b"line 2\n"
        yield "line 3"

    return lines()


HANDLERS = {"echo": echo, "missing": missing, "boom": boom, "lines": three_lines}


@contextlib.asynccontextmanager
async def serving(server: PeerServer) -> AsyncIterator[str]:
    """The address (host:port) of `server`, listening on a port the OS picked."""
    runner = await start_peer_server(server.app(), "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def member_server(**options: object) -> PeerServer:
    return PeerServer(lambda: SECRET, MEMBERS.__contains__, HANDLERS, name="node1", **options)  # type: ignore[arg-type]


def run_with_server(
    scenario: Callable[[str], Awaitable[None]], server: PeerServer | None = None
) -> None:
    async def main() -> None:
        async with serving(server or member_server()) as address:
            await scenario(address)

    asyncio.run(main())


async def post(address: str, route: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """A raw request, to see statuses and to send what no PeerClient would."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{address}/peer/{route}", data=body, headers=headers) as r,
    ):
        return r.status, json.loads(await r.read())


def signed(body: bytes, route: str = "echo", sender: str = "node2", **kw: object) -> dict:
    kw.setdefault("recipient", "node1")
    return sign(SECRET, "POST", f"/peer/{route}", body, sender, time.time(), **kw)  # type: ignore[arg-type]


async def refusal(client: PeerClient, address: str, route: str = "echo") -> str:
    with pytest.raises(PeerError) as e:
        await client.call("node1", address, route, {"x": 1})
    await client.close()
    return str(e.value)


# -- members ---------------------------------------------------------------------------


def test_signed_call_works():
    async def scenario(address: str) -> None:
        async with PeerClient("node2", lambda: SECRET) as client:
            body = {"app": "mybot", "lines": [1, 2], "text": "héllo"}
            assert await client.call("node1", address, "echo", body) == {
                "sender": "node2",
                "body": body,
            }
            # the pool reuses connections: a second call is signed afresh
            assert (await client.call("node1", address, "echo", None))["body"] is None

    run_with_server(scenario)


def test_tampered_body_is_refused():
    async def scenario(address: str) -> None:
        headers = signed(b'{"scale": 1}')
        assert await post(address, "echo", b'{"scale": 9}', headers) == (
            401,
            {"error": BAD_SIGNATURE, "exit_code": 1},
        )

    run_with_server(scenario)


def test_signature_covers_the_route():
    async def scenario(address: str) -> None:
        headers = signed(b"{}", route="echo")
        status, answer = await post(address, "missing", b"{}", headers)
        assert (status, answer["error"]) == (
            401,
            BAD_SIGNATURE,
        )

    run_with_server(scenario)


def test_wrong_secret_is_refused():
    async def scenario(address: str) -> None:
        client = PeerClient("node2", lambda: b"another swarm's secret")
        assert await refusal(client, address) == f"node1 refused: {BAD_SIGNATURE}"

    run_with_server(scenario)


def test_non_member_is_refused():
    async def scenario(address: str) -> None:
        client = PeerClient("node9", lambda: SECRET)
        assert await refusal(client, address) == (
            "node1 refused: node9 is not a member of this swarm"
        )
        status, _ = await post(address, "echo", b"{}", signed(b"{}", sender="node9"))
        assert status == 403

    run_with_server(scenario)


def test_a_stranger_gets_nothing_not_even_route_names():
    async def scenario(address: str) -> None:
        stranger = PeerClient("node9", lambda: b"a guess")
        assert await refusal(stranger, address, "nope") == f"node1 refused: {BAD_SIGNATURE}"
        member = PeerClient("node2", lambda: SECRET)
        assert await refusal(member, address, "nope") == "node1: no peer request named 'nope'"

    run_with_server(scenario)


@pytest.mark.parametrize("offset", [-120, +45])
def test_request_from_a_skewed_clock_is_refused(offset):
    now = 1_800_000_000.0

    async def scenario(address: str) -> None:
        client = PeerClient("node2", lambda: SECRET, clock=lambda: now + offset)
        assert await refusal(client, address) == (
            f"node1 refused: request time is {abs(offset)} s off this node's clock: "
            "check both clocks"
        )

    run_with_server(scenario, member_server(clock=lambda: now))


def test_replayed_request_is_refused():
    async def scenario(address: str) -> None:
        headers = signed(b'{"restart": "web.1"}')
        assert (await post(address, "echo", b'{"restart": "web.1"}', headers))[0] == 200
        assert await post(address, "echo", b'{"restart": "web.1"}', headers) == (
            401,
            {"error": "replayed request", "exit_code": 1},
        )

    run_with_server(scenario)


def test_request_for_another_member_cannot_be_replayed_here():
    """Captured on its way to node3, a request does nothing on node1."""

    async def scenario(address: str) -> None:
        headers = signed(b'{"restart": "web.1"}', recipient="node3")
        status, answer = await post(address, "echo", b'{"restart": "web.1"}', headers)
        assert (status, answer["error"]) == (
            401,
            BAD_SIGNATURE,
        )
        async with PeerClient("node2", lambda: SECRET) as client:
            with pytest.raises(PeerError, match=f"node3 refused: {re.escape(BAD_SIGNATURE)}"):
                await client.call("node3", address, "echo", {})  # node1 answers at that address

    run_with_server(scenario)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "unsigned request"),
        ({"X-PC-Sender": "node2"}, "unsigned request"),
        ({**signed(b"{}"), "X-PC-Sender": "Node 2"}, "malformed signature headers"),
        ({**signed(b"{}"), "X-PC-Timestamp": "soon"}, "malformed signature headers"),
        ({**signed(b"{}"), "X-PC-Timestamp": "\u00b2"}, "malformed signature headers"),
        ({**signed(b"{}"), "X-PC-Nonce": "x" * 32}, "malformed signature headers"),
    ],
)
def test_unsigned_or_malformed_request_is_refused(headers, message):
    async def scenario(address: str) -> None:
        assert await post(address, "echo", b"{}", headers) == (
            401,
            {"error": message, "exit_code": 1},
        )

    run_with_server(scenario)


def test_node_outside_any_swarm_refuses_and_cannot_call():
    async def scenario(address: str) -> None:
        client = PeerClient("node2", lambda: SECRET)
        assert await refusal(client, address) == "node1 refused: this node is not in a swarm"
        lonely = PeerClient("node2", lambda: b"")
        with pytest.raises(PeerError, match="this node is not in a swarm"):
            await lonely.call("node1", address, "echo", {})

    run_with_server(scenario, PeerServer(lambda: b"", MEMBERS.__contains__, HANDLERS, name="node1"))


def test_handler_errors_reach_the_caller():
    async def scenario(address: str) -> None:
        async with PeerClient("node2", lambda: SECRET) as client:
            with pytest.raises(PeerError, match="^node1: no app named ghost$") as e:
                await client.call("node1", address, "missing", {})
            assert e.value.exit_code == NotFound.exit_code
            with pytest.raises(
                PeerError, match=r"^node1: boom failed on this node \(see its log\)"
            ):
                await client.call("node1", address, "boom", {})
        status, answer = await post(address, "echo", b"{", signed(b"{"))
        assert (status, answer["error"]) == (400, "the request body is not JSON")

    run_with_server(scenario)


def test_unreachable_node_is_named():
    async def scenario() -> None:
        port = free_port()  # nobody listens there
        async with PeerClient("node2", lambda: SECRET) as client:
            with pytest.raises(PeerError, match=f"^node3 \\(127.0.0.1:{port}\\) does not answer$"):
                await client.call("node3", f"127.0.0.1:{port}", "echo", {})
            with pytest.raises(PeerError, match=f"^node3 \\(127.0.0.1:{port}\\) does not answer$"):
                async for _ in client.stream("node3", f"127.0.0.1:{port}", "lines", {}):
                    pass

    asyncio.run(scenario())


def test_address_that_is_not_a_peer_api():
    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
        await writer.drain()
        writer.close()

    async def scenario(address: str) -> None:
        async with PeerClient("node2", lambda: SECRET) as client:
            with pytest.raises(PeerError, match="^node1: no such call: /peer/a/b$"):
                await client.call("node1", address, "a/b", {})
            other = await asyncio.start_server(not_found, "127.0.0.1", 0)
            port = other.sockets[0].getsockname()[1]
            async with other:
                with pytest.raises(PeerError, match="node1 answered HTTP 404: is this a People's"):
                    await client.call("node1", f"127.0.0.1:{port}", "echo", {})

    run_with_server(scenario)


# -- streams ---------------------------------------------------------------------------


def test_stream_delivers_lines():
    async def scenario(address: str) -> None:
        async with PeerClient("node2", lambda: SECRET) as client:
            got = [line async for line in client.stream("node1", address, "lines", {})]
            assert got == [b"line 1\n", b"line 2\n", b"line 3"]

    run_with_server(scenario)


def test_stream_refusals_and_errors_are_peer_errors():
    async def scenario(address: str) -> None:
        async with PeerClient("node2", lambda: b"wrong") as client:
            with pytest.raises(
                PeerError,
                match=f"^node1 refused: {re.escape(BAD_SIGNATURE)}$",
            ):
                async for _ in client.stream("node1", address, "lines", {}):
                    pass
        async with PeerClient("node2", lambda: SECRET) as client:
            with pytest.raises(PeerError, match="^node1: no app named ghost$"):
                async for _ in client.stream("node1", address, "missing", {}):
                    pass

    run_with_server(scenario)


def test_stream_that_breaks_on_the_sibling_is_an_error_not_an_end():
    async def breaking(sender: str, body: object) -> AsyncIterator[str]:
        async def lines() -> AsyncIterator[str]:
            yield "one\n"
            raise RuntimeError("the runtime lost the container")

        return lines()

    async def scenario(address: str) -> None:
        got = []
        async with PeerClient("node2", lambda: SECRET) as client:
            with pytest.raises(PeerError, match=r"^node1 \(.*\) broke off the stream$"):
                async for line in client.stream("node1", address, "breaking", {}):
                    got.append(line)
        assert got == [b"one\n"]

    run_with_server(
        scenario, PeerServer(lambda: SECRET, bool, {"breaking": breaking}, name="node1")
    )


def test_a_sibling_that_stops_sending_is_an_error_when_a_read_timeout_is_set():
    """A frozen sibling must not hang `logs` (its tail has a read timeout)."""

    async def stalling(sender: str, body: object) -> AsyncIterator[str]:
        async def lines() -> AsyncIterator[str]:
            yield "one\n"
            await asyncio.sleep(30)
            yield "never\n"

        return lines()

    async def scenario(address: str) -> None:
        got = []
        async with PeerClient("node2", lambda: SECRET) as client:
            stream = client.stream("node1", address, "stalling", {}, read_timeout=0.3)
            with pytest.raises(PeerError, match=r"^node1 \(.*\) stopped sending for 0.3 s$"):
                async for line in stream:
                    got.append(line)
        assert got == [b"one\n"]

    run_with_server(
        scenario, PeerServer(lambda: SECRET, bool, {"stalling": stalling}, name="node1")
    )


@pytest.mark.parametrize("busy", [False, True], ids=["idle-follow", "busy-follow"])
def test_stream_stops_when_the_client_stops(busy):
    """`logs -f` on a sibling: closing the client's iterator ends the sibling's."""

    async def scenario() -> None:
        stopped = asyncio.Event()
        quiet = asyncio.Event()  # never set: an app that logs nothing more

        async def follow(sender: str, body: object) -> AsyncIterator[str]:
            async def lines() -> AsyncIterator[str]:
                try:
                    n = 0
                    while True:
                        n += 1
                        yield f"line {n}\n"
                        if busy:
                            await asyncio.sleep(0)
                        elif n == 3:
                            await quiet.wait()
                finally:
                    stopped.set()

            return lines()

        server = PeerServer(lambda: SECRET, MEMBERS.__contains__, {"follow": follow}, name="node1")
        async with serving(server) as address, PeerClient("node2", lambda: SECRET) as client:
            got = []
            async with contextlib.aclosing(client.stream("node1", address, "follow", {})) as s:
                async for line in s:
                    got.append(line)
                    if len(got) == 3:
                        break
            assert got == [b"line 1\n", b"line 2\n", b"line 3\n"]
            await asyncio.wait_for(stopped.wait(), 30)  # a hang guard, not a timing claim

    asyncio.run(scenario())


# -- joining with an invite ------------------------------------------------------------

SWARM_KEY = "/key/swarm/psk/1.0.0/\n/base16/\n" + "ab" * 32


class Swarm:
    """The part of a member that answers `join`: invites in, secrets out."""

    def __init__(self) -> None:
        self.records: dict = {}
        self.now = time.time()
        self.server = PeerServer(
            lambda: SECRET,
            MEMBERS.__contains__,
            {"echo": echo},
            name="node1",
            invite_handlers={"join": self.join},
            invite_key=lambda invite_id: usable(self.records, invite_id, self.now).key,
        )

    def invite(self, address: str, ttl: int = 600) -> str:
        token, record = make_invite("swarm-1", address, ttl, self.now)
        self.records[record.invite_id] = record
        return token

    async def join(self, sender: str, invite_id: str, body: object) -> object:
        self.records[invite_id] = redeem(self.records, invite_id, self.now, by=sender)
        return {"swarm_secret": SECRET.decode(), "swarm_key": SWARM_KEY, "members": sorted(MEMBERS)}


def run_with_swarm(scenario: Callable[[Swarm, str], Awaitable[None]]) -> None:
    swarm = Swarm()
    run_with_server(lambda address: scenario(swarm, address), swarm.server)


def test_join_with_an_invite_gives_the_swarm_secret_once():
    async def scenario(swarm: Swarm, address: str) -> None:
        invite = parse_invite(swarm.invite(address))
        async with PeerClient("node4", lambda: b"") as joiner:
            answer = await joiner.call("node1", invite.address, "join", {}, invite=invite)
            assert answer == {
                "swarm_secret": SECRET.decode(),
                "swarm_key": SWARM_KEY,
                "members": ["node1", "node2", "node3"],
            }
            assert swarm.records[invite.invite_id].used_by == "node4"
            with pytest.raises(
                PeerError, match="^node1 refused: this invite was already used by node4"
            ):
                await joiner.call("node1", invite.address, "join", {}, invite=invite)

    run_with_swarm(scenario)


def test_join_with_a_wrong_secret_changes_nothing():
    async def scenario(swarm: Swarm, address: str) -> None:
        invite = parse_invite(swarm.invite(address))
        forged = dataclasses.replace(invite, secret="guessed")
        async with PeerClient("node4", lambda: b"") as joiner:
            with pytest.raises(PeerError, match="^node1 refused: invalid invite secret$"):
                await joiner.call("node1", address, "join", {}, invite=forged)
            assert swarm.records[invite.invite_id].used_at is None
            assert "swarm_secret" in await joiner.call("node1", address, "join", {}, invite=invite)

    run_with_swarm(scenario)


def test_join_with_an_expired_or_unknown_invite_is_refused():
    async def scenario(swarm: Swarm, address: str) -> None:
        invite = parse_invite(swarm.invite(address, ttl=60))
        swarm.now += 61
        async with PeerClient("node4", lambda: b"") as joiner:
            with pytest.raises(PeerError, match="^node1 refused: this invite expired at .*: ask"):
                await joiner.call("node1", address, "join", {}, invite=invite)
            unknown = dataclasses.replace(invite, invite_id="0123456789abcdef")
            with pytest.raises(PeerError, match="^node1 refused: unknown invite: ask for a new"):
                await joiner.call("node1", address, "join", {}, invite=unknown)
        assert swarm.records[invite.invite_id].used_at is None

    run_with_swarm(scenario)


def test_join_needs_an_invite_not_the_swarm_secret():
    async def scenario(swarm: Swarm, address: str) -> None:
        member = PeerClient("node2", lambda: SECRET)
        assert (
            await refusal(member, address, "join") == "node1 refused: this request needs an invite"
        )

    run_with_swarm(scenario)


def test_join_answer_decrypts_only_with_the_invite_secret():
    async def scenario(swarm: Swarm, address: str) -> None:
        invite = parse_invite(swarm.invite(address))
        other = parse_invite(swarm.invite(address))
        body = b'{"address": "127.0.0.1:7004"}'
        key = join_request_key(invite.key)
        headers = sign(key, "POST", "/peer/join", body, "node4", time.time(), invite.invite_id)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://{address}/peer/join", data=body, headers=headers) as r,
        ):
            assert r.status == 200 and r.content_type == "application/octet-stream"
            sealed = await r.read()
        assert SECRET not in sealed and b"swarm_secret" not in sealed
        aad = headers["X-PC-Signature"].encode()
        for wrong_key, wrong_aad in [
            (join_response_key(other.key), aad),  # another invite's secret
            (join_request_key(invite.key), aad),  # the signing key is not the answer's key
            (join_response_key(invite.key), b"another request"),  # answer to another request
        ]:
            with pytest.raises(ValueError, match="cannot decrypt"):
                unseal(wrong_key, sealed, wrong_aad)
        answer = json.loads(unseal(join_response_key(invite.key), sealed, aad))
        assert answer["swarm_secret"] == SECRET.decode()

    run_with_swarm(scenario)


def test_invite_key_lookup_errors_become_refusals():
    def lookup(invite_id: str) -> bytes:
        raise InviteError("unknown invite: ask for a new one with `pc swarm invite`")

    server = PeerServer(
        lambda: SECRET,
        MEMBERS.__contains__,
        {},
        name="node1",
        invite_handlers={"join": echo},
        invite_key=lookup,
    )

    async def scenario(address: str) -> None:
        headers = sign(b"k", "POST", "/peer/join", b"{}", "node4", time.time(), "abcd")
        status, answer = await post(address, "join", b"{}", headers)
        assert status == 403 and answer["error"].startswith("unknown invite")

    run_with_server(scenario, server)


def test_server_refuses_ambiguous_routes():
    with pytest.raises(ValueError, match="both member and invite"):
        PeerServer(
            lambda: SECRET,
            bool,
            {"join": echo},
            name="node1",
            invite_handlers={"join": echo},
            invite_key=bytes,
        )
    with pytest.raises(ValueError, match="invite_key"):
        PeerServer(lambda: SECRET, bool, {}, name="node1", invite_handlers={"join": echo})


# -- the nonce cache -------------------------------------------------------------------


def test_nonce_cache_forgets_after_its_window_and_stays_bounded():
    now = [0.0]
    cache = NonceCache(ttl=60, limit=2, clock=lambda: now[0])
    assert cache.add("a") and not cache.add("a")
    now[0] = 30
    assert cache.add("b")
    with pytest.raises(OverflowError):
        cache.add("c")  # full of fresh nonces: refuse rather than forget one early
    now[0] = 60  # "a" ages out, "b" does not
    assert cache.add("c") and not cache.add("b")
    now[0] = 90
    assert cache.add("a")


def test_a_refused_body_does_not_lose_the_answer():
    """A request refused before its body is read still gets its answer: the server
    drops the unread body before closing (closing on it resets the connection)."""

    def send(address: str) -> bytes:
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            body = b"x" * (1 << 20)
            s.sendall(b"POST /peer/echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.3)  # the answer is sent, and the socket closed without linger
            s.sendall(body)
            got = b""
            while chunk := s.recv(1 << 16):
                got += chunk
            return got

    async def scenario(address: str) -> None:
        answer = await asyncio.to_thread(send, address)
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert b'"unsigned request"' in answer

    run_with_server(scenario)
