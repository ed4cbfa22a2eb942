"""The slow loop: kubo kept running and connected, pins held, destroyed apps forgotten."""

from pathlib import Path

from peoplescloud.state import Snapshot
from swarm.pins import hold_pins, holders_of, wait_replicated
from swarm.upkeep import Upkeep
from tests.fakes_swarm import (
    FakeKubo,
    FakeLogBus,
    FakeState,
    FakeStore,
    app,
    member,
    release,
    settings,
)


def test_a_member_pins_its_share_lets_go_of_others_and_reports_what_it_holds():
    snap = Snapshot(apps={"mybot": app()})
    snap.apps["mybot"].releases = [release(1, "old"), release(2, "gone"), release(3, "new")]
    snap.pins = {"new": ["n1"], "far": ["n1"], "gone": ["n2"]}
    snap.held = {"n2": ["gone"]}
    state = FakeState(snap)
    store = FakeStore(pinned={"old", "gone", "fresh"}, unreachable={"far"})
    hold_pins(state, store, "n1", state.read())  # type: ignore[arg-type]
    # "gone" is held by n2; "old" by nobody else (never the last copy); "fresh"
    # is named by no release yet (a push here just added it); "far" has no holder.
    assert store.pins == {"new", "old", "fresh"}
    assert state.snap.held["n1"] == ["new", "old"]
    assert holders_of(state.snap, "new") == ["n1"]
    version = state.version
    hold_pins(state, store, "n1", state.read())  # type: ignore[arg-type]
    assert state.version == version  # nothing new to report


def test_a_push_waits_until_its_slug_is_held_where_the_leader_wants_it():
    state = FakeState(Snapshot(pins={"cid": ["n1", "n2"]}, held={"n1": ["cid"]}))
    said: list[str] = []

    def sleep(_seconds: float) -> None:
        state.snap.held["n2"] = ["cid"]

    wait_replicated(state, "cid", said.append, sleep=sleep)  # type: ignore[arg-type]
    assert said == ["-----> Slug pinned on 2 nodes: n1, n2"]
    said.clear()
    wait_replicated(state, "other", said.append, timeout=0, sleep=lambda _: None)  # type: ignore[arg-type]
    assert said == ["-----> Slug pinned on 0 node(s) so far: "]


def test_upkeep_restarts_kubo_and_dials_the_members_it_misses(tmp_path: Path):
    snap = Snapshot(
        members={
            "n1": member("n1", ipfs="/ip4/1.1.1.1/tcp/1/p2p/QmMe"),
            "n2": member("n2", ipfs="/ip4/1.1.1.2/tcp/1/p2p/QmTwo"),
            "n3": member("n3", ipfs="/ip4/1.1.1.3/tcp/1/p2p/QmThree"),
            "n4": member("n4"),  # no kubo known yet
        }
    )
    kubo = FakeKubo(running=False, connected={"QmTwo"})
    kubo.unreachable = {"/ip4/1.1.1.3/tcp/1/p2p/QmThree"}
    upkeep = Upkeep(settings(tmp_path), FakeState(snap), kubo, FakeStore(), FakeLogBus())  # type: ignore[arg-type]
    upkeep.maintain()
    assert kubo.starts == 1
    assert kubo.connected == {"QmTwo"}  # n3 does not answer yet; never itself
    kubo.unreachable.clear()
    upkeep.maintain()
    assert kubo.starts == 1
    assert kubo.connected == {"QmTwo", "QmThree"}


def test_an_app_destroyed_elsewhere_is_forgotten_here_unless_made_again(tmp_path: Path):
    s = settings(tmp_path)
    snap = Snapshot(destroyed={"gone": "t", "back": "t", "never": "t"}, apps={"back": app("back")})
    for name in ("gone", "back"):
        s.repo_path(name).mkdir(parents=True)
    logbus = FakeLogBus({"gone": ["a line"], "back": ["a line"]})
    Upkeep(s, FakeState(snap), FakeKubo(), FakeStore(), logbus).forget_destroyed(snap)  # type: ignore[arg-type]
    assert not s.repo_path("gone").exists()
    assert s.repo_path("back").exists()
    assert logbus.forgotten == ["gone"]


def test_current_slugs_held_here_are_unpacked_ahead_of_a_failover(tmp_path: Path):
    """Held and current, not running here: unpacked, so a failover starts at once.
    Running here (a working copy exists), old, or held elsewhere: not kept."""
    s = settings(tmp_path)
    snap = Snapshot(apps={"mybot": app(), "other": app("other"), "site": app("site")})
    snap.apps["mybot"].releases = [release(1, "old"), release(2, "cur")]
    snap.apps["mybot"].current = 2
    snap.apps["other"].releases = [release(1, "runs")]
    snap.apps["site"].releases = [release(1, "elsewhere")]
    snap.held = {"n1": ["old", "cur", "runs"], "n2": ["elsewhere"]}
    s.slug_path("runs").mkdir(parents=True)
    store = FakeStore()
    store.ready = {"old", "stale"}
    upkeep = Upkeep(s, FakeState(snap), FakeKubo(), store, FakeLogBus())  # type: ignore[arg-type]
    upkeep.prepare_slugs(snap)
    assert store.ready == {"cur"}
