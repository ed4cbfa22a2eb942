"""The SSH command surface, Dokku style: `noun:verb APP ...`, in ONE table.

Every command has a summary and a usage line (`COMMAND --help` prints them).
Output: `-----> doing X` for progress; ` !     reason` on stderr with a non-zero
exit for failure (2 for wrong arguments, else the PCError's `exit_code`).
Tables are aligned columns; `config` prints `KEY=VALUE` lines for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, TypeVar

from gitserver.service import NodeRow, NodeService
from swarm.errors import NotFound, PCError, UsageError

T = TypeVar("T")


class Channel(Protocol):
    """The client's end of one session, used on the event loop (an SSH channel;
    a fake in tests)."""

    async def read(self, n: int) -> bytes: ...  # stdin, b"" at EOF
    def write(self, data: bytes) -> None: ...  # stdout
    async def drain(self) -> None: ...  # until the client has taken what was written
    def write_stderr(self, data: bytes) -> None: ...
    async def wait_closed(self) -> None: ...  # returns when the client is gone


@dataclass
class Context:
    """What a handler works with: the node, who asks, and their channel."""

    service: NodeService
    user: str
    channel: Channel

    def out(self, line: str = "") -> None:
        self.channel.write(line.encode() + b"\n")

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """A blocking service method, off the event loop."""
        return await asyncio.to_thread(method, self.user, *args)


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a thread of its own, for work that lasts as long as a
    session (a push, a one-off process): the shared pool of `asyncio.to_thread`
    stays free for short calls."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(result)  # type: ignore[arg-type]
            else:
                future.set_exception(error)

    def work() -> None:
        try:
            result = function(*args)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(
        target=work, name=getattr(function, "__name__", "session"), daemon=True
    ).start()
    return await future


class Args:
    """The words after the command name. Options are taken out first (anywhere),
    then positionals left to right; leftovers or mistakes raise UsageError."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)

    def flag(self, *names: str) -> bool:
        found = False
        for name in names:
            while name in self.words:
                self.words.remove(name)
                found = True
        return found

    def option(self, *names: str) -> str | None:
        for name in names:
            if name in self.words:
                i = self.words.index(name)
                if i + 1 >= len(self.words):
                    raise UsageError(f"{name} needs a value")
                value = self.words[i + 1]
                del self.words[i : i + 2]
                return value
        return None

    def word(self, what: str) -> str:
        if not self.words:
            raise UsageError(f"missing {what}")
        if self.words[0].startswith("-"):
            raise UsageError(f"unknown option {self.words[0]}")
        return self.words.pop(0)

    def rest(self) -> list[str]:
        rest, self.words = self.words, []
        return rest

    def done(self) -> None:
        if self.words:
            what = "option" if self.words[0].startswith("-") else "argument"
            raise UsageError(f"unexpected {what} {self.words[0]!r}")


Handler = Callable[[Context, Args], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    name: str
    args: str  # the usage after the name: "APP KEY=VALUE..."
    summary: str
    handler: Handler
    verbatim: bool = False  # words after APP are passed on untouched (`run`)

    @property
    def usage(self) -> str:
        return f"usage: {self.name} {self.args}".rstrip()


# --- output helpers ------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    ]


def _words(items: Sequence[str]) -> str:
    return ", ".join(items)


# --- handlers --------------------------------------------------------------------------
async def _help(ctx: Context, args: Args) -> int:
    topic = args.words[0] if args.words else None
    if topic:
        cmd = _lookup(topic)
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


async def _version(ctx: Context, args: Args) -> int:
    args.done()
    try:
        version = metadata.version("peoplescloud")
    except metadata.PackageNotFoundError:
        version = "unknown"
    ctx.out(f"peoplescloud {version} (node {ctx.service.node_name})")
    return 0


async def _apps(ctx: Context, args: Args) -> int:
    args.done()
    rows = await ctx.call(ctx.service.apps)
    if not rows:
        ctx.out("-----> No apps yet: `git push` one to create it")
        return 0
    for line in table(
        ["NAME", "OWNER", "RELEASE", "STATE", "SCALE"],
        [(r.name, r.owner, r.release, r.state, r.scale or "-") for r in rows],
    ):
        ctx.out(line)
    return 0


async def _apps_info(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    info = await ctx.call(ctx.service.app_info, app)
    width = max((len(k) for k in info), default=0) + 1
    for key, value in info.items():
        ctx.out(f"{(key + ':').ljust(width)} {value}")
    return 0


async def _apps_destroy(ctx: Context, args: Args) -> int:
    confirm = args.option("--confirm")
    app = args.word("APP")
    args.done()
    if confirm != app:
        raise UsageError(
            f"this deletes {app}, its repo, releases and config: repeat with --confirm {app}"
        )
    ctx.out(f"-----> Destroying {app}")
    await ctx.call(ctx.service.destroy, app)
    return 0


async def _logs(ctx: Context, args: Args) -> int:
    follow = args.flag("-f", "--follow")
    lines = args.option("-n", "--num")
    ptype = args.option("--ps")
    app = args.word("APP")
    args.done()
    count = _count(lines, "-n") if lines is not None else 100
    stream = ctx.service.logs(ctx.user, app, count, ptype, follow)

    async def copy() -> None:
        async for line in stream:
            ctx.out(line)

    copying = asyncio.ensure_future(copy())
    closed = asyncio.ensure_future(ctx.channel.wait_closed())
    try:
        # Stop as soon as the client leaves, even while no line comes.
        await asyncio.wait({copying, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not copying.done():
            copying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await copying
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    if not copying.cancelled():
        copying.result()  # a service error (NotFound, ...) surfaces here
    return 0


async def _ps(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    rows = await ctx.call(ctx.service.ps, app)
    if not rows:
        ctx.out(f"-----> {app} runs no processes")
        return 0
    for line in table(
        ["PROCESS", "STATE", "RELEASE", "NODE", "SINCE", "COMMAND"],
        [
            (r.process, f"{r.state} ({r.why})" if r.why else r.state)
            + (r.release, r.node, r.since, r.command)
            for r in rows
        ],
    ):
        ctx.out(line)
    return 0


async def _ps_scale(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    counts = {}
    for word in args.rest():
        ptype, sep, n = word.partition("=")
        if not sep or not ptype:
            raise UsageError(f"{word!r} is not TYPE=N")
        counts[ptype] = _count(n, ptype)
    if not counts:
        raise UsageError("missing TYPE=N")
    ctx.out(f"-----> Scaling {app}: " + " ".join(f"{t}={n}" for t, n in counts.items()))
    await ctx.call(ctx.service.scale, app, counts)
    return 0


async def _ps_restart(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    ptype = args.word("TYPE") if args.words else None
    args.done()
    ctx.out(f"-----> Restarting {app}" + (f" ({ptype})" if ptype else ""))
    await ctx.call(ctx.service.restart, app, ptype)
    return 0


async def _ps_stop(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    ctx.out(f"-----> Stopping {app}")
    await ctx.call(ctx.service.stop, app)
    return 0


async def _ps_start(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    ctx.out(f"-----> Starting {app}")
    await ctx.call(ctx.service.start, app)
    return 0


async def _config(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    values = await ctx.call(ctx.service.config, app)
    for key in sorted(values):
        ctx.out(f"{key}={values[key]}")
    return 0


async def _config_get(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    key = args.word("KEY")
    args.done()
    values = await ctx.call(ctx.service.config, app)
    if key not in values:
        raise NotFound(f"{app} has no config var {key}")
    ctx.out(values[key])
    return 0


def parse_assignments(words: Sequence[str]) -> dict[str, str]:
    """`["A=1", "B=x=y"]` -> `{"A": "1", "B": "x=y"}`: split at the first `=`."""
    values = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UsageError(f"{word!r} is not KEY=VALUE")
        values[key] = value
    if not values:
        raise UsageError("missing KEY=VALUE")
    return values


async def _config_set(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    values = parse_assignments(args.rest())
    ctx.out(f"-----> Setting {_words(list(values))} on {app}")
    _restarting(ctx, await ctx.call(ctx.service.config_set, app, values))
    return 0


def _restarting(ctx: Context, release: str | None) -> None:
    if release is not None:
        ctx.out(f"-----> Release {release}: restarting the app's processes")


async def _config_unset(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    keys = args.rest()
    if not keys:
        raise UsageError("missing KEY")
    ctx.out(f"-----> Unsetting {_words(keys)} on {app}")
    _restarting(ctx, await ctx.call(ctx.service.config_unset, app, keys))
    return 0


async def _releases(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    rows = await ctx.call(ctx.service.releases, app)
    if not rows:
        ctx.out(f"-----> {app} has no releases yet: `git push` to make one")
        return 0
    swarm = any(r.pinned_on for r in rows)
    headers = ["", "VERSION", "CREATED", "BY", "SLUG", *(["PINNED ON"] if swarm else [])]
    for line in table(
        [*headers, "DESCRIPTION"],
        [
            ("*" if r.current else "", r.version, r.created, r.pushed_by, r.slug[:16])
            + ((",".join(r.pinned_on) or "-",) if swarm else ())
            + (r.description,)
            for r in rows
        ],
    ):
        ctx.out(line)
    return 0


async def _swarm_nodes(ctx: Context, args: Args) -> int:
    args.done()
    for line in node_table(await ctx.call(ctx.service.swarm_nodes)):
        ctx.out(line)
    return 0


def node_table(rows: Sequence[NodeRow]) -> list[str]:
    """The members of a swarm (`swarm:nodes` and `pc swarm status`)."""
    return table(
        ["NODE", "STATE", "ADDRESS", "SHARES", "USES", "INSTANCES"],
        [(r.name, r.state, r.address, r.shares, r.uses, str(r.instances)) for r in rows],
    )


async def _rollback(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    version = args.word("VERSION")
    args.done()
    if not re.fullmatch(r"v\d+", version):
        raise UsageError(f"{version!r} is not a release like v3 (see `releases {app}`)")
    ctx.out(f"-----> Rolling back {app} to {version}")
    release = await ctx.call(ctx.service.rollback, app, version)
    ctx.out(f"-----> Release {release} running")
    return 0


async def _run(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    argv = args.rest()
    if not argv:
        raise UsageError("missing CMD")
    loop = asyncio.get_running_loop()

    async def write_drained(data: bytes) -> None:
        ctx.channel.write(data)
        await ctx.channel.drain()

    def output(data: bytes) -> None:  # from the runtime's thread
        # Wait for the client to take it: a chatty command must not fill our memory.
        with contextlib.suppress(Exception):  # the client left: drop the rest
            asyncio.run_coroutine_threadsafe(write_drained(data), loop).result()

    def stdin() -> bytes:  # from the runtime's thread; b"" at EOF
        try:
            return asyncio.run_coroutine_threadsafe(ctx.channel.read(65536), loop).result()
        except RuntimeError:  # the loop is gone
            return b""

    # The client leaving ends the command (set `cancel`); so does its own end, which
    # lets the runtime's watcher thread go.
    cancel = threading.Event()
    gone = asyncio.ensure_future(ctx.channel.wait_closed())
    gone.add_done_callback(lambda _f: cancel.set())
    try:
        return await in_thread(ctx.service.run, ctx.user, app, argv, output, stdin, cancel)
    finally:
        gone.cancel()
        cancel.set()


COMMANDS: tuple[Command, ...] = (
    Command("help", "[COMMAND]", "list the commands, or show one's usage", _help),
    Command("version", "", "show this node's People's Cloud version", _version),
    Command("apps", "", "list your apps", _apps),
    Command("apps:info", "APP", "show an app's details", _apps_info),
    Command(
        "apps:destroy", "APP --confirm APP", "delete an app, its releases and config", _apps_destroy
    ),
    Command("logs", "APP [-f] [-n N] [--ps TYPE]", "show (-f: follow) an app's logs", _logs),
    Command("ps", "APP", "list an app's processes", _ps),
    Command("ps:scale", "APP TYPE=N...", "set how many of each process type run", _ps_scale),
    Command("ps:restart", "APP [TYPE]", "restart an app's processes", _ps_restart),
    Command("ps:stop", "APP", "stop all of an app's processes", _ps_stop),
    Command("ps:start", "APP", "start a stopped app again", _ps_start),
    Command("config", "APP", "show an app's config vars as KEY=VALUE lines", _config),
    Command("config:get", "APP KEY", "print one config var's value", _config_get),
    Command("config:set", "APP KEY=VALUE...", "set config vars (restarts the app)", _config_set),
    Command("config:unset", "APP KEY...", "remove config vars (restarts the app)", _config_unset),
    Command("releases", "APP", "list an app's releases (* marks the current one)", _releases),
    Command("swarm:nodes", "", "list the swarm's members, their state and load", _swarm_nodes),
    Command("rollback", "APP VERSION", "run an earlier release again, as a new one", _rollback),
    Command(
        "run", "APP CMD...", "run a one-off command in the app's environment", _run, verbatim=True
    ),
)
_BY_NAME = {c.name: c for c in COMMANDS}


def _lookup(name: str) -> Command:
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, _BY_NAME, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise UsageError(f"unknown command {name!r}: {hint}`help` lists the commands")


def _count(text: str, what: str) -> int:
    if not text.isdigit():
        raise UsageError(f"{what} needs a number >= 0, not {text!r}")
    return int(text)


async def dispatch(service: NodeService, user: str, argv: Sequence[str], channel: Channel) -> int:
    """Run `argv` (the command's words) for `user`; return the exit status."""

    def fail(reason: str, usage: str | None = None) -> None:
        text = f" !     {reason}\n" + (f"{usage}\n" if usage else "")
        channel.write_stderr(text.encode())

    try:
        cmd = _lookup(argv[0])
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
