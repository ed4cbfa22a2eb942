"""`sharing`, `sharing:add`, `sharing:remove` and `apps:transfer`."""

from __future__ import annotations

from gitserver.commands.base import Args, Context


async def sharing(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    who = await ctx.call(ctx.service.sharing, app)
    if not who:
        ctx.out(f"-----> {app} is shared with nobody: `sharing:add {app} USER` shares it")
    for name in who:
        ctx.out(name)
    return 0


async def add(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    other = args.word("USER")
    args.done()
    await ctx.call(ctx.service.sharing_add, app, other)
    ctx.out(f"-----> {other} may now push, configure, scale and run {app}")
    return 0


async def remove(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    other = args.word("USER")
    args.done()
    await ctx.call(ctx.service.sharing_remove, app, other)
    ctx.out(f"-----> {app} is no longer shared with {other}")
    return 0


async def transfer(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    other = args.word("USER")
    args.done()
    await ctx.call(ctx.service.transfer, app, other)
    ctx.out(f"-----> {app} now belongs to {other}")
    return 0
