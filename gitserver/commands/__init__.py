"""The SSH command surface, Dokku style: `noun:verb APP ...`, in ONE table.

Every command has a summary and a usage line (`COMMAND --help` prints them).
Output: `-----> doing X` for progress; ` !     reason` on stderr with a non-zero
exit for failure (2 for wrong arguments, else the PCError's `exit_code`).
Tables are aligned columns; `config` prints `KEY=VALUE` lines for scripts.
The handlers live in one module per noun; this module holds the table.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from gitserver.channel import Channel
from gitserver.commands import (
    apps,
    config,
    dashboard,
    domains,
    events,
    logs,
    ps,
    quota,
    releases,
    run,
    sharing,
    swarm,
    users,
)
from gitserver.commands.base import Args, Command, Context, parse_assignments, table
from gitserver.commands.swarm import node_table
from gitserver.service import NodeService
from peoplescloud.errors import PCError, UsageError

__all__ = [
    "COMMANDS",
    "Args",
    "Channel",
    "Command",
    "Context",
    "dispatch",
    "lookup",
    "node_table",
    "parse_assignments",
    "table",
]


async def _help(ctx: Context, args: Args) -> int:
    """The table itself, or one command's usage."""
    topic = args.words[0] if args.words else None
    if topic:
        cmd = lookup(topic)
        ctx.out(f"{cmd.name}: {cmd.summary}")
        ctx.out(cmd.usage)
        return 0
    ctx.out("Commands (ssh ... COMMAND ARGS; COMMAND --help for its usage):")
    for line in table(["", ""], [(c.name + " " + c.args, c.summary) for c in COMMANDS])[1:]:
        ctx.out("  " + line)
    ctx.out()
    ctx.out("Values with spaces need inner quotes, as ssh joins the words before")
    ctx.out("the server splits them again:  config:set APP 'MSG=\"hi there\"'")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("help", "[COMMAND]", "list the commands, or show one's usage", _help),
    Command("version", "", "show this node's People's Cloud version", apps.version),
    Command("apps", "", "list the apps you own or share, with your role", apps.apps),
    Command(
        "apps:create", "APP", "create an empty app, to set up before its first push", apps.create
    ),
    Command("apps:info", "APP", "show an app's details", apps.info),
    Command(
        "apps:destroy", "APP --confirm APP", "delete an app, its releases and config", apps.destroy
    ),
    Command(
        "apps:transfer", "APP USER", "give an app to another user (owner, admins)", sharing.transfer
    ),
    Command("sharing", "APP", "list who shares an app with its owner", sharing.sharing),
    Command("sharing:add", "APP USER", "let a user push, configure and run an app", sharing.add),
    Command("sharing:remove", "APP USER", "stop sharing an app with a user", sharing.remove),
    Command("domains", "APP", "list an app's custom domains", domains.domains),
    Command("domains:add", "APP HOST", "route a domain of yours to an app", domains.add),
    Command("domains:remove", "APP HOST", "stop routing a domain to an app", domains.remove),
    Command("certs", "APP", "show the TLS certificates of an app's domains", domains.certs),
    Command("keys", "", "list your SSH keys' fingerprints", users.keys),
    Command("keys:add", "< KEY.pub", "add an SSH key of yours, read from stdin", users.keys_add),
    Command(
        "keys:remove", "FINGERPRINT", "remove one of your keys (not the last)", users.keys_remove
    ),
    Command("users", "", "list the node's users (admins)", users.users),
    Command(
        "users:add",
        "NAME [--admin] < KEY.pub",
        "add a user, or a key of theirs (admins)",
        users.users_add,
    ),
    Command(
        "users:remove",
        "NAME",
        "remove a user: their keys stop working (admins)",
        users.users_remove,
    ),
    Command(
        "events", "[APP] [-n N]", "who did what and when (your apps; admins: all)", events.events
    ),
    Command("logs", "APP [-f] [-n N] [--ps TYPE]", "show (-f: follow) an app's logs", logs.logs),
    Command("ps", "APP", "list an app's processes", ps.ps),
    Command("ps:scale", "APP TYPE=N...", "set how many of each process type run", ps.scale),
    Command("ps:restart", "APP [TYPE]", "restart an app's processes", ps.restart),
    Command("ps:stop", "APP", "stop all of an app's processes", ps.stop),
    Command("ps:start", "APP", "start a stopped app again", ps.start),
    Command("config", "APP", "show an app's config vars as KEY=VALUE lines", config.config),
    Command("config:get", "APP KEY", "print one config var's value", config.get),
    Command("config:set", "APP KEY=VALUE...", "set config vars (restarts the app)", config.set_),
    Command("config:unset", "APP KEY...", "remove config vars (restarts the app)", config.unset),
    Command(
        "releases", "APP", "list an app's releases (* marks the current one)", releases.releases
    ),
    Command(
        "cron",
        "APP",
        "list an app's scheduled jobs (app.json cron) and their next run",
        releases.cron,
    ),
    Command(
        "resources", "APP", "show the memory and CPU of each process instance", quota.resources
    ),
    Command(
        "resources:set",
        "APP [TYPE] [memory=SIZE] [cpu=N]",
        "set what one instance may use, e.g. memory=256M cpu=0.5 (restarts the app)",
        quota.resources_set,
    ),
    Command("quota", "[USER]", "show your quotas and usage (admins: anyone's)", quota.quota),
    Command("quota:set", "USER NAME=N...", "admins: set a user's quotas", quota.set_),
    Command(
        "dashboard:login", "", "print a one-time link to the node's dashboard", dashboard.login
    ),
    Command("swarm:nodes", "", "list the swarm's members, their state and load", swarm.nodes),
    Command(
        "rollback", "APP VERSION", "run an earlier release again, as a new one", releases.rollback
    ),
    Command(
        "run",
        "APP CMD...|TYPE",
        "run a one-off command (or a Procfile type's) in the app's shell",
        run.run,
        verbatim=True,
    ),
)
_BY_NAME = {c.name: c for c in COMMANDS}


def lookup(name: str) -> Command:
    """The command called `name`; UsageError (with a close name, if any) otherwise."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, _BY_NAME, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise UsageError(f"unknown command {name!r}: {hint}`help` lists the commands")


async def dispatch(service: NodeService, user: str, argv: Sequence[str], channel: Channel) -> int:
    """Run `argv` (the command's words) for `user`; return the exit status."""

    def fail(reason: str, usage: str | None = None) -> None:
        text = f" !     {reason}\n" + (f"{usage}\n" if usage else "")
        channel.write_stderr(text.encode())

    try:
        cmd = lookup(argv[0])
    except UsageError as e:
        fail(str(e), "usage: COMMAND [ARGS...]")
        return e.exit_code
    words = list(argv[1:])
    asks_help = words[:1] == ["--help"] if cmd.verbatim else "--help" in words
    if asks_help:
        channel.write(f"{cmd.name}: {cmd.summary}\n{cmd.usage}\n".encode())
        return 0
    try:
        return await cmd.handler(Context(service, user, channel), Args(words))
    except UsageError as e:
        fail(str(e), cmd.usage)
        return e.exit_code
    except PCError as e:
        fail(str(e))
        return e.exit_code
