"""`pc swarm create|invite|join|leave|remove|status`: a host pools its node with others.

Messages follow the CLI's shape: `-----> doing X` on stdout, failures raised as
PCError (the CLI prints ` !     reason` and exits non-zero). Commands that need
the swarm's state ask this node's own daemon, which holds it (`ask_daemon`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from peoplescloud import settings as config
from peoplescloud.errors import PCError
from peoplescloud.state import State
from swarm.identity import SwarmIdentity


def say(line: str) -> None:
    print(line, flush=True)


def add_commands(subparsers: Any) -> None:
    """Register `pc swarm ...` on the CLI's subparsers."""
    swarm = subparsers.add_parser("swarm", help="pool this node with others")
    swarm_sub = swarm.add_subparsers(dest="swarm_command", required=True)
    create = swarm_sub.add_parser("create", help="make this node the first member of a swarm")
    create.add_argument("--name", required=True, help="the swarm's name")
    create.set_defaults(func=cmd_create)
    invite = swarm_sub.add_parser("invite", help="print a one-time join token (last line)")
    invite.add_argument("--ttl", type=int, default=3600, help="seconds it stays valid")
    invite.set_defaults(func=cmd_invite)
    join = swarm_sub.add_parser("join", help="join the swarm a token invites to")
    join.add_argument("token")
    join.set_defaults(func=cmd_join)
    leave = swarm_sub.add_parser("leave", help="move this node's apps elsewhere, then leave")
    leave.add_argument("--timeout", type=int, default=120, help="seconds to wait for the move")
    leave.set_defaults(func=cmd_leave)
    remove = swarm_sub.add_parser(
        "remove", help="take a member that died for good out of the swarm (needs a majority)"
    )
    remove.add_argument("node", help="the dead member's name (`pc swarm status` lists them)")
    remove.set_defaults(func=cmd_remove)
    status = swarm_sub.add_parser("status", help="the members, their state and load")
    status.set_defaults(func=cmd_status)


def _settings(args: argparse.Namespace) -> config.Settings:
    return config.load(Path(args.home) if args.home else None)


def identity_of(s: config.Settings) -> SwarmIdentity:
    identity = SwarmIdentity.load(s.swarm_file)
    if identity is None:
        raise PCError("this node is in no swarm: `pc swarm create` or `pc swarm join TOKEN`")
    return identity


def ask_daemon(s: config.Settings, route: str, body: dict) -> Any:
    """A signed request to this node's own daemon (it holds the swarm's state)."""
    from swarm.peer import PeerUnreachable
    from swarm.peer_client import PeerClient

    identity = identity_of(s)
    address = f"{s.advertised}:{s.peer_port}"

    async def ask() -> Any:
        async with PeerClient(s.name, lambda: identity.secret_bytes) as client:
            return await client.call(s.name, address, route, body, timeout=30)

    try:
        return asyncio.run(ask())
    except PeerUnreachable:
        raise PCError(
            f"this node's daemon does not answer at {address}: start `pc daemon` first"
        ) from None


def cmd_create(args: argparse.Namespace) -> None:
    s = _settings(args)
    if s.swarm_file.exists():
        raise PCError(f"this node is already in swarm {identity_of(s).name}")
    identity = SwarmIdentity.create(args.name)
    identity.save(s.swarm_file)
    say(f"-----> Swarm {identity.name} ({identity.id}) created with {s.name} as its first member")
    say("       (re)start `pc daemon`: it brings this node's users and apps into the swarm")


def cmd_invite(args: argparse.Namespace) -> None:
    answer = ask_daemon(_settings(args), "invite", {"ttl": args.ttl})
    say(f"-----> One-time invite, valid for {args.ttl} s. On the new node: pc swarm join TOKEN")
    say(answer["token"])


def cmd_join(args: argparse.Namespace) -> None:
    from swarm.invite import parse_invite
    from swarm.peer_client import PeerClient

    s = _settings(args)
    if s.swarm_file.exists():
        raise PCError(f"this node is already in swarm {identity_of(s).name}")
    if State(s.state_file).read().apps:
        raise PCError("this node has apps: a node joins a swarm empty (move them, or destroy them)")
    invite = parse_invite(args.token)
    body = {
        "address": f"{s.advertised}:{s.peer_port}",
        "raft": f"{s.advertised}:{s.raft_port}",
        "memory_mb": s.shares.memory_mb,
        "cpus": s.shares.cpus,
        "max_apps": s.shares.max_apps,
    }

    async def join() -> Any:
        async with PeerClient(s.name, lambda: b"") as client:
            return await client.call(
                "the inviting node", invite.address, "join", body, timeout=30, invite=invite
            )

    answer = asyncio.run(join())
    SwarmIdentity(
        id=answer["id"],
        name=answer["name"],
        secret=answer["secret"],
        swarm_key=answer["swarm_key"],
        partners=list(answer["partners"]),
        sponsor=answer["sponsor"],
        sponsor_name=answer["sponsor_name"],
    ).save(s.swarm_file)
    say(f"-----> {s.name} joined swarm {answer['name']}: start `pc daemon` now")
    say("       (until it runs, the swarm counts it as a member that does not answer)")


def cmd_leave(args: argparse.Namespace) -> None:
    """Move this node's instances elsewhere, then leave; the node is alone again."""
    from swarm.peer_client import PeerClient

    s = _settings(args)
    identity = identity_of(s)
    ask_daemon(s, "leave", {})
    say("-----> Leaving: moving this node's instances to the other members")
    deadline = time.monotonic() + args.timeout
    while True:
        members = ask_daemon(s, "status", {})["members"]
        me = next(m for m in members if m["name"] == s.name)
        if me["instances"] == 0 and me["running"] == 0:
            break
        if time.monotonic() > deadline:
            raise PCError(
                f"{me['instances']} instance(s) could not move within {args.timeout} s "
                "(do the others have room?); this node stays, marked leaving"
            )
        time.sleep(1)
    leader = ask_daemon(s, "step_down", {})["leader"]  # Raft never removes its leader
    others = [m for m in members if m["name"] != s.name and m["state"] == "up"]
    others.sort(key=lambda m: m["raft"] != leader)  # the leader first
    if not others:
        raise PCError("no other member is up to take this node out of the swarm")

    async def remove() -> None:
        async with PeerClient(s.name, lambda: identity.secret_bytes) as client:
            await client.call(others[0]["name"], others[0]["address"], "remove", {}, timeout=30)

    asyncio.run(remove())
    s.swarm_file.unlink()
    with State(s.state_file).change() as snap:  # its apps now live in the swarm
        snap.apps.clear()
    say(f"-----> {s.name} left swarm {identity.name}; its daemon stops by itself")
    say("       start `pc daemon` again to run alone")


def cmd_remove(args: argparse.Namespace) -> None:
    """A member died for good: out of Raft, its pins and its instances elsewhere."""
    s = _settings(args)
    ask_daemon(s, "expel", {"node": args.node})
    say(f"-----> {args.node} removed from the swarm: its instances are placed on the others")
    say("       (to bring that machine back, `pc swarm join` it again with a new invite)")


def cmd_status(args: argparse.Namespace) -> None:
    from gitserver.commands import node_table
    from swarm.status import member_row

    answer = ask_daemon(_settings(args), "status", {})
    say(f"swarm {answer['name']} ({answer['id']}), leader {answer['leader'] or '-'}")
    for line in node_table([member_row(m) for m in answer["members"]]):
        say(line)
