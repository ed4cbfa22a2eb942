"""The log bus with a fake runtime: pumps, tail, follow, restart without duplicates."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Iterator

import pytest

from peoplescloud.logbus import LogBus
from peoplescloud.runtime.base import InstanceKey, LogLine
from tests import conftest


class FakeRuntime:
    """Instances whose output the test writes; cursors are line indexes."""

    name = "fake"

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str], list[str]] = {}
        self.running: set[tuple[str, str]] = set()
        self.changed = threading.Condition()
        self.cursors_asked: list[str | None] = []

    def emit(self, app: str, process: str, *texts: str) -> None:
        with self.changed:
            self.lines.setdefault((app, process), []).extend(texts)
            self.running.add((app, process))
            self.changed.notify_all()

    def exit(self, app: str, process: str) -> None:
        with self.changed:
            self.running.discard((app, process))
            self.changed.notify_all()

    def logs(self, key: InstanceKey, follow: bool, cursor: str | None) -> Iterator[LogLine]:
        app, process = key.slot
        self.cursors_asked.append(cursor)
        i = 0 if cursor is None else int(cursor) + 1
        while True:
            with self.changed:
                lines = self.lines.get((app, process), [])
                if i >= len(lines):
                    if not follow or (app, process) not in self.running:
                        return
                    self.changed.wait()
                    continue
                text = lines[i]
            yield LogLine(cursor=str(i), timestamp="2026-11-23T21:00:03Z", text=text)
            i += 1


wait_for = functools.partial(conftest.wait_for, timeout=10, interval=0.01)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def bus(tmp_path, runtime) -> Iterator[LogBus]:
    bus = LogBus(tmp_path / "logs", runtime)
    yield bus
    bus.close()


def test_pump_appends_instance_lines_and_events_then_ends(bus, runtime):
    bus.event("demo", "starting web.1 (v1)")
    runtime.emit("demo", "web.1", "listening")
    runtime.emit("demo", "bot.1", "logged in")
    bus.watch(InstanceKey("demo", "web.1", "v1"))
    bus.watch(InstanceKey("demo", "web.1", "v1"))  # idempotent: one pump, no doubled lines
    bus.watch(InstanceKey("demo", "bot.1", "v1"))
    wait_for(lambda: len(bus.tail("demo", 10)) == 3, "three lines")
    lines = bus.tail("demo", 10)
    assert lines[0].endswith(" app[pc]: starting web.1 (v1)")
    assert sorted(lines[1:]) == [
        "2026-11-23T21:00:03Z app[bot.1]: logged in",
        "2026-11-23T21:00:03Z app[web.1]: listening",
    ]
    assert bus.tail("demo", 10, ptype="web") == ["2026-11-23T21:00:03Z app[web.1]: listening"]
    assert bus.tail("demo", 10, ptype="pc") == lines[:1]
    assert bus.tail("demo", 1) == lines[-1:]
    assert bus.tail("other", 5) == []
    runtime.exit("demo", "web.1")
    runtime.exit("demo", "bot.1")
    wait_for(lambda: not bus._pumps, "the pumps to end with their instances")


def test_follow_sees_new_lines_of_its_type(bus, runtime):
    async def scenario() -> list[str]:
        web = bus.follow("demo", ptype="web")
        everything = bus.follow("demo")
        first = asyncio.ensure_future(anext(web))
        first_any = asyncio.ensure_future(anext(everything))
        await asyncio.sleep(0)  # both followers are registered now
        runtime.emit("demo", "bot.1", "not for web")
        runtime.emit("demo", "web.1", "for web")
        bus.watch(InstanceKey("demo", "bot.1", "v1"))
        bus.watch(InstanceKey("demo", "web.1", "v1"))
        got = [await asyncio.wait_for(first, 10), await asyncio.wait_for(first_any, 10)]
        await web.aclose()
        await everything.aclose()
        return got

    web_line, any_line = asyncio.run(scenario())
    assert web_line == "2026-11-23T21:00:03Z app[web.1]: for web"
    assert any_line.endswith("]: not for web") or any_line.endswith("]: for web")
    assert not bus._followers["demo"]  # closed followers unregister


def test_follow_with_a_backlog_starts_with_the_last_lines(bus, runtime):
    for i in range(5):
        bus.event("demo", f"e{i}")

    async def scenario() -> list[str]:
        follower = bus.follow("demo", backlog=2)
        got = [await anext(follower), await anext(follower)]
        waiting = asyncio.ensure_future(anext(follower))
        await asyncio.sleep(0)
        bus.event("demo", "e5")
        got.append(await asyncio.wait_for(waiting, 10))
        await follower.aclose()
        return got

    got = asyncio.run(scenario())
    assert [line.split("]: ", 1)[1] for line in got] == ["e3", "e4", "e5"]


def test_a_slow_follower_skips_lines_and_never_blocks_a_pump(bus, runtime):
    from peoplescloud.logbus import FOLLOW_QUEUE

    total = FOLLOW_QUEUE * 3

    async def scenario() -> list[str]:
        follower = bus.follow("demo")
        first = asyncio.ensure_future(anext(follower))
        await asyncio.sleep(0)
        runtime.emit("demo", "bot.1", *[f"n{i}" for i in range(total)])
        bus.watch(InstanceKey("demo", "bot.1", "v1"))
        # The pump writes every line to the file although nobody reads the follower.
        await asyncio.to_thread(wait_for, lambda: len(bus.tail("demo", total)) == total, "all")
        got = [await first]
        queued = bus._followers["demo"][0].queue.qsize()
        assert queued == FOLLOW_QUEUE - 1 or queued == FOLLOW_QUEUE
        got += [await anext(follower) for _ in range(queued)]
        runtime.emit("demo", "bot.1", "last")
        got += [await asyncio.wait_for(anext(follower), 10) for _ in range(2)]
        await follower.aclose()
        return got

    got = asyncio.run(scenario())
    *read, notice, last = got
    assert [line.split("]: ", 1)[1] for line in read] == [f"n{i}" for i in range(len(read))]
    assert notice == f"... {total - len(read)} lines skipped"
    assert last.endswith("app[bot.1]: last")


def test_restart_resumes_from_the_saved_cursor_without_duplicates(tmp_path, runtime):
    logs_dir = tmp_path / "logs"
    first = LogBus(logs_dir, runtime)
    runtime.emit("demo", "bot.1", "a", "b")
    first.watch(InstanceKey("demo", "bot.1", "v1"))
    wait_for(lambda: len(first.tail("demo", 10)) == 2, "a and b")
    first.close()  # the daemon stops; the instance runs on
    runtime.emit("demo", "bot.1", "c")  # written while no daemon ran
    assert json.loads((logs_dir / "demo.cursors.json").read_text())["bot.1"][0] == "1"

    second = LogBus(logs_dir, runtime)
    second.watch(InstanceKey("demo", "bot.1", "v1"))
    runtime.emit("demo", "bot.1", "d")
    wait_for(lambda: len(second.tail("demo", 10)) >= 4, "c and d")
    runtime.exit("demo", "bot.1")
    wait_for(lambda: not second._pumps, "the pump to end")
    texts = [line.split("]: ", 1)[1] for line in second.tail("demo", 10)]
    assert texts == ["a", "b", "c", "d"]  # the first bus's pump wrote nothing after close
    assert runtime.cursors_asked[-1] == "1"
    assert json.loads((logs_dir / "demo.cursors.json").read_text())["bot.1"][0] == "3"
    second.close()


def test_forget_deletes_the_apps_logs_and_ends_its_followers(bus, runtime):
    async def scenario() -> list[str]:
        follower = bus.follow("demo")
        waiting = asyncio.ensure_future(anext(follower, "ended"))
        await asyncio.sleep(0)
        bus.event("demo", "destroying")
        first = await waiting
        bus.forget("demo")
        return [first, await asyncio.wait_for(anext(follower, "ended"), 10)]

    first, after = asyncio.run(scenario())
    assert first.endswith("app[pc]: destroying") and after == "ended"
    assert bus.tail("demo", 10) == []
    assert list(bus.logs_dir.iterdir()) == []


def test_a_crash_between_cursor_saves_repeats_no_line(tmp_path, runtime, monkeypatch):
    """Lines pumped after the last cursor save are sent again by the runtime after a
    crash: the new bus skips the ones its log already holds (a repeated text, such
    as a heartbeat, is still kept when it is new)."""
    monkeypatch.setattr("peoplescloud.logbus.SAVE_EVERY", 3600.0)  # saves only when told
    logs_dir = tmp_path / "logs"
    first = LogBus(logs_dir, runtime)
    runtime.emit("demo", "bot.1", "a")
    first.watch(InstanceKey("demo", "bot.1", "v1"))
    wait_for(lambda: len(first.tail("demo", 10)) == 1, "a")
    with first._lock:
        first._save("demo")  # the pump's last save, after "a"
    runtime.emit("demo", "bot.1", "tick", "tick")
    wait_for(lambda: len(first.tail("demo", 10)) == 3, "the ticks")
    with first._lock:  # the daemon is killed: its pump writes nothing more, saves nothing
        first._pumps.clear()

    second = LogBus(logs_dir, runtime)
    second.watch(InstanceKey("demo", "bot.1", "v1"))
    runtime.emit("demo", "bot.1", "tick")
    runtime.exit("demo", "bot.1")
    wait_for(lambda: not second._pumps, "the pump to end")
    texts = [line.split("]: ", 1)[1] for line in second.tail("demo", 10)]
    assert texts == ["a", "tick", "tick", "tick"]
    second.close()
