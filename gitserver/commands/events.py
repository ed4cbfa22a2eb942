"""`events [APP] [-n N]`: the audit trail, oldest first."""

from __future__ import annotations

from gitserver.commands.base import Args, Context, count, table


async def events(ctx: Context, args: Args) -> int:
    n = args.option("-n", "--num")
    lines = count(n, "-n", 1000) if n is not None else 50
    app = args.word("APP") if args.words else None
    args.done()
    rows = await ctx.call(ctx.service.events, app, lines)
    if not rows:
        ctx.out("-----> No events yet")
        return 0
    for line in table(
        ["AT", "USER", "APP", "WHAT"], [(r.at, r.user or "-", r.app or "-", r.what) for r in rows]
    ):
        ctx.out(line)
    return 0
