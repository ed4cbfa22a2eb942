"""`dashboard:login`: a one-time link that logs you in to the node's dashboard."""

from __future__ import annotations

from gitserver.commands.base import Args, Context


async def login(ctx: Context, args: Args) -> int:
    args.done()
    link = await ctx.call(ctx.service.dashboard_login)
    ctx.out("-----> Open this link within 5 minutes; it works once (anyone holding it can):")
    ctx.out(link)
    return 0
