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

Followers (`follow`) live on an asyncio loop; pumps hand them lines with
`call_soon_threadsafe`. Each follower has a bounded queue and skips lines it
cannot keep up with (saying how many), so a slow reader never slows a pump.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from peoplescloud.processes import ptype_of
from peoplescloud.runtime.base import InstanceKey, Runtime

log = logging.getLogger(__name__)

EVENT_SOURCE = "pc"
SAVE_EVERY = 1.0  # seconds between cursor saves of a busy pump
MAX_LOG_BYTES = 5 * 1024 * 1024  # then <app>.log becomes <app>.log.1 (one kept)
FOLLOW_QUEUE = 1000  # lines a follower may lag behind before it skips


@dataclass(frozen=True)
class _Mark:
    """How far a pump got: the runtime's cursor of its last line, and where that
    line ends in the app's log (the file's inode, the offset after the line;
    0, 0 when unknown)."""

    cursor: str
    inode: int = 0
    offset: int = 0


@dataclass(eq=False)
class _Follower:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str | None]
    ptype: str | None
    skipped: int = 0


class LogBus:
    """Every app's log of this node, fed by pumps over `runtime.logs`."""

    def __init__(self, logs_dir: Path, runtime: Runtime) -> None:
        self.logs_dir = Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = runtime
        self._lock = threading.Lock()  # guards everything below and the files
        self._pumps: dict[InstanceKey, threading.Thread] = {}
        self._cursors: dict[str, dict[str, _Mark]] = {}
        self._followers: dict[str, list[_Follower]] = {}
        self._closed = False

    def event(self, app: str, text: str) -> None:
        """Record something the node did to `app` ("starting web.1 (v3)")."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            self._append(app, f"{stamp} app[{EVENT_SOURCE}]: {text}")

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
        with self._lock:
            return self._tail(app, n, ptype)

    async def follow(
        self, app: str, ptype: str | None = None, backlog: int = 0
    ) -> AsyncIterator[str]:
        """Lines of the app as they are appended, until the app is forgotten or the bus
        closes; `backlog` of the last lines first, with no gap or repeat between them."""
        follower = _Follower(asyncio.get_running_loop(), asyncio.Queue(FOLLOW_QUEUE), ptype)
        with self._lock:
            if self._closed:
                return
            self._followers.setdefault(app, []).append(follower)
            old = self._tail(app, backlog, ptype) if backlog > 0 else []
        try:
            for earlier in old:
                yield earlier
            while (line := await follower.queue.get()) is not None:
                yield line
        finally:
            with self._lock:
                followers = self._followers.get(app, [])
                if follower in followers:
                    followers.remove(follower)

    def knows(self, app: str) -> bool:
        """Whether this node keeps a log of `app`."""
        return self._path(app, ".log").exists()

    def forget(self, app: str) -> None:
        """The app was destroyed: stop its pumps and followers, delete its logs."""
        with self._lock:
            for key in [k for k in self._pumps if k.app == app]:
                del self._pumps[key]  # the pump sees it is no longer current and ends
            self._cursors.pop(app, None)
            for follower in self._followers.pop(app, []):
                _end(follower)
            for suffix in (".log", ".log.1", ".cursors.json"):
                self._path(app, suffix).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop every pump (they write nothing more) and save their cursors."""
        with self._lock:
            self._closed = True
            for app in self._cursors:
                self._save(app)
            for followers in self._followers.values():
                for follower in followers:
                    _end(follower)
            self._followers.clear()

    # -- pumps --

    def _pump(self, key: InstanceKey) -> None:
        """Follow one instance's output into its app's log. The saved cursor is per
        process: a new release's instance of `web.1` resumes after the old one's."""
        app, process, me = key.app, key.process, threading.current_thread()
        last_save = time.monotonic()
        try:
            with self._lock:
                mark = self._app_cursors(app).get(process)
                written = self._written_after(app, process, mark)  # what comes again
            for line in self.runtime.logs(key, follow=True, cursor=mark.cursor if mark else None):
                text = f"{line.timestamp} app[{process}]: {line.text}"
                with self._lock:
                    if self._closed or self._pumps.get(key) is not me:
                        return
                    if written and written[0][0] == text:  # in the log already
                        _, inode, offset = written.popleft()
                    else:
                        written.clear()
                        inode, offset = self._append(app, text)
                    self._app_cursors(app)[process] = _Mark(line.cursor, inode, offset)
                    if time.monotonic() - last_save >= SAVE_EVERY:
                        self._save(app)
                        last_save = time.monotonic()
        except Exception:  # a broken log stream must not take the daemon down
            log.exception("following the logs of %s %s", app, process)
        finally:
            with self._lock:
                if self._pumps.get(key) is me:
                    del self._pumps[key]
                    if not self._closed:
                        self._save(app)

    # -- under self._lock --

    def _tail(self, app: str, n: int, ptype: str | None) -> list[str]:
        last: deque[str] = deque(maxlen=max(n, 0))
        for path in (self._path(app, ".log.1"), self._path(app, ".log")):
            with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
                last.extend(line.rstrip("\n") for line in f if _matches(line, ptype))
        return list(last)

    def _path(self, app: str, suffix: str) -> Path:
        return self.logs_dir / f"{app}{suffix}"

    def _append(self, app: str, line: str) -> tuple[int, int]:
        """Append a line; returns where it ends: (the file's inode, the offset after it)."""
        path = self._path(app, ".log")
        with open(path, "ab") as f:
            f.write(line.encode("utf-8") + b"\n")
            end, inode = f.tell(), os.fstat(f.fileno()).st_ino
            if end > MAX_LOG_BYTES:
                path.replace(self._path(app, ".log.1"))
        for follower in list(self._followers.get(app, [])):
            if _matches(line, follower.ptype):
                try:
                    follower.loop.call_soon_threadsafe(_offer, follower, line)
                except RuntimeError:  # its loop is closed: the reader is gone
                    self._followers[app].remove(follower)
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

    def _app_cursors(self, app: str) -> dict[str, _Mark]:
        if app not in self._cursors:
            try:
                saved = json.loads(self._path(app, ".cursors.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                saved = {}
            self._cursors[app] = {
                process: _Mark(*m) if isinstance(m, list) else _Mark(str(m))  # or older: a cursor
                for process, m in saved.items()
            }
        return self._cursors[app]

    def _save(self, app: str) -> None:
        """{process: [cursor, inode, offset]}."""
        marks = {p: [m.cursor, m.inode, m.offset] for p, m in self._app_cursors(app).items()}
        path = self._path(app, ".cursors.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(marks))
        tmp.replace(path)


def _source(line: str) -> str:
    """'2026-… app[web.1]: text' -> 'web.1'."""
    head = line.split("]: ", 1)[0]
    return head.rsplit("[", 1)[-1]


def _matches(line: str, ptype: str | None) -> bool:
    return ptype is None or ptype_of(_source(line)) == ptype


# -- on the follower's loop --


def _offer(follower: _Follower, line: str) -> None:
    queue = follower.queue
    if follower.skipped and not queue.full():
        n = follower.skipped
        queue.put_nowait(f"... {n} line{'s' if n > 1 else ''} skipped")
        follower.skipped = 0
    if queue.full():
        follower.skipped += 1
    else:
        queue.put_nowait(line)


def _end(follower: _Follower) -> None:
    """Wake the follower with the end mark (dropping what it had not read yet)."""

    def put_end() -> None:
        while follower.queue.full():
            follower.queue.get_nowait()
        follower.queue.put_nowait(None)

    with contextlib.suppress(RuntimeError):
        follower.loop.call_soon_threadsafe(put_end)
