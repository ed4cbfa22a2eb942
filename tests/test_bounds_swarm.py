"""The swarm's ports bound what a stranger can make them buffer: junk on the Raft
port, a big unsigned body on the peer API. Each test fails without its bound."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import threading
import time

from swarm.peer import H_BODY, H_NONCE, H_SENDER, H_SIGNATURE, H_TIMESTAMP
from tests.test_peer import member_server, run_with_server
from tests.test_replicated import Swarm, add_app, swarm  # noqa: F401  (the fixture)

JUNK_MOST = 64 * 1024 * 1024  # what the junk sender may send at most, whatever happens


def test_junk_on_the_raft_port_is_dropped_and_changes_still_commit(swarm: Swarm) -> None:  # noqa: F811
    """A stranger announcing a 2 GB message and streaming junk: the connection is
    dropped after a few KB (nothing decrypted yet), and the one-node swarm goes
    on committing changes meanwhile."""
    (member,) = swarm.start_all(1)
    host, port = member.members()[0].rsplit(":", 1)
    sent = 0
    dropped = threading.Event()

    def junk() -> None:
        nonlocal sent
        with socket.create_connection((host, int(port)), timeout=5) as s:
            chunk = os.urandom(64 * 1024)
            deadline = time.monotonic() + 5
            try:
                s.sendall(struct.pack("i", 2**31 - 1))
                while time.monotonic() < deadline and sent < JUNK_MOST:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                dropped.set()

    sender = threading.Thread(target=junk)
    sender.start()
    try:
        time.sleep(0.3)  # the junk flows
        started = time.monotonic()
        for i in range(3):
            add_app(member, f"app{i}")  # NoQuorum (after 3 s) if the raft thread is stuck
        assert time.monotonic() - started < 3
    finally:
        sender.join(15)
    assert dropped.is_set(), f"the junk connection was kept ({sent} bytes taken)"
    assert sent < 16 * 1024 * 1024  # the kernel's buffers, not ours
    assert {"app0", "app1", "app2"} <= set(member.read().apps)


def test_raft_files_are_private(swarm: Swarm) -> None:  # noqa: F811
    (member,) = swarm.start_all(1)
    add_app(member, "mybot")
    data = swarm.root / member.members()[0]
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    journal = data / "raft.journal"
    assert journal.exists() and stat.S_IMODE(journal.stat().st_mode) == 0o600


def test_peer_api_refuses_a_forged_request_before_reading_its_body() -> None:
    """A stranger's request naming a member, with a big body announced: refused
    at once, from its headers, not after the node read (and kept) the body."""

    async def scenario(address: str) -> None:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        forged = {
            H_SENDER: "node2",
            H_TIMESTAMP: str(int(time.time())),
            H_NONCE: "0" * 32,
            H_SIGNATURE: "0" * 64,
            H_BODY: "0" * 64,
        }
        head = "".join(f"{k}: {v}\r\n" for k, v in forged.items())
        writer.write(
            (
                f"POST /peer/echo HTTP/1.1\r\nHost: {address}\r\nContent-Length: 900000\r\n"
                f"Content-Type: application/json\r\n{head}\r\n"
            ).encode()
            + b"x" * 1000  # the body barely started
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)  # no more body is coming
        writer.close()
        assert status.startswith(b"HTTP/1.1 401")

    run_with_server(scenario, member_server())
