"""`pc`: the host's command line. `pc init`, `pc daemon`, `pc doctor`,
`pc stack build`, `pc user add|list|remove`; the swarm package adds `pc swarm ...`.

Messages follow one shape: `-----> doing X` on stdout for progress,
` !     reason` on stderr with a non-zero exit for failure.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

from gitserver.server import load_or_create_host_key
from peoplescloud import names
from peoplescloud import settings as config
from peoplescloud.cluster import in_swarm, swarm_entry
from peoplescloud.errors import ConfigError, PCError
from peoplescloud.private import make_private
from peoplescloud.state import State, User

DEFAULT_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_rsa.pub")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def say(line: str) -> None:
    print(line, flush=True)


def read_public_key(path: Path) -> str:
    try:
        text = path.expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return names.check_public_key(text, str(path))


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
    names.check_user_name(args.admin_name)
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
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    s.config_file.write_text(config.to_toml(s))
    load_or_create_host_key(s.host_key)
    with State(s.state_file).change() as snap:
        snap.users[args.admin_name] = User(name=args.admin_name, keys=[admin_key], admin=True)
    make_private(s)
    say(f"-----> Node {s.name} created in {home}")
    say(f"       admin user {args.admin_name} with the key from {key_file}")
    say(f"       ssh {s.ssh_port}, router {s.router_port}, dashboard {s.dashboard_port}")
    say(f"       settings: {s.config_file}")
    say(
        "-----> Next: `pc daemon`, then `git remote add peoplescloud "
        f"ssh://pc@HOST:{s.ssh_port}/APP`"
    )


def cmd_daemon(args: argparse.Namespace) -> None:
    from peoplescloud.daemon import (
        run,  # the daemon's imports are heavy; other commands skip them
    )

    s = config.load(Path(args.home) if args.home else None)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    for chatty in ("asyncssh", "dulwich"):  # lines per session, push
        logging.getLogger(chatty).setLevel(logging.WARNING)
    run(s)


def cmd_doctor(args: argparse.Namespace) -> None:
    from peoplescloud.doctor import checks

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
    from peoplescloud.docker_engine import connect
    from peoplescloud.stack import (
        DEFAULT_STACK,
        STACKS,
        build_stack_images,
        default_cache_dir,
        stack_named,
    )

    names = list(STACKS) if args.all else [stack_named(args.name or DEFAULT_STACK).name]
    s = config.load(Path(args.home) if args.home else None)
    client = connect()
    if client is None:
        raise PCError("no Docker engine answers: `apt-get install docker.io` and start dockerd")
    say(f"-----> Stacks {', '.join(names)}: building what is missing, all at once")
    built = build_stack_images(
        client, s.build.stack_image, names, lambda line: say(f"       {line}"), default_cache_dir()
    )
    say(
        f"-----> Built {', '.join(built)}" if built else "-----> Every stack image is already there"
    )


def cmd_user_add(args: argparse.Namespace) -> None:
    s = _settings(args)
    names.check_user_name(args.name)
    key = read_public_key(Path(args.key))
    if in_swarm(s):  # the users live in the swarm's state, which the daemon holds
        body = {"name": args.name, "key": key, "admin": args.admin}
        swarm_entry().ask_daemon(s, "user_add", body)
    else:
        with State(s.state_file).change() as snap:
            snap.add_user_key(args.name, key, args.admin)
    say(f"-----> {args.name} can now push with the key from {args.key}")


def cmd_user_remove(args: argparse.Namespace) -> None:
    from peoplescloud.service.users import remove_user

    s = _settings(args)
    names.check_user_name(args.name)
    if in_swarm(s):
        swarm_entry().ask_daemon(s, "user_remove", {"name": args.name})
    else:
        with State(s.state_file).change() as snap:
            remove_user(snap, args.name)
            snap.add_event("", "", f"users:remove {args.name} (pc user remove)")
    say(f"-----> {args.name} removed: their keys no longer log in; their apps stay")


def cmd_user_list(args: argparse.Namespace) -> None:
    s = _settings(args)
    if in_swarm(s):
        users = swarm_entry().ask_daemon(s, "users", {})["users"]
    else:
        users = [asdict(u) for u in State(s.state_file).read().users.values()]
    for user in users:
        say(f"{user['name']}{' (admin)' if user['admin'] else ''}: {len(user['keys'])} key(s)")


def _settings(args: argparse.Namespace) -> config.Settings:
    return config.load(Path(args.home) if args.home else None)


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
    build = stack_sub.add_parser("build", help="build stack images (no-op for those present)")
    build.add_argument("name", nargs="?", help="bullseye, bookworm (default), trixie or forky")
    build.add_argument("--all", action="store_true", help="every stack, built at once")
    build.set_defaults(func=cmd_stack_build)

    user = sub.add_parser("user", help="who may push")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="let a key push and run commands")
    add.add_argument("name")
    add.add_argument("--key", required=True, help="the user's OpenSSH public key file")
    add.add_argument("--admin", action="store_true", help="may manage every app")
    add.set_defaults(func=cmd_user_add)
    user_sub.add_parser("list", help="users and their key counts").set_defaults(func=cmd_user_list)
    remove = user_sub.add_parser("remove", help="take a user's keys back (their apps stay)")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_user_remove)

    # `pc swarm create|invite|join|leave|status`; an install without the swarm
    # package has a lone node's commands only.
    with contextlib.suppress(PCError):
        swarm_entry().add_commands(sub)
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
