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
from pathlib import Path

import asyncssh

from gitserver.server import load_or_create_host_key
from swarm import settings as config
from swarm.errors import ConfigError, PCError
from swarm.state import State, User, normalize_key

DEFAULT_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_rsa.pub")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def say(line: str) -> None:
    print(line, flush=True)


def read_public_key(path: Path) -> str:
    try:
        text = path.expanduser().read_text().strip()
        key = asyncssh.import_public_key(text)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except (asyncssh.KeyImportError, ValueError):
        raise ConfigError(
            f"{path} is not an OpenSSH public key (e.g. ~/.ssh/id_ed25519.pub)"
        ) from None
    return normalize_key(key.export_public_key().decode())


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
    s = config.Settings(
        home=home,
        **{
            k: v
            for k, v in dict(
                name=args.name,
                ssh_port=args.ssh_port,
                router_port=args.router_port,
                dashboard_port=args.dashboard_port,
                runtime=args.runtime,
                listen=args.listen,
                domain=args.domain,
            ).items()
            if v is not None
        },
    )
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
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # eight INFO lines per session
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
    s = config.load(Path(args.home) if args.home else None)
    config.check_user_name(args.name)
    key = read_public_key(Path(args.key))
    with State(s.state_file).change() as snap:
        if snap.user_for_key(key):
            raise PCError(f"that key already belongs to {snap.user_for_key(key)}")
        user = snap.users.setdefault(args.name, User(name=args.name))
        user.keys.append(key)
        user.admin = user.admin or args.admin
    say(f"-----> {args.name} can now push with the key from {args.key}")


def cmd_user_list(args: argparse.Namespace) -> None:
    s = config.load(Path(args.home) if args.home else None)
    for user in State(s.state_file).read().users.values():
        say(f"{user.name}{' (admin)' if user.admin else ''}: {len(user.keys)} key(s)")


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
