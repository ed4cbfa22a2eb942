"""The process runtime's cached handle reads (`peoplescloud/runtime/handles.py`):
a changed handle file is read again, an ended shim reads as ended at once, and
no pidfd outlives its handle."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from peoplescloud.runtime.handles import Handles, Watch
from peoplescloud.runtime.process import _alive, _start_time


def write(path: Path, handle: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(handle))
    tmp.replace(path)  # as the runtime writes a handle


def handle_of(child: subprocess.Popen[bytes], ident: str) -> dict:
    return {"id": ident, "pid": child.pid, "pid_start": _start_time(child.pid)}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_changed_handle_is_read_again(tmp_path: Path):
    handles = Handles(tmp_path, _alive)
    path = tmp_path / "app" / "web.1@v1.json"
    write(path, {"id": "a", "port": 1})
    assert handles.read() == [{"id": "a", "port": 1}]
    write(path, {"id": "b", "port": 2})
    assert handles.read() == [{"id": "b", "port": 2}]
    path.unlink()
    assert handles.read() == []


def test_an_ended_shim_reads_as_ended_and_its_pidfd_is_closed(tmp_path: Path):
    handles = Handles(tmp_path, _alive)
    child = subprocess.Popen(["sleep", "60"])
    try:
        mine = handle_of(child, "x")
        gone = {"id": "y", "pid": child.pid, "pid_start": mine["pid_start"] + 1}  # a reused pid
        before = open_fds()
        assert handles.running([mine, gone]) == {"x": True, "y": False}
        assert handles.running([mine]) == {"x": True}  # asked again: the pidfd answers
        assert open_fds() == before + 1
        child.kill()
        deadline = time.monotonic() + 5
        while handles.running([mine])["x"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handles.running([mine]) == {"x": False}  # a zombie (not reaped yet) is gone
        assert handles.running([]) == {}
        assert open_fds() == before  # no pidfd kept for a handle no longer there
    finally:
        child.kill()
        child.wait()
    handles.close()


def test_a_followers_watch_sees_the_end_and_a_replaced_handle(tmp_path: Path):
    path = tmp_path / "app" / "bot.1@v1.json"
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        first, second = (handle_of(c, str(i)) for i, c in enumerate(children))
        write(path, first)

        def current(handle: dict) -> bool:
            now = json.loads(path.read_text()) if path.exists() else None
            return bool(now and now["id"] == handle["id"] and _alive(now))

        watch = Watch(path, first, lambda: current(first))
        assert watch.fd is not None and watch()
        write(path, second)  # another instance of the slot: its follower is done
        assert not watch()
        watch.close()
        write(path, first)
        watch = Watch(path, first, lambda: current(first))
        children[0].kill()
        deadline = time.monotonic() + 5
        while watch() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not watch()  # the shim ended: seen by its pidfd, the handle unchanged
        watch.close()
    finally:
        for c in children:
            c.kill()
            c.wait()
