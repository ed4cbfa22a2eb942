"""One-off processes and logs."""

from __future__ import annotations

import asyncio
import shlex
import threading
from collections.abc import AsyncIterator, Callable

from peoplescloud.bridge import in_pool
from peoplescloud.desired import instance_spec
from peoplescloud.errors import PCError, UsageError
from peoplescloud.quotas import limit_of
from peoplescloud.runtime.base import Terminal
from peoplescloud.service.base import ServiceBase


class RunCommands(ServiceBase):
    def run(
        self,
        user: str,
        app: str,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None,
        cancel: threading.Event | None = None,
        terminal: Terminal | None = None,
    ) -> int:
        a = self._app(user, app)
        self._runs_here(user)
        if not argv:
            raise UsageError("run needs a command, e.g. `run APP python -V`")
        release = a.release()
        command = command_line(argv, release.processes)
        spec = instance_spec(
            a, release.version, f"run.{next(self._oneoff)}", command, self.node_name, self.settings
        )
        if not self._oneoffs.acquire(blocking=False):
            most = self.settings.shares.max_oneoffs
            raise PCError(
                f"the node runs {most} one-off processes, its limit ([shares] max_oneoffs); "
                "try again when one ends"
            )
        try:
            most = limit_of(self.state.read(), self.settings.quotas, user, "runs")
            with self._user_runs.hold(user, most):
                self.logbus.event(app, f"{user} runs {spec.process}: {command}")
                self._record(user, app, f"run {spec.process}")  # the command may hold a secret
                with self.reconciler.holding(spec):
                    argv = ["sh", "-c", command]
                    return self.runtime.run(spec, argv, output, stdin, cancel, terminal)
        finally:
            self._oneoffs.release()

    async def logs(
        self, user: str, app: str, lines: int, ptype: str | None, follow: bool
    ) -> AsyncIterator[str]:
        await in_pool(self._app, user, app)
        siblings = self.cluster.sibling_logs(app, lines, ptype, follow)
        if not follow:
            mine = await in_pool(self.logbus.tail, app, lines, ptype)
            for theirs in await asyncio.gather(*(_collect(s) for s in siblings)):
                mine += theirs
            mine.sort(key=lambda line: line[:20])  # by timestamp; stable within a node
            for line in mine[-lines:]:
                yield line
            return
        sources = [self.logbus.follow(app, ptype, backlog=lines), *siblings]
        async for line in merge(sources):
            yield line


def command_line(words: list[str], processes: dict[str, str]) -> str:
    """The line the app's shell runs for `run APP WORDS...`, as Heroku and Dokku make
    it: a Procfile type first stands for its command (`run APP console`), and
    `$VAR`, `&&` or globs work (`run APP 'echo $TOKEN'`).

    ssh joins the client's words with spaces and the server splits them again, so
    a word that still holds spaces was quoted on purpose (`run APP sh -c "'exit 5'"`):
    it stays one word. A lone word is the whole line (`run APP "'cd x && ls'"`),
    as in Heroku's CLI."""
    first, *rest = words
    if first in processes:
        first = processes[first]
    elif rest:
        first = _word(first)
    return " ".join([first, *(_word(w) for w in rest)])


def _word(word: str) -> str:
    return shlex.quote(word) if not word or any(c.isspace() for c in word) else word


async def _collect(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def merge(sources: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """Lines of several followed logs as they come; stopping stops them all."""
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

    async def pump(source: AsyncIterator[str]) -> None:
        async for line in source:
            await queue.put(line)

    tasks = [asyncio.ensure_future(pump(s)) for s in sources]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in tasks:
            task.cancel()
