"""`logs`: the last lines of an app's log, and with `-f` new ones until the client leaves."""

from __future__ import annotations

import asyncio
import contextlib

from gitserver.commands.base import Args, Context, count

MAX_LINES = 10_000  # the most lines `-n` asks for
# Seconds a following client may take nothing of what is sent before it is
# dropped: each line waits until the client took the one before, so a client
# that stops reading holds one line of the node's memory, not the whole log.
FOLLOW_TIMEOUT = 30.0
BURST_LINES = 500  # lines sent in one write at most


async def logs(ctx: Context, args: Args) -> int:
    follow = args.flag("-f", "--follow")
    lines = args.option("-n", "--num")
    ptype = args.option("--ps")
    app = args.word("APP")
    args.done()
    n = count(lines, "-n", MAX_LINES) if lines is not None else 100
    stream = ctx.service.logs(ctx.user, app, n, ptype, follow)
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []

    def flush() -> None:
        if pending:
            data = b"".join(pending)
            pending.clear()
            with contextlib.suppress(ConnectionError):  # the client left: `closed` ends it
                ctx.channel.write(data)

    async def copy() -> None:
        # The lines that come together leave in one write, not one SSH packet (and
        # send) each: following a flooding app must not take the node's loop. Before
        # each burst the client must have taken the one before (back-pressure): one
        # that takes nothing for FOLLOW_TIMEOUT s is dropped, so a stopped reader
        # holds at most one burst of the node's memory.
        try:
            async for line in stream:
                if not pending:
                    try:
                        await asyncio.wait_for(ctx.channel.drain(), FOLLOW_TIMEOUT)
                    except TimeoutError:
                        why = f"stopped: this client took no log line for {FOLLOW_TIMEOUT:g} s"
                        ctx.channel.write_stderr(f" !     {why}\n".encode())
                        raise _Behind() from None
                    loop.call_soon(flush)  # once this burst of lines is taken
                pending.append(line.encode() + b"\n")
                if len(pending) >= BURST_LINES:
                    flush()
        finally:
            flush()

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
