"""The one bridge between worker threads and the daemon's event loop.

Blocking work (dulwich, docker-py, Raft commits) runs in threads; sessions and
peer calls live on the loop. `in_thread` runs a long blocking call in a thread
of its own and awaits it; `LoopBridge.call` runs a coroutine on the loop from a
worker thread and waits for its result. `every` runs blocking work in a
thread on a beat (the reconciler's passes, a swarm member's tick). `in_pool`
runs the short blocking calls of users' commands in a bounded pool of their
own: however many wait (on a slow engine, an app's lock), the loop's default
pool stays free for the node's own short calls, asyncssh's logins among them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

COMMAND_THREADS = 8
_COMMANDS = ThreadPoolExecutor(max_workers=COMMAND_THREADS, thread_name_prefix="command")


async def in_pool(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in the users' commands' pool (short blocking calls)."""
    return await asyncio.get_running_loop().run_in_executor(_COMMANDS, function, *args)


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a thread of its own, for work that lasts as long as a
    session (a push, a one-off process): the shared pool of `asyncio.to_thread`
    stays free for short calls."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def work() -> None:
        try:
            result = function(*args)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    name = getattr(function, "__name__", "session")
    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


class LoopBridge:
    """Coroutines on `loop`, awaited from worker threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait up to `timeout` s for its result;
        on a timeout it is cancelled and TimeoutError raised."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def soon(self, callback: Callable[[], object]) -> None:
        """Call `callback` on the loop (from any thread, e.g. Raft's)."""
        self.loop.call_soon_threadsafe(callback)


async def every(
    seconds: float,
    work: Callable[[], object],
    stop: asyncio.Event,
    wake: asyncio.Event | None = None,
    executor: Executor | None = None,
    steady: bool = False,
) -> None:
    """Run blocking `work` in a thread every `seconds` (at once when `wake` is set)
    until `stop`. Loops are separate so a slow one never delays another: a lease
    renewal never waits behind a slug fetch. `executor`: threads of its own (the
    default: the loop's shared pool), so that commands filling the pool cannot
    hold the work up either. `steady`: a round starts `seconds` after the last
    one started (at once if that one took longer), not `seconds` after it ended:
    a lease renewed every quarter lease stays so however slow its commits."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        wait = max(0.0, began + seconds - loop.time()) if steady else seconds
        await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if stop.is_set():
            return
        if wake is not None:
            wake.clear()
        began = loop.time()
        try:
            await loop.run_in_executor(executor, work)
        except Exception:  # one bad round must not end the daemon
            log.exception("%s failed", getattr(work, "__qualname__", work))
