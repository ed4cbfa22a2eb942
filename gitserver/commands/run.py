"""`run`: a one-off process of the app's current release, wired to the client's
stdin and stdout, in a thread of its own for as long as it lasts. The words become
one line of the app's shell (`peoplescloud.service.run.command_line`)."""

from __future__ import annotations

import asyncio
import threading

from gitserver.channel import write_from_thread
from gitserver.commands.base import Args, Context
from peoplescloud.bridge import LoopBridge, in_thread
from peoplescloud.errors import UsageError


async def run(ctx: Context, args: Args) -> int:
    app = args.word("APP")
    argv = args.rest()
    if not argv:
        raise UsageError("missing CMD")
    bridge = LoopBridge(asyncio.get_running_loop())
    # The client leaving ends the command (set `cancel`); so does its own end, which
    # lets the runtime's watcher thread go.
    cancel = threading.Event()

    def output(data: bytes) -> None:  # from the runtime's thread
        # Wait for the client to take it: a chatty command must not fill our memory.
        if cancel.is_set():  # the client left: drop the rest
            return
        try:
            write_from_thread(bridge, ctx.channel, data)
        except Exception:  # the client left, or took nothing for WRITE_TIMEOUT s
            cancel.set()

    def stdin() -> bytes:  # from the runtime's thread; b"" at EOF
        try:
            return bridge.call(ctx.channel.read(65536))
        except RuntimeError:  # the loop is gone
            return b""

    terminal = ctx.channel.terminal
    if terminal is not None:  # the command's pty makes the output, "\r\n" and all
        ctx.channel.cooked = False
    gone = asyncio.ensure_future(ctx.channel.wait_closed())
    gone.add_done_callback(lambda _f: cancel.set())
    try:
        service = ctx.service
        return await in_thread(service.run, ctx.user, app, argv, output, stdin, cancel, terminal)
    finally:
        gone.cancel()
        cancel.set()
