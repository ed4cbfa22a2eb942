"""The leader's decisions written into the state: placement and pins."""

import logging
from pathlib import Path

import pytest

from peoplescloud.state import Snapshot
from swarm.planner import Planner, plan
from swarm.raft import NoQuorum
from tests.fakes_swarm import NOW, FakeState, app, member, settings


def swarm() -> Snapshot:
    snap = Snapshot(members={"n1": member("n1"), "n2": member("n2", lease=NOW - 100)})
    snap.apps["mybot"] = app(scale={"web": 1, "bot": 2})
    return snap


def test_the_plan_places_every_instance_on_up_members_and_pins_the_slug(tmp_path: Path):
    decided = plan(swarm(), settings(tmp_path), NOW)
    assert decided.placement == {"mybot": {"bot.1": "n1", "bot.2": "n1", "web.1": "n1"}}
    assert decided.pins == {"bafyslug": ["n1"]}
    assert decided.differs(swarm())


def test_the_leader_writes_its_decision_once(tmp_path: Path):
    state = FakeState(swarm())
    planner = Planner(settings(tmp_path), state, clock=lambda: NOW)  # type: ignore[arg-type]
    planner.decide(state.read())
    assert state.snap.apps["mybot"].placement["web.1"] == "n1"
    assert state.snap.pins == {"bafyslug": ["n1"]}
    assert state.version == 1
    planner.decide(state.read())  # nothing changed: nothing written
    assert state.version == 1


def test_a_decision_without_quorum_waits_for_the_next_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    state = FakeState(swarm())
    state.fail = NoQuorum("no quorum")
    Planner(settings(tmp_path), state, clock=lambda: NOW).decide(state.read())  # type: ignore[arg-type]
    assert state.version == 0
    assert "placement not written this round: no quorum" in caplog.text


def test_the_next_plan_is_due_when_a_members_lease_has_surely_passed(tmp_path: Path):
    """Failover waits on nothing more than the lease and the margin: the plan runs
    again right when the first member that is up or suspect turns down."""
    s = settings(tmp_path)
    margin = s.swarm.margin_seconds
    snap = Snapshot(
        members={
            "n1": member("n1", lease=NOW + 2),
            "n2": member("n2", lease=NOW - margin / 2),  # suspect
            "n3": member("n3", lease=NOW - 100),  # down already: nothing more to wait for
        }
    )
    planner = Planner(s, FakeState(snap), clock=lambda: NOW)  # type: ignore[arg-type]
    assert planner.next_change(snap) == pytest.approx(margin / 2)
    del snap.members["n2"]
    assert planner.next_change(snap) == pytest.approx(2 + margin)
    del snap.members["n1"]
    assert planner.next_change(snap) == float("inf")


def test_an_instance_no_member_can_take_says_why(tmp_path: Path):
    snap = Snapshot(members={"n1": member("n1")})
    snap.apps["mybot"] = app(scale={"bot": 5})  # 5 x 512 MB on a 2048 MB member
    decided = plan(snap, settings(tmp_path), NOW)
    assert sorted(decided.placement["mybot"]) == ["bot.1", "bot.2", "bot.3", "bot.4"]
    assert decided.unplaced == {
        ("mybot", "bot.5"): "no member has room for 512 MB and 0.25 CPU: n1 has 0 MB free"
    }


def test_a_leader_that_is_no_live_member_is_gone(tmp_path: Path):
    """The leader died with the node whose instances fail over: the member elected
    next must place them at once, so the others look soon whether they lead."""
    snap = Snapshot(
        members={
            "n1": member("n1", lease=NOW + 2, raft="10.0.0.1:7002"),
            "n2": member("n2", lease=NOW - 0.1, raft="10.0.0.2:7002"),  # its lease ended
        }
    )
    planner = Planner(settings(tmp_path), FakeState(snap), clock=lambda: NOW)  # type: ignore[arg-type]
    assert not planner.leader_gone(snap, "10.0.0.1:7002")
    assert planner.leader_gone(snap, "10.0.0.2:7002")
    assert planner.leader_gone(snap, None)  # an election under way
    for m in snap.members.values():  # nothing agreed for a minute: no majority
        m.lease_expires = NOW - 60
    assert not planner.leader_gone(snap, None)
