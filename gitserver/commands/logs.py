"""`logs`: the last lines of an app's log, and with `-f` new ones until the client leaves."""

from __future__ import annotations

import asyncio
import contextlib

from gitserver.channel import write_drained
from gitserver.commands.base import Args, Context, count

MAX_LINES = 10_000  # the most lines `-n` asks for
# Seconds a following client may take nothing of what is sent before it is
# dropped: each line waits until the client took the one before, so a client
# that stops reading holds one line of the node's memory, not the whole log.
FOLLOW_TIMEOUT = 30.0


async def logs(ctx: Context, args: Args) -> int:
    follow = args.flag("-f", "--follow")
    lines = args.option("-n", "--num")
    ptype = args.option("--ps")
    app = args.word("APP")
    args.done()
    n = count(lines, "-n", MAX_LINES) if lines is not None else 100
    stream = ctx.service.logs(ctx.user, app, n, ptype, follow)

    async def copy() -> None:
        async for line in stream:
            sending = write_drained(ctx.channel, line.encode() + b"\n")
            try:
                await asyncio.wait_for(sending, FOLLOW_TIMEOUT)
            except TimeoutError:
                why = f"stopped: this client took no log line for {FOLLOW_TIMEOUT:g} s"
                ctx.channel.write_stderr(f" !     {why}\n".encode())
                raise _Behind() from None

    copying = asyncio.ensure_future(copy())
    closed = asyncio.ensure_future(ctx.channel.wait_closed())
    try:
        # Stop as soon as the client leaves, even while no line comes.
        await asyncio.wait({copying, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not copying.done():
            copying.cancel()
        with contextlib.suppress(asyncio.CancelledError, _Behind):
            await copying
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    if not copying.cancelled():
        try:
            copying.result()  # a service error (NotFound, ...) surfaces here
        except _Behind:
            return 1
    return 0


class _Behind(Exception):
    """The client stopped taking lines: it is dropped."""
