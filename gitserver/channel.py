"""The client's end of one SSH session, as the commands and git see it, and the ONE
way a worker thread writes to it: write, wait until the client has taken it
(backpressure), and give up after a timeout (the client is treated as gone)."""

from __future__ import annotations

from typing import Protocol

from peoplescloud.bridge import LoopBridge
from peoplescloud.runtime.base import Terminal

WRITE_TIMEOUT = 60.0  # seconds a client may take nothing of what is sent


class Channel(Protocol):
    """The client's end of one session, used on the event loop (an SSH channel;
    a fake in tests)."""

    # The pty the client asked for (`ssh -t`), else None; `run` gives it to the command.
    terminal: Terminal | None
    cooked: bool  # "\n" goes out as "\r\n" (under a pty, until a command takes it over)

    async def read(self, n: int) -> bytes: ...  # stdin, b"" at EOF
    def write(self, data: bytes) -> None: ...  # stdout
    async def drain(self) -> None: ...  # until the client has taken what was written
    def write_stderr(self, data: bytes) -> None: ...
    async def wait_closed(self) -> None: ...  # returns when the client is gone


async def write_drained(channel: Channel, data: bytes) -> None:
    """Write `data` and wait until the client has taken it."""
    channel.write(data)
    await channel.drain()


def write_from_thread(
    bridge: LoopBridge, channel: Channel, data: bytes, timeout: float | None = None
) -> None:
    """`write_drained` from a worker thread, so a big pack or a chatty command cannot
    fill our memory. A client that takes nothing for `timeout` seconds (default
    WRITE_TIMEOUT) is treated as gone (ConnectionError): it cannot hold a push or a
    process open."""
    timeout = WRITE_TIMEOUT if timeout is None else timeout
    try:
        bridge.call(write_drained(channel, data), timeout)
    except TimeoutError:
        raise ConnectionError(f"the client took nothing for {timeout:g} s") from None
