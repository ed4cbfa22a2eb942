"""Per-app log aggregation: what `logs APP [-f] [-n N] [--ps TYPE]` reads.

Each app has one file, `<app>.log`, of lines "<UTC ts> app[<source>]: <text>",
where the source is a process ("web.1") or "pc" for the node's own events
("starting web.1 (v3)"). A pump thread per instance follows the runtime's logs
and appends them; its runtime cursor is saved in `<app>.cursors.json` (at most
once a second, and when the pump or the bus ends), so a restarted daemon
resumes where the last one stopped: nothing lost, nothing repeated.

After a crash the saved cursor is behind: the runtime sends again what was
pumped since the save. Saving the cursor with every line would cost a file
replace per line under floods and still leave a window between the two
writes. Instead each cursor is saved with where its line ends in the log
(inode, offset; taken under the lock of the append, so they always agree):
the process's lines after that point are exactly the first lines sent again,
and the pump skips them (for as long as they match).

An app flooding its log must not slow the node or the other apps: each app
has its own lock and keeps its file open (reopened after a rotation), so an
append is one write, and reads (`tail`) hold the lock only to open the files.

Followers (`follow`) live on an asyncio loop. Each has a bounded hand-off:
pumps add lines to it and wake the loop once for as many lines as arrive
before the reader takes them (not once per line: a flood must not fill the
loop with callbacks). A reader that cannot keep up skips lines (it is told
how many), so a slow reader never slows a pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from peoplescloud.processes import ptype_of
from peoplescloud.runtime.base import InstanceKey, Runtime

log = logging.getLogger(__name__)

EVENT_SOURCE = "pc"
SAVE_EVERY = 1.0  # seconds between cursor saves of a busy pump
MAX_LOG_BYTES = 5 * 1024 * 1024  # then <app>.log becomes <app>.log.1 (one kept)
FOLLOW_QUEUE = 1000  # lines a follower may lag behind before it skips
TAIL_BLOCK = 64 * 1024  # `tail` reads the files backwards in blocks of this size


@dataclass(frozen=True)
class _Mark:
    """How far a pump got: the runtime's cursor of its last line, and where that
    line ends in the app's log (the file's inode, the offset after the line;
    0, 0 when unknown)."""

    cursor: str
    inode: int = 0
    offset: int = 0


class _Handoff:
    """Lines from pump threads to one reader on its loop: at most `limit` waiting,
    the rest skipped and counted; one wake-up of the loop in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._lock = threading.Lock()  # held for a deque operation, nothing more
        self._lines: deque[str] = deque()
        self._ready = asyncio.Event()
        self._woken = False  # a wake-up is on its way to the loop
        self._ended = False
        self.skipped = 0

    def put(self, line: str) -> None:
        """From any thread. Raises RuntimeError when the reader's loop is closed."""
        with self._lock:
            if self._ended:
                return
            if self.skipped and len(self._lines) < self._limit:
                n = self.skipped
                self._lines.append(f"... {n} line{'s' if n > 1 else ''} skipped")
                self.skipped = 0
            if len(self._lines) >= self._limit:
                self.skipped += 1
                return
            self._lines.append(line)
            if self._woken:
                return
            self._woken = True
        self._loop.call_soon_threadsafe(self._ready.set)

    def end(self) -> None:
        """From any thread: the reader gets None next (what it had not read is dropped)."""
        with self._lock:
            self._ended = True
            self._lines.clear()
            woken, self._woken = self._woken, True
        if not woken:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody reads
                self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> str | None:
        """On the reader's loop: the next line, or None once ended."""
        while True:
            with self._lock:
                if self._lines:
                    return self._lines.popleft()
                if self._ended:
                    return None
                self._woken = False
            self._ready.clear()
            await self._ready.wait()

    def qsize(self) -> int:
        return len(self._lines)


@dataclass(eq=False)
class _Follower:
    queue: _Handoff
    ptype: str | None


@dataclass(eq=False)
class _AppLog:
    """One app's log: its lock, its file kept open for appends, the pumps' marks
    and the followers. Everything here is guarded by `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    file: BinaryIO | None = None
    inode: int = 0
    size: int = 0  # of the open file: where the next line starts
    cursors: dict[str, _Mark] | None = None  # loaded on first use
    followers: list[_Follower] = field(default_factory=list)
    gone: bool = False  # forgotten: whoever holds it takes the app's new one

    def close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class LogBus:
    """Every app's log of this node, fed by pumps over `runtime.logs`."""

    def __init__(self, logs_dir: Path, runtime: Runtime) -> None:
        self.logs_dir = Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = runtime
        # Guards the registries below (never a file): taken before an app's lock.
        self._lock = threading.Lock()
        self._pumps: dict[InstanceKey, threading.Thread] = {}
        self._logs: dict[str, _AppLog] = {}
        self._closed = False

    @property
    def _followers(self) -> dict[str, list[_Follower]]:
        return {app: applog.followers for app, applog in list(self._logs.items())}

    def event(self, app: str, text: str) -> None:
        """Record something the node did to `app` ("starting web.1 (v3)")."""
        self.line(app, EVENT_SOURCE, text)

    def line(self, app: str, source: str, text: str) -> None:
        """Append one line as `app[source]`: an event, or the output of a one-off the
        node runs for the app itself (a release phase, a cron job)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        while True:
            applog = self._log(app)
            with applog.lock:
                if not applog.gone:
                    self._append(app, applog, f"{stamp} app[{source}]: {text}")
                    return

    def watch(self, key: InstanceKey) -> None:
        """Make sure a pump follows this instance (no-op when one already does)."""
        with self._lock:
            if self._closed or (key in self._pumps and self._pumps[key].is_alive()):
                return
            name = f"logs-{key.app}-{key.process}-{key.release}"
            pump = threading.Thread(target=self._pump, args=(key,), name=name, daemon=True)
            self._pumps[key] = pump
            pump.start()

    def tail(self, app: str, n: int, ptype: str | None = None) -> list[str]:
        """The last `n` lines of the app (of one process type, or "pc" for events)."""
        applog = self._log(app)
        with applog.lock:  # only to open the files: the reading goes on without it
            files = self._open_for_tail(app) if n > 0 else []
        return _last_lines(files, n, ptype)

    async def follow(
        self, app: str, ptype: str | None = None, backlog: int = 0
    ) -> AsyncIterator[str]:
        """Lines of the app as they are appended, until the app is forgotten or the bus
        closes; `backlog` of the last lines first, with no gap or repeat between them."""
        follower = _Follower(_Handoff(asyncio.get_running_loop(), FOLLOW_QUEUE), ptype)
        applog = self._log(app)
        with applog.lock:
            if self._closed or applog.gone:
                return
            applog.followers.append(follower)
            files = self._open_for_tail(app) if backlog > 0 else []  # up to here: the backlog
        try:
            if files:  # read in a thread: a big backlog must not hold up the loop
                for earlier in await asyncio.to_thread(_last_lines, files, backlog, ptype):
                    yield earlier
            while (line := await follower.queue.get()) is not None:
                yield line
        finally:
            with applog.lock:
                if follower in applog.followers:
                    applog.followers.remove(follower)

    def knows(self, app: str) -> bool:
        """Whether this node keeps a log of `app`."""
        return self._path(app, ".log").exists()

    def forget(self, app: str) -> None:
        """The app was destroyed: stop its pumps and followers, delete its logs."""
        with self._lock:
            for key in [k for k in self._pumps if k.app == app]:
                del self._pumps[key]  # the pump sees it is no longer current and ends
            applog = self._logs.pop(app, None) or _AppLog()
        with applog.lock:
            applog.gone = True
            applog.close_file()
            for follower in applog.followers:
                follower.queue.end()
            applog.followers.clear()
            for suffix in (".log", ".log.1", ".cursors.json"):
                self._path(app, suffix).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop every pump (they write nothing more) and save their cursors."""
        with self._lock:
            self._closed = True
            logs = list(self._logs.items())
        for app, applog in logs:
            with applog.lock:
                if applog.cursors is not None:
                    self._save(app, applog)
                applog.close_file()
                for follower in applog.followers:
                    follower.queue.end()
                applog.followers.clear()

    # -- pumps --

    def _pump(self, key: InstanceKey) -> None:
        """Follow one instance's output into its app's log. The saved cursor is per
        process: a new release's instance of `web.1` resumes after the old one's."""
        app, process, me = key.app, key.process, threading.current_thread()
        applog = self._log(app)
        last_save = time.monotonic()
        try:
            with applog.lock:
                mark = self._app_cursors(app, applog).get(process)
                written = self._written_after(app, process, mark)  # what comes again
            for line in self.runtime.logs(key, follow=True, cursor=mark.cursor if mark else None):
                text = f"{line.timestamp} app[{process}]: {line.text}"
                with applog.lock:
                    if self._closed or applog.gone or self._pumps.get(key) is not me:
                        return
                    if written and written[0][0] == text:  # in the log already
                        _, inode, offset = written.popleft()
                    else:
                        written.clear()
                        inode, offset = self._append(app, applog, text)
                    self._app_cursors(app, applog)[process] = _Mark(line.cursor, inode, offset)
                    if time.monotonic() - last_save >= SAVE_EVERY:
                        self._save(app, applog)
                        last_save = time.monotonic()
        except Exception:  # a broken log stream must not take the daemon down
            log.exception("following the logs of %s %s", app, process)
        finally:
            with self._lock:
                current = self._pumps.get(key) is me
                if current:
                    del self._pumps[key]
            if current:
                with applog.lock:
                    if not (self._closed or applog.gone):
                        self._save(app, applog)

    def _log(self, app: str) -> _AppLog:
        with self._lock:
            applog = self._logs.get(app)
            if applog is None:
                applog = self._logs[app] = _AppLog()
            return applog

    # -- under the app's lock --

    def _open_for_tail(self, app: str) -> list[tuple[BinaryIO, int]]:
        """The app's files, oldest first, each with its size now: what is in them up
        to there is the tail, whatever is appended or rotated afterwards."""
        files: list[tuple[BinaryIO, int]] = []
        for path in (self._path(app, ".log.1"), self._path(app, ".log")):
            with contextlib.suppress(FileNotFoundError):
                f = open(path, "rb")  # noqa: SIM115 - closed by _last_lines
                files.append((f, os.fstat(f.fileno()).st_size))
        return files

    def _path(self, app: str, suffix: str) -> Path:
        return self.logs_dir / f"{app}{suffix}"

    def _append(self, app: str, applog: _AppLog, line: str) -> tuple[int, int]:
        """Append a line; returns where it ends: (the file's inode, the offset after it)."""
        path = self._path(app, ".log")
        if applog.file is None:
            applog.file = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open
            st = os.fstat(applog.file.fileno())
            applog.inode, applog.size = st.st_ino, st.st_size
        data = line.encode("utf-8") + b"\n"
        view = memoryview(data)
        while view:
            view = view[applog.file.write(view) or 0 :]
        applog.size += len(data)
        inode, end = applog.inode, applog.size
        if end > MAX_LOG_BYTES:
            applog.close_file()
            path.replace(self._path(app, ".log.1"))
        for follower in list(applog.followers):
            if _matches(line, follower.ptype):
                try:
                    follower.queue.put(line)
                except RuntimeError:  # its loop is closed: the reader is gone
                    applog.followers.remove(follower)
        return inode, end

    def _written_after(
        self, app: str, process: str, mark: _Mark | None
    ) -> deque[tuple[str, int, int]]:
        """The process's lines in the log after `mark` (each with where it ends):
        pumped after the last save, by a daemon that did not live to save again."""
        out: deque[tuple[str, int, int]] = deque()
        if mark is None or not mark.inode:
            return out
        found = False  # the file the mark is in: it and what follows it
        for path in (self._path(app, ".log.1"), self._path(app, ".log")):
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode == mark.inode:
                    found = True
                    f.seek(mark.offset)
                if not found:
                    continue
                offset = f.tell()
                for raw in f:
                    offset += len(raw)
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if _source(line) == process:
                        out.append((line, inode, offset))
        return out

    def _app_cursors(self, app: str, applog: _AppLog) -> dict[str, _Mark]:
        if applog.cursors is None:
            try:
                saved = json.loads(self._path(app, ".cursors.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                saved = {}
            applog.cursors = {
                process: _Mark(*m) if isinstance(m, list) else _Mark(str(m))  # or older: a cursor
                for process, m in saved.items()
            }
        return applog.cursors

    def _save(self, app: str, applog: _AppLog | None = None) -> None:
        """{process: [cursor, inode, offset]}."""
        applog = applog or self._logs[app]
        cursors = self._app_cursors(app, applog)
        marks = {p: [m.cursor, m.inode, m.offset] for p, m in cursors.items()}
        path = self._path(app, ".cursors.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(marks))
        tmp.replace(path)


def _last_lines(files: list[tuple[BinaryIO, int]], n: int, ptype: str | None) -> list[str]:
    """The last `n` lines (of `ptype`) of the files (oldest first, each read up to
    its size), reading backwards: a big log costs what is shown, not its size.
    Closes the files."""
    newest_first: list[str] = []
    try:
        for f, size in reversed(files):
            lines = _lines_backwards(f, size)
            while len(newest_first) < n and (raw := next(lines, None)) is not None:
                line = raw.decode("utf-8", "replace")
                if _matches(line, ptype):
                    newest_first.append(line)
    finally:
        for f, _ in files:
            f.close()
    newest_first.reverse()
    return newest_first


def _lines_backwards(f: BinaryIO, size: int) -> Iterator[bytes]:
    """The non-empty lines of the first `size` bytes of `f`, last first."""
    pos, rest = size, b""
    while pos > 0:
        step = min(TAIL_BLOCK, pos)
        pos -= step
        f.seek(pos)
        lines = (f.read(step) + rest).split(b"\n")
        rest = lines[0]  # the start of a line that began in an earlier block
        yield from (line for line in reversed(lines[1:]) if line)
    if rest:
        yield rest


def _source(line: str) -> str:
    """'2026-… app[web.1]: text' -> 'web.1'."""
    head = line.split("]: ", 1)[0]
    return head.rsplit("[", 1)[-1]


def _matches(line: str, ptype: str | None) -> bool:
    return ptype is None or ptype_of(_source(line)) == ptype
