"""`ps` and `ps:scale`, `ps:restart`, `ps:stop`, `ps:start`."""

from __future__ import annotations

from gitserver.commands.base import Args, Context, parse_counts, table


async def ps(ctx: Context, args: Args) -> int:
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


async def scale(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    counts = parse_counts(args.rest(), "TYPE=N")
    await ctx.call(ctx.service.scale, app, counts)
    # Said once the service's checks passed, never before a refusal.
    ctx.out(f"-----> Scaled {app}: " + " ".join(f"{t}={n}" for t, n in counts.items()))
    return 0


async def restart(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    ptype = args.word("TYPE") if args.words else None
    args.done()
    ctx.out(f"-----> Restarting {app}" + (f" ({ptype})" if ptype else ""))
    await ctx.call(ctx.service.restart, app, ptype)
    return 0


async def stop(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    ctx.out(f"-----> Stopping {app}")
    await ctx.call(ctx.service.stop, app)
    return 0


async def start(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    ctx.out(f"-----> Starting {app}")
    await ctx.call(ctx.service.start, app)
    return 0
