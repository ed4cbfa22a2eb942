"""Zero-downtime replacement of web instances, in the reconciler's order of
things, against an in-memory runtime and health checks the test answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peoplescloud.deploy import SETTLE, Deployer
from peoplescloud.errors import PCError
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceKey
from peoplescloud.settings import Settings, WebSettings
from peoplescloud.state import App, Release, State
from peoplescloud.store import LocalStore
from tests.fakes import FakeBus, FakeChecks, FakeCluster, FakeWebRuntime

DRAIN = 0.3


class World:
    def __init__(self, tmp_path: Path, scale: dict[str, int]) -> None:
        self.settings = Settings(
            home=tmp_path, name="n1", web=WebSettings(drain_seconds=DRAIN, check_attempts=2)
        )
        self.state = State(tmp_path / "state.json")
        store = LocalStore(tmp_path / "store")
        slug = tmp_path / "slug"
        slug.mkdir()
        (slug / "web.py").write_text("")
        self.cid = store.add(slug)
        with self.state.change() as s:
            app = App(name="site", owner="ann", created="t", scale=scale)
            app.releases.append(self.release(1))
            app.current = 1
            s.apps["site"] = app
        self.runtime, self.bus, self.checks = FakeWebRuntime(), FakeBus(), FakeChecks()
        cluster = FakeCluster(self.state, store)
        self.r = Reconciler(self.settings, cluster, self.runtime, self.bus, self.checks)  # type: ignore[arg-type]
        self.deployer = Deployer(self.settings, cluster, self.r, self.bus, None)  # type: ignore[arg-type]
        # What the router could reach when each instance was stopped.
        self.serving_at_stop: dict[InstanceKey, list[InstanceKey]] = {}
        self.runtime.on_stop = lambda key: self.serving_at_stop.setdefault(key, self.serving())

    def release(self, version: int) -> Release:
        processes = {"web": "python web.py", "bot": "python bot.py"}
        return Release(version, self.cid, "python", "img", processes, "c", "ann", "t", "")

    def new_release(self, version: int, current: bool = True) -> None:
        with self.state.change() as s:
            a = s.apps["site"]
            a.releases.append(self.release(version))
            if current:
                a.current = version

    def serving(self) -> list[InstanceKey]:
        return sorted(s.key for s in self.r.serving("site"))

    def until(self, done: Callable[[], bool], what: str) -> None:
        """Run passes (as the daemon's wake-ups do) until `done`, bounded."""
        deadline = time.monotonic() + 10
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.r.reconcile()
            time.sleep(0.02)


def web(release: str, n: int = 1) -> InstanceKey:
    return InstanceKey("site", f"web.{n}", release)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, {"web": 1})
    w.checks.answer("v1")
    w.until(lambda: w.serving() == [web("v1")], "v1 serving")
    yield w
    w.r.close()


def test_a_new_web_instance_serves_only_once_healthy_then_the_old_drains(world: World):
    w = world
    w.new_release(2)
    w.r.reconcile()
    assert set(w.runtime.instances) == {web("v1"), web("v2")}  # beside, not instead
    assert w.serving() == [web("v1")]  # not checked yet: no request goes to it
    assert web("v2") not in w.r.instances()  # nor does a deploy count it as running
    w.checks.answer("v2")
    w.until(lambda: w.serving() == [web("v2")], "v2 serving")
    assert web("v1") in w.runtime.instances  # draining: out of the list, still running
    assert any("draining web.1 (v1): replaced by v2" in e for e in w.bus.events)
    w.until(lambda: web("v1") not in w.runtime.instances, "v1 stopped after its drain")
    assert w.serving_at_stop[web("v1")] == [web("v2")]
    assert w.runtime.log == ["start web.1 v1", "start web.1 v2", "stop web.1 v1"]


def test_a_replaced_instance_runs_its_whole_drain(world: World):
    w = world
    w.new_release(2)
    w.checks.answer("v2")
    w.until(lambda: w.serving() == [web("v2")], "v2 serving")
    drained_from = time.monotonic()
    w.until(lambda: web("v1") not in w.runtime.instances, "v1 stopped")
    assert time.monotonic() - drained_from >= DRAIN * 0.9


def test_a_web_instance_that_fails_its_check_is_stopped_and_the_old_serves_on(world: World):
    w = world
    w.new_release(2)
    w.r.reconcile()
    assert web("v2") in w.runtime.instances
    w.checks.answer("v2", "GET /health answered 500, not 2xx")
    w.until(lambda: web("v2") not in w.runtime.instances, "v2 stopped")
    assert w.serving() == [web("v1")]
    assert "answered 500" in w.r.health_failure(web("v2"))
    assert any("web.1 (v2): GET /health answered 500" in e for e in w.bus.events)
    w.r.reconcile()
    assert web("v2") not in w.runtime.instances  # started again only after a back-off
    assert "trying again in 1s" in w.r.start_failure("site", "web.1")
    assert web("v1") not in w.serving_at_stop  # never stopped


def test_a_deploy_that_fails_its_check_never_becomes_current(world: World):
    w = world
    w.new_release(2, current=False)
    w.checks.answer("v2", "health check (port check) failed 2 attempts: connection refused")
    said: list[str] = []
    with pytest.raises(PCError) as failed:
        w.deployer.activate("site", 2, said.append)
    message = str(failed.value)
    assert "web.1 of v2 failed its health check" in message and "connection refused" in message
    assert "v1 runs again" in message and "\n" not in message
    a = w.state.read().apps["site"]
    assert (a.current, a.deploying) == (1, None)
    w.r.reconcile()
    assert w.serving() == [web("v1")] and set(w.runtime.instances) == {web("v1")}


def test_a_deploy_becomes_current_once_healthy(world: World):
    w = world
    w.new_release(2, current=False)
    seen: list[int | None] = []

    def answer_later() -> None:  # while the deploy waits, the release is not current
        time.sleep(SETTLE + 0.5)  # running long enough, but not healthy yet
        seen.append(w.state.read().apps["site"].current)
        w.checks.answer("v2")

    threading.Thread(target=answer_later).start()
    assert w.deployer.activate("site", 2, lambda line: None) == "v2"
    assert seen == [1]  # it waited for the check
    a = w.state.read().apps["site"]
    assert (a.current, a.deploying) == (2, None)
    assert w.serving() == [web("v2")]


def test_other_processes_stop_before_their_replacement_starts(tmp_path: Path):
    w = World(tmp_path, {"web": 1, "bot": 1})
    w.checks.answer("v1")
    w.checks.answer("v2")
    w.until(lambda: w.serving() == [web("v1")], "v1 serving")
    w.runtime.stop_takes = 0.2
    w.new_release(2)
    w.until(lambda: {k.release for k in w.runtime.instances} == {"v2"}, "v2 alone")
    assert w.runtime.most_at_once[("site", "bot.1")] == 1  # a bot never runs twice
    assert w.runtime.most_at_once[("site", "web.1")] == 2  # a web instance does, briefly


def test_a_restart_rolls_web_instances_one_at_a_time(tmp_path: Path):
    w = World(tmp_path, {"web": 2})
    w.checks.answer("v1")
    w.until(lambda: w.serving() == [web("v1", 1), web("v1", 2)], "both serving")
    began = time.monotonic()
    w.r.restart("site")
    assert time.monotonic() - began >= 2 * DRAIN  # each drained before its stop
    assert w.runtime.log[-4:] == [
        "stop web.1 v1",
        "start web.1 v1",
        "stop web.2 v1",
        "start web.2 v1",
    ]
    assert w.serving_at_stop[web("v1", 1)] == [web("v1", 2)]  # the other one serves
    assert w.serving_at_stop[web("v1", 2)] == [web("v1", 1)]  # the restarted one, checked
    assert w.serving() == [web("v1", 1), web("v1", 2)]
    assert len(w.checks.asked) == 4  # each start was checked again


def test_a_restart_stops_rolling_at_an_instance_that_fails(tmp_path: Path):
    w = World(tmp_path, {"web": 2})
    w.checks.answer("v1")
    w.until(lambda: w.serving() == [web("v1", 1), web("v1", 2)], "both serving")
    w.checks.answer("v1", "GET / answered 500, not 2xx")  # from now on
    with pytest.raises(PCError) as failed:
        w.r.restart("site")
    assert str(failed.value) == (
        "web.1 failed its health check after its restart: GET / answered 500, not 2xx; "
        "web.2 not restarted; see `logs site`"
    )
    assert w.serving() == [web("v1", 2)]  # the one left serves on
    w.r.close()


def test_a_draining_instance_of_an_app_stopped_meanwhile_stops_at_once(world: World):
    w = world
    w.settings = w.r.settings = Settings(
        home=w.settings.home, name="n1", web=WebSettings(drain_seconds=60)
    )
    w.new_release(2)
    w.checks.answer("v2")
    w.until(lambda: w.serving() == [web("v2")], "v2 serving")
    assert web("v1") in w.runtime.instances  # draining, for a minute
    with w.state.change() as s:
        s.apps["site"].stopped = True  # ps:stop (or apps:destroy): nothing waits a drain
    w.r.reconcile()
    assert w.runtime.instances == {}
