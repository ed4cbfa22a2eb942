"""The reconciler's decisions, against an in-memory runtime (a unit test: the
real runtimes pass their own shared suite in test_runtime_suite.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from peoplescloud import reconciler as rec
from peoplescloud.errors import NotFound
from peoplescloud.settings import Settings
from peoplescloud.state import App, Release, State
from peoplescloud.store import LocalStore
from tests.fakes import FakeBus, FakeCluster, FakeRuntime, release


@pytest.fixture
def world(tmp_path: Path):
    settings = Settings(home=tmp_path, name="n1")
    state = State(tmp_path / "state.json")
    store = LocalStore(tmp_path / "store")
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text("")
    cid = store.add(slug)
    with state.change() as s:
        app = App(name="mybot", owner="ann", created="t", scale={"bot": 2})
        app.releases.append(
            Release(1, cid, "python", "img", {"bot": "python bot.py"}, "c", "ann", "t", "d")
        )
        app.current = 1
        s.apps["mybot"] = app
    runtime, bus = FakeRuntime(), FakeBus()
    r = rec.Reconciler(settings, FakeCluster(state, store), runtime, bus)  # type: ignore[arg-type]
    return r, state, runtime, bus, cid


def test_starts_what_is_wanted_with_env_and_slug(world):
    r, state, runtime, bus, cid = world
    r.reconcile()
    assert sorted(runtime.instances) == [("mybot", "bot.1"), ("mybot", "bot.2")]
    env = runtime.started[0][3]
    assert env["PC_APP"] == "mybot" and env["PC_RELEASE"] == "v1" and env["PC_NODE"] == "n1"
    assert (r.settings.slugs_dir / cid / "bot.py").exists()
    assert "mybot: starting bot.1 (v1)" in bus.events
    r.reconcile()
    assert len(runtime.started) == 2  # nothing more to do


def test_scale_down_and_stop(world):
    r, state, runtime, bus, _ = world
    r.reconcile()
    with state.change() as s:
        s.apps["mybot"].scale["bot"] = 1
    r.reconcile()
    assert list(runtime.instances) == [("mybot", "bot.1")]
    with state.change() as s:
        s.apps["mybot"].stopped = True
    r.reconcile()
    assert runtime.instances == {}


def test_new_release_replaces_old_instances(world):
    r, state, runtime, bus, cid = world
    r.reconcile()
    with state.change() as s:
        a = s.apps["mybot"]
        a.releases.append(
            Release(2, cid, "python", "img", {"bot": "python bot.py"}, "d", "ann", "t", "")
        )
        a.current = 2
    r.reconcile()
    assert {s.release for s in runtime.instances.values()} == {"v2"}
    assert any("replaced by v2" in e for e in bus.events)


def test_crash_restarts_with_backoff(world, monkeypatch: pytest.MonkeyPatch):
    r, state, runtime, bus, _ = world
    clock = [1000.0]
    monkeypatch.setattr(rec.time, "monotonic", lambda: clock[0])
    r.reconcile()
    runtime.crash("mybot", "bot.1", 3)
    r.reconcile()  # noticed: restart after 1 s
    assert "mybot: bot.1 exited with code 3; restarting in 1s" in bus.events
    assert not runtime.instances[("mybot", "bot.1")].running
    clock[0] += 1.5
    r.reconcile()
    assert runtime.instances[("mybot", "bot.1")].running
    runtime.crash("mybot", "bot.1", 3)
    r.reconcile()
    assert bus.events[-1] == "mybot: bot.1 exited with code 3; restarting in 2s"
    assert r.crash("mybot", "bot.1").count == 2


def test_a_new_reconciler_adopts_running_instances(world):
    r, state, runtime, bus, _ = world
    r.reconcile()
    again = rec.Reconciler(r.settings, r.cluster, runtime, bus)  # type: ignore[arg-type]
    again.reconcile()
    assert len(runtime.started) == 2


def test_a_handoff_waits_for_the_previous_node_to_stop(world):
    """In a swarm, an instance placed here that a sibling (lease valid) still runs is
    started only once that sibling reports it stopped; a sibling whose lease ended
    does not count."""
    import time as clock

    from peoplescloud.state import Member

    r, state, runtime, bus, _ = world
    with state.change() as s:
        for name, lease in (("n1", clock.time() + 60), ("n2", clock.time() + 60)):
            s.members[name] = Member(name, 2048, 1.0, 20, lease_expires=lease)
        s.apps["mybot"].scale = {"bot": 1}
        s.apps["mybot"].placement = {"bot.1": "n1"}
        s.observed["n2"] = {"mybot/bot.1": {"running": True}}
    r.reconcile()
    assert runtime.instances == {}  # n2 still runs it
    with state.change() as s:
        s.members["n2"].lease_expires = clock.time() - 60  # n2 is gone, past the margin
    r.reconcile()
    assert list(runtime.instances) == [("mybot", "bot.1")]
    with state.change() as s:  # a stale report must not stop the copy that runs here
        s.members["n2"].lease_expires = clock.time() + 60
    r.reconcile()
    assert list(runtime.instances) == [("mybot", "bot.1")]


class SlowStore:
    """A store whose fetches wait for `release` (a holder that is slow or away)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.release = threading.Event()
        self.fail: Exception | None = None

    def get(self, cid: str, dest: Path) -> None:
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        self.store.get(cid, dest)


def test_a_slug_that_cannot_be_fetched_yet_waits_without_holding_up_others(
    world, monkeypatch: pytest.MonkeyPatch
):
    r, state, runtime, bus, cid = world
    monkeypatch.setattr(rec, "FETCH_WAIT", 0.05)
    r.store = slow = SlowStore(r.store)
    with state.change() as s:  # a second app whose slug is already here
        other = App(name="other", owner="ann", created="t", scale={"bot": 1})
        other.releases.append(release(1, cid))
        other.current = 1
        s.apps["other"] = other
        s.apps["mybot"].releases.append(release(2, "sha256-" + "ab" * 32))
        s.apps["mybot"].current = 2
    (r.settings.slugs_dir / cid).mkdir(parents=True)  # other's slug: no fetch needed
    r.reconcile()  # returns at once although mybot's fetch hangs
    assert sorted(runtime.instances) == [("other", "bot.1")]
    assert r.start_failure("mybot", "bot.1").startswith("fetching its slug sha256-abab")

    slow.fail = NotFound("slug sha256-abab... could not be fetched from the swarm within 20s")
    slow.release.set()
    for _ in range(50):
        r.reconcile()
        if "could not be fetched" in r.start_failure("mybot", "bot.1"):
            break
        time.sleep(0.05)
    assert r.start_failure("mybot", "bot.1") == (
        "slug sha256-abab... could not be fetched from the swarm within 20s; trying again"
    )
    assert r.failures() == {
        ("mybot", "bot.1"): r.start_failure("mybot", "bot.1"),
        ("mybot", "bot.2"): r.start_failure("mybot", "bot.2"),
    }
    assert ("mybot", "bot.1") not in runtime.instances


def test_a_failure_reported_by_a_sibling_is_what_start_failure_says(world):
    r, *_ = world
    r.cluster.failed = lambda app, process: f"n2: cannot fetch the slug of {app} {process}"
    assert r.start_failure("mybot", "bot.1") == "n2: cannot fetch the slug of mybot bot.1"


def test_an_update_keeps_the_running_release_until_the_new_slug_is_here(
    world, monkeypatch: pytest.MonkeyPatch
):
    r, state, runtime, bus, cid = world
    monkeypatch.setattr(rec, "FETCH_WAIT", 0.05)
    r.reconcile()
    slow = SlowStore(r.store)
    r.store = slow
    new = r.settings.home / "slug-v2"
    new.mkdir()
    (new / "bot.py").write_text("# v2\n")
    new_cid = slow.store.add(new)
    with state.change() as s:
        s.apps["mybot"].releases.append(release(2, new_cid))
        s.apps["mybot"].current = 2
    r.reconcile()
    assert {s.release for s in runtime.instances.values()} == {"v1"}  # still serving
    slow.release.set()
    for _ in range(50):
        if {s.release for s in r.reconcile().values()} == {"v2"}:
            break
        time.sleep(0.05)
    assert {s.release for s in runtime.instances.values()} == {"v2"}


def test_the_slug_gc_keeps_the_slug_of_the_release_still_running(
    world, monkeypatch: pytest.MonkeyPatch
):
    """While a new release's slug is fetched, the old instance runs on: its slug stays."""
    r, state, runtime, bus, cid = world
    monkeypatch.setattr(rec, "FETCH_WAIT", 0.05)
    r.reconcile()
    r.store = slow = SlowStore(r.store)
    with state.change() as s:
        s.apps["mybot"].releases.append(release(2, "sha256-" + "cd" * 32))
        s.apps["mybot"].current = 2
    r.reconcile()
    assert {s.release for s in runtime.instances.values()} == {"v1"}  # still serving
    assert (r.settings.slugs_dir / cid / "bot.py").exists()  # from the v1 slug
    slow.release.set()
