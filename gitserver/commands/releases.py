"""`releases` and `rollback`."""

from __future__ import annotations

import re

from gitserver.commands.base import Args, Context, table
from peoplescloud.errors import UsageError


async def releases(ctx: Context, args: Args) -> int:
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


async def rollback(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    version = args.word("VERSION")
    args.done()
    if not re.fullmatch(r"v[0-9]+", version):
        raise UsageError(f"{version!r} is not a release like v3 (see `releases {app}`)")
    release = await ctx.call(ctx.service.rollback, app, version)
    ctx.out(f"-----> Rolled back {app} to {version}")
    ctx.out(f"-----> Release {release} running")
    return 0


async def cron(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    rows = await ctx.call(ctx.service.cron, app)
    if not rows:
        ctx.out(f'-----> {app} has no cron jobs: add "cron" to its app.json and push')
        return 0
    for line in table(
        ["ID", "SCHEDULE", "NEXT RUN (UTC)", "COMMAND"],
        [(r.id, r.schedule, r.next_run or "never", r.command) for r in rows],
    ):
        ctx.out(line)
    return 0
