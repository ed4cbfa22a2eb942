"""`pc`: the host's command line. `pc init`, `pc daemon`, `pc doctor`,
`pc stack build`, `pc user add|list`.

Messages follow one shape: `-----> doing X` on stdout for progress,
` !     reason` on stderr with a non-zero exit for failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gitserver.server import load_or_create_host_key
from swarm import settings as config
from swarm.errors import ConfigError, PCError
from swarm.identity import SwarmIdentity
from swarm.state import State, User

DEFAULT_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_rsa.pub")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def say(line: str) -> None:
    print(line, flush=True)


def read_public_key(path: Path) -> str:
    try:
        text = path.expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return config.check_public_key(text, str(path))


def cmd_init(args: argparse.Namespace) -> None:
    home = Path(args.home) if args.home else config.default_home()
    if (home / "state.json").exists():
        raise PCError(
            f"a node already lives in {home}: use it, or set PC_HOME to another directory"
        )
    key_file = Path(args.admin_key) if args.admin_key else None
    if key_file is None:
        key_file = next(
            (Path(p).expanduser() for p in DEFAULT_KEYS if Path(p).expanduser().exists()), None
        )
    if key_file is None:
        raise ConfigError(
            "no admin key: pass --admin-key FILE, or create one with `ssh-keygen -t ed25519`"
        )
    admin_key = read_public_key(key_file)
    config.check_user_name(args.admin_name)
    # The same precedence as every other command: defaults <- PC_* env <- flags.
    s = config.load(
        home,
        name=args.name,
        ssh_port=args.ssh_port,
        router_port=args.router_port,
        dashboard_port=args.dashboard_port,
        runtime=args.runtime,
        listen=args.listen,
        domain=args.domain,
        peer_port=args.peer_port,
        raft_port=args.raft_port,
    )
    ipfs = dict(api=args.ipfs_api, api_port=args.ipfs_api_port, swarm_port=args.ipfs_swarm_port)
    s = replace(s, ipfs=replace(s.ipfs, **{k: v for k, v in ipfs.items() if v is not None}))
    home.mkdir(parents=True, exist_ok=True)
    s.config_file.write_text(config.to_toml(s))
    load_or_create_host_key(s.host_key)
    with State(s.state_file).change() as snap:
        snap.users[args.admin_name] = User(name=args.admin_name, keys=[admin_key], admin=True)
    say(f"-----> Node {s.name} created in {home}")
    say(f"       admin user {args.admin_name} with the key from {key_file}")
    say(f"       ssh {s.ssh_port}, router {s.router_port}, dashboard {s.dashboard_port}")
    say(f"       settings: {s.config_file}")
    say(
        "-----> Next: `pc daemon`, then `git remote add peoplescloud "
        f"ssh://pc@HOST:{s.ssh_port}/APP`"
    )


def cmd_daemon(args: argparse.Namespace) -> None:
    from swarm.daemon import serve  # the daemon's imports are heavy; other commands skip them

    s = config.load(Path(args.home) if args.home else None)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    for chatty in ("asyncssh", "httpx", "dulwich"):  # lines per session, kubo call, push
        logging.getLogger(chatty).setLevel(logging.WARNING)
    asyncio.run(serve(s))


def cmd_doctor(args: argparse.Namespace) -> None:
    from swarm.doctor import checks

    s = config.load(Path(args.home) if args.home else None)
    failed = 0
    for c in checks(s):
        mark = "ok  " if c.ok else ("MISS" if c.required else "opt ")
        say(f"{mark}  {c.name}: {c.detail}")
        if not c.ok:
            say(f"      fix: {c.fix}")
            failed += c.required
    if failed:
        raise PCError(f"{failed} required check(s) failed (see the `fix:` lines)")


def cmd_stack_build(args: argparse.Namespace) -> None:
    from swarm.docker_engine import connect
    from swarm.stack import build_stack_image, default_cache_dir

    s = config.load(Path(args.home) if args.home else None)
    client = connect()
    if client is None:
        raise PCError("no Docker engine answers: `apt-get install docker.io` and start dockerd")
    image = s.build.stack_image
    if build_stack_image(client, image, lambda line: say(f"       {line}"), default_cache_dir()):
        say(f"-----> Stack image {image} built")
    else:
        say(f"-----> Stack image {image} is already there")


def cmd_user_add(args: argparse.Namespace) -> None:
    s = _settings(args)
    config.check_user_name(args.name)
    key = read_public_key(Path(args.key))
    if s.swarm_file.exists():  # the users live in the swarm's state, which the daemon holds
        _ask_daemon(s, "user_add", {"name": args.name, "key": key, "admin": args.admin})
    else:
        with State(s.state_file).change() as snap:
            snap.add_user_key(args.name, key, args.admin)
    say(f"-----> {args.name} can now push with the key from {args.key}")


def cmd_user_list(args: argparse.Namespace) -> None:
    s = _settings(args)
    if s.swarm_file.exists():
        users = _ask_daemon(s, "users", {})["users"]
    else:
        users = [asdict(u) for u in State(s.state_file).read().users.values()]
    for user in users:
        say(f"{user['name']}{' (admin)' if user['admin'] else ''}: {len(user['keys'])} key(s)")


def _settings(args: argparse.Namespace) -> config.Settings:
    return config.load(Path(args.home) if args.home else None)


def _identity(s: config.Settings) -> SwarmIdentity:
    identity = SwarmIdentity.load(s.swarm_file)
    if identity is None:
        raise PCError("this node is in no swarm: `pc swarm create` or `pc swarm join TOKEN`")
    return identity


def _ask_daemon(s: config.Settings, route: str, body: dict) -> Any:
    """A signed request to this node's own daemon (it holds the swarm's state)."""
    from swarm.peer import PeerClient, PeerUnreachable

    identity = _identity(s)

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


def cmd_swarm_create(args: argparse.Namespace) -> None:
    s = _settings(args)
    if s.swarm_file.exists():
        raise PCError(f"this node is already in swarm {_identity(s).name}")
    identity = SwarmIdentity.create(args.name)
    identity.save(s.swarm_file)
    say(f"-----> Swarm {identity.name} ({identity.id}) created with {s.name} as its first member")
    say("       (re)start `pc daemon`: it brings this node's users and apps into the swarm")


def cmd_swarm_invite(args: argparse.Namespace) -> None:
    answer = _ask_daemon(_settings(args), "invite", {"ttl": args.ttl})
    say(f"-----> One-time invite, valid for {args.ttl} s. On the new node: pc swarm join TOKEN")
    say(answer["token"])


def cmd_swarm_join(args: argparse.Namespace) -> None:
    from swarm.invite import parse_invite
    from swarm.peer import PeerClient

    s = _settings(args)
    if s.swarm_file.exists():
        raise PCError(f"this node is already in swarm {_identity(s).name}")
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
            return await client.call("the inviting node", invite.address, "join", body,
                                     timeout=30, invite=invite)  # fmt: skip

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


def cmd_swarm_leave(args: argparse.Namespace) -> None:
    """Move this node's instances elsewhere, then leave; the node is alone again."""
    from swarm.peer import PeerClient

    s = _settings(args)
    identity = _identity(s)
    _ask_daemon(s, "leave", {})
    say("-----> Leaving: moving this node's instances to the other members")
    deadline = time.monotonic() + args.timeout
    while True:
        members = _ask_daemon(s, "status", {})["members"]
        me = next(m for m in members if m["name"] == s.name)
        if me["instances"] == 0 and me["running"] == 0:
            break
        if time.monotonic() > deadline:
            raise PCError(
                f"{me['instances']} instance(s) could not move within {args.timeout} s "
                "(do the others have room?); this node stays, marked leaving"
            )
        time.sleep(1)
    leader = _ask_daemon(s, "step_down", {})["leader"]  # Raft never removes its leader
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


def cmd_swarm_status(args: argparse.Namespace) -> None:
    from gitserver.commands import node_table
    from swarm.node import member_row

    answer = _ask_daemon(_settings(args), "status", {})
    say(f"swarm {answer['name']} ({answer['id']}), leader {answer['leader'] or '-'}")
    for line in node_table([member_row(m) for m in answer["members"]]):
        say(line)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc", description="People's Cloud node")
    p.add_argument("--home", help="the node's home (default $PC_HOME or the data dir)")
    sub = p.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create a node: config, host key, admin user")
    init.add_argument("--name", help="node name (default node1)")
    init.add_argument("--admin-key", help="admin's OpenSSH public key file")
    init.add_argument("--admin-name", default="admin", help="admin user name (default admin)")
    init.add_argument("--ssh-port", type=int)
    init.add_argument("--router-port", type=int)
    init.add_argument("--dashboard-port", type=int)
    init.add_argument("--peer-port", type=int, help="node-to-node API (swarm)")
    init.add_argument("--raft-port", type=int, help="the swarm's consensus")
    init.add_argument(
        "--ipfs-api", metavar="URL", help="use the kubo you run at this RPC API URL (swarm)"
    )
    init.add_argument("--ipfs-api-port", type=int, help="this node's kubo RPC API")
    init.add_argument("--ipfs-swarm-port", type=int, help="this node's kubo libp2p port")
    init.add_argument("--runtime", choices=config.RUNTIMES)
    init.add_argument("--listen", help="address the SSH server and router listen on")
    init.add_argument("--domain", help="web apps answer at APP.DOMAIN")
    init.set_defaults(func=cmd_init)

    sub.add_parser("daemon", help="run the node in the foreground").set_defaults(func=cmd_daemon)
    sub.add_parser("doctor", help="what is present or missing").set_defaults(func=cmd_doctor)

    stack = sub.add_parser("stack", help="the stack image builds and apps run in")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    stack_sub.add_parser("build", help="build the stack image (no-op if present)").set_defaults(
        func=cmd_stack_build
    )

    user = sub.add_parser("user", help="who may push")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="let a key push and run commands")
    add.add_argument("name")
    add.add_argument("--key", required=True, help="the user's OpenSSH public key file")
    add.add_argument("--admin", action="store_true", help="may manage every app")
    add.set_defaults(func=cmd_user_add)
    user_sub.add_parser("list", help="users and their key counts").set_defaults(func=cmd_user_list)

    swarm = sub.add_parser("swarm", help="pool this node with others")
    swarm_sub = swarm.add_subparsers(dest="swarm_command", required=True)
    create = swarm_sub.add_parser("create", help="make this node the first member of a swarm")
    create.add_argument("--name", required=True, help="the swarm's name")
    create.set_defaults(func=cmd_swarm_create)
    invite = swarm_sub.add_parser("invite", help="print a one-time join token (last line)")
    invite.add_argument("--ttl", type=int, default=3600, help="seconds it stays valid")
    invite.set_defaults(func=cmd_swarm_invite)
    join = swarm_sub.add_parser("join", help="join the swarm a token invites to")
    join.add_argument("token")
    join.set_defaults(func=cmd_swarm_join)
    leave = swarm_sub.add_parser("leave", help="move this node's apps elsewhere, then leave")
    leave.add_argument("--timeout", type=int, default=120, help="seconds to wait for the move")
    leave.set_defaults(func=cmd_swarm_leave)
    status = swarm_sub.add_parser("status", help="the members, their state and load")
    status.set_defaults(func=cmd_swarm_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except PCError as e:
        print(f" !     {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
