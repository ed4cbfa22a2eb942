"""`config`, `config:get`, `config:set`, `config:unset`: `KEY=VALUE` lines for scripts."""

from __future__ import annotations

from gitserver.commands.base import Args, Context, parse_assignments
from peoplescloud.errors import NotFound, UsageError


async def config(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    values = await ctx.call(ctx.service.config, app)
    for key in sorted(values):
        ctx.out(f"{key}={values[key]}")
    return 0


async def get(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    key = args.word("KEY")
    args.done()
    values = await ctx.call(ctx.service.config, app)
    if key not in values:
        raise NotFound(f"{app} has no config var {key}")
    ctx.out(values[key])
    return 0


async def set_(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    values = parse_assignments(args.rest())
    ctx.out(f"-----> Setting {', '.join(values)} on {app}")
    _restarting(ctx, await ctx.call(ctx.service.config_set, app, values))
    return 0


async def unset(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    keys = args.rest()
    if not keys:
        raise UsageError("missing KEY")
    ctx.out(f"-----> Unsetting {', '.join(keys)} on {app}")
    _restarting(ctx, await ctx.call(ctx.service.config_unset, app, keys))
    return 0


def _restarting(ctx: Context, release: str | None) -> None:
    """Say so when a config change made a release (none before the first push)."""
    if release is not None:
        ctx.out(f"-----> Release {release}: restarting the app's processes")
