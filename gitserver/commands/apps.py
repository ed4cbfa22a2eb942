"""`apps`, `apps:create`, `apps:info`, `apps:destroy` and `version`."""

from __future__ import annotations

from importlib import metadata

from gitserver.commands.base import Args, Context, table
from peoplescloud.errors import UsageError


async def version(ctx: Context, args: Args) -> int:
    args.done()
    try:
        number = metadata.version("peoplescloud")
    except metadata.PackageNotFoundError:
        number = "unknown"
    ctx.out(f"peoplescloud {number} (node {ctx.service.node_name})")
    return 0


async def apps(ctx: Context, args: Args) -> int:
    args.done()
    rows = await ctx.call(ctx.service.apps)
    if not rows:
        ctx.out("-----> No apps yet: `git push` one (or `apps:create APP`) to create it")
        return 0
    for line in table(
        ["NAME", "OWNER", "ROLE", "RELEASE", "STATE", "SCALE"],
        [(r.name, r.owner, r.role or "-", r.release, r.state, r.scale or "-") for r in rows],
    ):
        ctx.out(line)
    return 0


async def create(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    await ctx.call(ctx.service.create, app)
    ctx.out(f"-----> Created {app}: set its config and scale, then push it")
    return 0


async def info(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    details = await ctx.call(ctx.service.app_info, app)
    width = max((len(k) for k in details), default=0) + 1
    for key, value in details.items():
        ctx.out(f"{(key + ':').ljust(width)} {value}")
    return 0


async def destroy(ctx: Context, args: Args) -> int:
    confirm = args.option("--confirm")
    app = args.word("APP")
    args.done()
    if confirm != app:
        raise UsageError(
            f"this deletes {app}, its repo, releases and config: repeat with --confirm {app}"
        )
    await ctx.call(ctx.service.destroy, app)
    ctx.out(f"-----> Destroyed {app}")
    return 0
