"""The process runtime's handle files as its periodic `status()` reads them,
cheaply: with fifty instances, opening and parsing every handle file and every
shim's /proc entry twice a pass was most of an idle daemon's CPU (issue 12).

A handle file is re-read only when it changed (its inode, mtime and size: the
runtime replaces a handle by renaming a new file over it), and whether a shim
still runs comes from a pidfd per shim, opened once after its start time was
checked and asked with one `poll()` for all; it reads as ended from the moment
the shim exits (a zombie is gone, as `/proc` says too). Where pidfds are not
available (kernels before 5.3), every look is the /proc one.
"""

from __future__ import annotations

import json
import os
import select
import threading
from collections.abc import Callable
from typing import Any

Handle = dict[str, Any]
_Stamp = tuple[int, int, int]  # inode, mtime_ns, size


class Handles:
    def __init__(self, run_dir: os.PathLike[str], alive: Callable[[Handle], bool]) -> None:
        """`alive(handle)`: the full look (the shim's pid has its recorded start time)."""
        self.run_dir = run_dir
        self._alive = alive
        self._lock = threading.Lock()  # status() may be called from several threads
        self._files: dict[str, tuple[_Stamp, Handle | None]] = {}
        self._pidfds: dict[tuple[int, int], int] = {}  # (pid, start) -> pidfd

    def read(self) -> list[Handle]:
        """Every readable handle file under `run_dir/*/`, in path order."""
        with self._lock:
            files: dict[str, tuple[_Stamp, Handle | None]] = {}
            for path, stamp in sorted(_handle_files(self.run_dir)):
                known = self._files.get(path)
                files[path] = known if known and known[0] == stamp else (stamp, _load(path))
            self._files = files
            return [h for _, h in files.values() if h is not None]

    def running(self, handles: list[Handle]) -> dict[str, bool]:
        """handle id -> whether its shim still runs; pidfds of others are closed."""
        with self._lock:
            wanted: dict[tuple[int, int], Handle] = {}
            out: dict[str, bool] = {}
            for h in handles:
                pid, start = h.get("pid"), h.get("pid_start")
                if isinstance(pid, int) and isinstance(start, int):
                    wanted[(pid, start)] = h
                else:
                    out[h["id"]] = self._alive(h)
            for key in set(self._pidfds) - set(wanted):
                os.close(self._pidfds.pop(key))
            poller = select.poll()
            for key, h in wanted.items():
                if key not in self._pidfds and not self._open(key, h):
                    out[h["id"]] = self._alive(h)  # no pidfd: gone, or none to be had
                    continue
                poller.register(self._pidfds[key], select.POLLIN)
            ended = {fd for fd, _ in poller.poll(0)}
            for key, h in wanted.items():
                fd = self._pidfds.get(key)
                if fd is not None:
                    out[h["id"]] = fd not in ended
            return out

    def _open(self, key: tuple[int, int], handle: Handle) -> bool:
        """A pidfd for the shim of `handle`, if it runs: its start time is checked
        after the pidfd is open, so the pidfd cannot be a later owner of the pid."""
        try:
            fd = os.pidfd_open(key[0])
        except (OSError, AttributeError):
            return False
        if not self._alive(handle):
            os.close(fd)
            return False
        self._pidfds[key] = fd
        return True

    def close(self) -> None:
        with self._lock:
            for fd in self._pidfds.values():
                os.close(fd)
            self._pidfds.clear()


def _handle_files(run_dir: os.PathLike[str]) -> list[tuple[str, _Stamp]]:
    out: list[tuple[str, _Stamp]] = []
    try:
        apps = list(os.scandir(run_dir))
    except FileNotFoundError:
        return out
    for app in apps:
        if not app.is_dir(follow_symlinks=False):
            continue
        try:
            with os.scandir(app.path) as entries:
                for e in entries:
                    if e.name.endswith(".json") and not e.name.startswith("."):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        out.append((e.path, (st.st_ino, st.st_mtime_ns, st.st_size)))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


def _load(path: str) -> Handle | None:
    try:
        with open(path, "rb") as f:
            handle = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return handle if isinstance(handle, dict) and "id" in handle else None


class Watch:
    """Whether one instance still runs and was not replaced, for its log follower,
    which asks at every look: a stat of the handle file and a poll of the shim's
    pidfd, where `current()` (the full look: read the handle, then /proc) is asked
    only when the handle file changed, or always where no pidfd can be had."""

    def __init__(self, path: os.PathLike[str], handle: Handle, current: Callable[[], bool]) -> None:
        self.path = path
        self.current = current
        self.stamp = _stamp(path)
        self.fd: int | None = None
        try:
            self.fd = os.pidfd_open(handle["pid"])
        except (OSError, AttributeError, KeyError, TypeError):
            return
        if not current():  # checked after the pidfd is open: it is the handle's shim
            self.close()

    def __call__(self) -> bool:
        if self.fd is None:
            return self.current()
        stamp = _stamp(self.path)
        if stamp != self.stamp:
            if not self.current():
                return False
            self.stamp = stamp  # rewritten, still this instance's
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _stamp(path: os.PathLike[str]) -> _Stamp | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
