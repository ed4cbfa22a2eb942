"""`domains`, `domains:add`, `domains:remove` and `certs`: an app's custom
domains and their TLS certificates."""

from __future__ import annotations

from gitserver.commands.base import Args, Context, table


async def domains(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    hosts = await ctx.call(ctx.service.domains, app)
    if not hosts:
        ctx.out(f"-----> {app} has no custom domain: `domains:add {app} HOST` adds one")
    for host in hosts:
        ctx.out(host)
    return 0


async def add(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    host = args.word("HOST")
    args.done()
    await ctx.call(ctx.service.domains_add, app, host)
    host = host.strip().lower().rstrip(".")
    ctx.out(f"-----> {host} now routes to {app}: point its DNS at this swarm's nodes")
    ctx.out(f"-----> its certificate is ordered in the background: `certs {app}` shows it")
    return 0


async def remove(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    host = args.word("HOST")
    args.done()
    await ctx.call(ctx.service.domains_remove, app, host)
    ctx.out(f"-----> {host.strip().lower().rstrip('.')} no longer routes to {app}")
    return 0


async def certs(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    rows = await ctx.call(ctx.service.certs, app)
    if not rows:
        ctx.out(f"-----> {app} has no custom domain, so no certificate")
        return 0
    for line in table(
        ["HOST", "ISSUER", "NOT AFTER", "STATUS"],
        [(r.host, r.issuer, r.not_after, r.status) for r in rows],
    ):
        ctx.out(line)
    return 0
