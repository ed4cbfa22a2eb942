"""Scheduled jobs: the crontab parser, the next run, and the scheduler against an
injected clock and an in-memory runtime (one run at a time, once a minute, on
one node of a swarm)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from builder.crontab import parse_schedule
from builder.errors import BuildError
from peoplescloud.cron import Cron, job_rows, runner_of
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceSpec
from peoplescloud.settings import Settings, Shares
from peoplescloud.state import App, Member, Release, Snapshot, State
from peoplescloud.store import LocalStore
from tests.fakes import FakeBus, FakeCluster, FakeRuntime


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "schedule, after, expected",
    [
        ("* * * * *", "2026-11-30 15:04:30", "2026-11-30 15:05"),
        ("*/5 * * * *", "2026-11-30 15:04", "2026-11-30 15:05"),
        ("*/5 * * * *", "2026-11-30 15:05", "2026-11-30 15:10"),
        ("0 3 * * *", "2026-11-30 15:04", "2026-12-01 03:00"),
        ("30 9 * * 1-5", "2026-12-04 10:00", "2026-12-07 09:30"),  # Friday -> Monday
        ("0 0 * * 7", "2026-11-30 00:00", "2026-12-06 00:00"),  # 7 is Sunday
        ("0 0 * * 0", "2026-11-30 00:00", "2026-12-06 00:00"),
        ("15,45 1-3/2 * * *", "2026-11-30 01:20", "2026-11-30 01:45"),
        ("15,45 1-3/2 * * *", "2026-11-30 01:50", "2026-11-30 03:15"),
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),
        ("0 0 13 * 5", "2026-11-30 00:00", "2026-12-04 00:00"),  # either day field (Vixie)
        ("@hourly", "2026-11-30 15:04", "2026-11-30 16:00"),
        ("@yearly", "2026-11-30 15:04", "2027-01-01 00:00"),
        ("5/20 * * * *", "2026-11-30 15:26", "2026-11-30 15:45"),
        ("59 23 31 12 *", "2026-12-31 23:59", "2027-12-31 23:59"),
    ],
)
def test_next_run(schedule: str, after: str, expected: str):
    assert parse_schedule(schedule).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    "schedule, why",
    [
        ("* * * *", "must have 5 fields"),
        ("60 * * * *", "minute '60' must be a whole number from 0 to 59"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("*/0 * * * *", "from 1"),
        ("5-1 * * * *", "goes backwards"),
        ("* * * jan *", "month 'jan'"),
        ("0 0 30 2 *", "never runs"),
        ("@reboot", "must have 5 fields"),
    ],
)
def test_bad_schedules_say_why(schedule: str, why: str):
    with pytest.raises(BuildError, match=why):
        parse_schedule(schedule)


class CronRuntime(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.ran: list[tuple[str, str, str]] = []
        self.release_run = threading.Event()  # a run waits for it

    def run(
        self,
        spec: InstanceSpec,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: object = None,
        cancel: object = None,
    ) -> int:
        self.ran.append((spec.process, spec.release, argv[-1]))
        output(b"tick\n")
        self.release_run.wait(10)
        return 0


class World:
    def __init__(self, tmp_path: Path, max_oneoffs: int = 4) -> None:
        self.settings = Settings(home=tmp_path, name="n1", shares=Shares(max_oneoffs=max_oneoffs))
        self.state = State(tmp_path / "state.json")
        store = LocalStore(tmp_path / "store")
        slug = tmp_path / "slug"
        slug.mkdir()
        (slug / "x").write_text("")
        cid = store.add(slug)
        jobs = [
            {"command": "./tick", "schedule": "* * * * *"},
            {"command": "./hourly", "schedule": "0 * * * *"},
        ]
        with self.state.change() as s:
            for name in ("a", "b"):
                r = Release(1, cid, "python", "img", {"bot": "x"}, "c", "ann", "t", "", cron=jobs)
                s.apps[name] = App(name=name, owner="ann", created="t", releases=[r], current=1)
        self.now = at("2026-11-30 15:04:10")
        self.runtime, self.bus = CronRuntime(), FakeBus()
        self.cluster = FakeCluster(self.state, store)
        self.r = Reconciler(self.settings, self.cluster, self.runtime, self.bus)  # type: ignore[arg-type]
        self.threads: list[threading.Thread] = []
        self.cron = Cron(
            self.settings,
            self.cluster,
            self.r,
            self.bus,
            lambda: self.now,
            self._spawn,  # type: ignore[arg-type]
        )

    def _spawn(self, work: Callable[[], None]) -> None:
        t = threading.Thread(target=work, daemon=True)
        self.threads.append(t)
        t.start()

    def finish(self) -> None:
        self.runtime.release_run.set()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.finish()
    w.r.close()


def wait_ran(w: World, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(w.runtime.ran) < n:
        assert time.monotonic() < deadline, w.runtime.ran
        time.sleep(0.01)


def test_jobs_run_at_their_minute_once_and_log_as_cron_n(world: World):
    w = world
    w.cron.tick()
    wait_ran(w, 2)
    w.runtime.release_run.set()
    for t in w.threads:
        t.join(5)
    w.now = at("2026-11-30 15:04:55")
    w.cron.tick()  # the same minute again, the runs done: nothing more
    time.sleep(0.1)
    assert sorted(w.runtime.ran) == [("cron.1", "v1", "./tick")] * 2  # a's and b's
    assert "a[cron.1]: tick" in w.bus.events and "a: cron.1 exited with code 0" in w.bus.events
    w.now = at("2026-11-30 16:00:02")
    w.cron.tick()
    wait_ran(w, 6)
    assert sorted(x[2] for x in w.runtime.ran[2:]) == ["./hourly", "./hourly", "./tick", "./tick"]


def test_a_job_still_running_at_its_next_time_is_skipped(world: World):
    w = world
    w.cron.tick()
    wait_ran(w, 2)
    w.now = at("2026-11-30 15:05:00")  # both still run
    w.cron.tick()
    time.sleep(0.1)
    assert len(w.runtime.ran) == 2
    assert "a: cron.1 skipped at 15:05: its last run is still going" in w.bus.events


def test_the_nodes_one_off_limit_holds_for_jobs(tmp_path: Path):
    w = World(tmp_path, max_oneoffs=1)
    try:
        w.cron.tick()
        wait_ran(w, 1)
        time.sleep(0.1)
        assert len(w.runtime.ran) == 1
        assert any("max_oneoffs" in e for e in w.bus.events)
    finally:
        w.finish()
        w.r.close()


def test_stopped_apps_and_nodes_that_may_not_run_start_nothing(world: World):
    w = world
    with w.state.change() as s:
        s.apps["a"].stopped = True
    w.cluster.allowed = False
    w.cron.tick()
    w.cluster.allowed = True
    w.cron.tick()
    wait_ran(w, 1)
    time.sleep(0.1)
    assert [x[0] for x in w.runtime.ran] == ["cron.1"] and len(w.runtime.ran) == 1


def test_one_member_of_a_swarm_runs_an_apps_jobs():
    future = time.time() + 60
    members = {n: Member(n, 1024, 1, 10, lease_expires=future) for n in ("n1", "n2", "n3")}
    snap = Snapshot(members=members)
    app = App(name="a", owner="ann", created="t", scale={"bot": 1, "web": 2})
    app.placement = {"bot.1": "n1", "web.1": "n3", "web.2": "n2"}
    assert runner_of(snap, app, "n1") == "n3"  # where web.1 is
    app.scale, app.placement = {"bot": 1}, {"bot.1": "n2"}
    assert runner_of(snap, app, "n1") == "n2"
    app.placement = {}
    members["n1"].lease_expires = 0  # n1's lease ran out: the next live member
    assert runner_of(snap, app, "n3") == "n2"
    assert runner_of(Snapshot(), app, "lone") == "lone"


def test_cron_lists_the_next_runs(world: World):
    rows = job_rows(world.state.read().apps["a"], at("2026-11-30 15:04:10"))
    assert [(r.id, r.next_run, r.command) for r in rows] == [
        ("cron.1", "2026-11-30T15:05:00Z", "./tick"),
        ("cron.2", "2026-11-30T16:00:00Z", "./hourly"),
    ]
