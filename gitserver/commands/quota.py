"""`quota`, `quota:set` (admins), `resources`, `resources:set`."""

from __future__ import annotations

from gitserver.commands.base import Args, Context, parse_counts, table
from peoplescloud.errors import UsageError
from peoplescloud.resources import parse_cpus, parse_memory


async def quota(ctx: Context, args: Args) -> int:
    who = args.word("USER") if args.words else None
    args.done()
    rows = await ctx.call(ctx.service.quota, who)
    for line in table(
        ["QUOTA", "USED", "LIMIT", "COUNTS", "LIMIT FROM"],
        [(r.name, str(r.used), str(r.limit), r.what, r.source) for r in rows],
    ):
        ctx.out(line)
    return 0


async def set_(ctx: Context, args: Args) -> int:
    who = args.word("USER")
    values = parse_counts(args.rest(), "NAME=N")
    await ctx.call(ctx.service.quota_set, who, values)
    ctx.out(f"-----> Quota of {who}: " + " ".join(f"{k}={v}" for k, v in values.items()))
    return 0


async def resources(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    args.done()
    rows = await ctx.call(ctx.service.resources, app)
    for line in table(
        ["TYPE", "MEMORY", "CPU", "FROM"],
        [(r.ptype, f"{r.memory_mb} MB", f"{r.cpus:g}", r.source) for r in rows],
    ):
        ctx.out(line)
    return 0


async def resources_set(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    ptype = args.word("TYPE") if args.words and "=" not in args.words[0] else None
    memory: int | None = None
    cpus: float | None = None
    for word in args.rest():
        name, sep, value = word.partition("=")
        if name == "memory" and sep:
            memory = parse_memory(value)
        elif name in ("cpu", "cpus") and sep:
            cpus = parse_cpus(value)
        else:
            raise UsageError(f"{word!r} is neither memory=SIZE nor cpu=N")
    if memory is None and cpus is None:
        raise UsageError("missing memory=SIZE or cpu=N")
    release = await ctx.call(ctx.service.resources_set, app, ptype, memory, cpus)
    said = " ".join(
        ([f"memory={memory} MB"] if memory is not None else [])
        + ([f"cpu={cpus:g}"] if cpus is not None else [])
    )
    ctx.out(f"-----> Resources of {app} ({ptype or 'every type'}): {said}")
    if release is not None:
        ctx.out(f"-----> Release {release}: restarting the app's processes")
    return 0
