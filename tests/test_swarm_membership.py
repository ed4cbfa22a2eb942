"""Who is a member: seed, invite, join, admit, leave, remove, and the node routes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import pytest

from peoplescloud.errors import Forbidden, NotFound, UsageError
from peoplescloud.state import Snapshot, State, User
from swarm.identity import SwarmIdentity
from swarm.invite import InviteError, parse_invite
from swarm.membership import Membership, expel, seed, seed_when_elected
from swarm.raft import NoQuorum
from swarm.routes import NodeRoutes
from tests.fakes_swarm import NOW, FakeState, app, local, me, member, settings

IDENTITY = SwarmIdentity.create("friends")
JOINER = {"memory_mb": 1024, "cpus": 0.5, "max_apps": 5, "address": "h:1", "raft": "h:2"}


def make(tmp_path: Path, snap: Snapshot | None = None) -> tuple[Membership, FakeState]:
    state = FakeState(snap or Snapshot(members={"n1": member("n1", raft="127.0.0.1:7002")}))
    return Membership(me(settings(tmp_path)), IDENTITY, state), state  # type: ignore[arg-type]


def test_an_invite_lets_one_node_join_once(tmp_path: Path):
    membership, state = make(tmp_path)
    answer = asyncio.run(membership.invite_route("n1", {"ttl": 600}))
    invite = parse_invite(answer["token"])
    assert invite.address == "127.0.0.1:7001"
    assert membership.invite_key(invite.invite_id) == invite.key
    joined = asyncio.run(membership.join_route("n2", invite.invite_id, JOINER))
    assert joined["secret"] == IDENTITY.secret and joined["sponsor_name"] == "n1"
    assert joined["partners"] == ["127.0.0.1:7002"]
    assert state.snap.members["n2"].raft == "h:2"
    with pytest.raises(InviteError):
        membership.invite_key(invite.invite_id)  # used
    with pytest.raises(InviteError, match="between 60 s and a week"):
        asyncio.run(membership.invite_route("n1", {"ttl": 5}))


def test_a_joined_node_is_admitted_to_raft_with_the_address_it_joined_with(tmp_path: Path):
    membership, state = make(tmp_path)
    state.snap.members["n2"] = member("n2", raft="h:2")
    with pytest.raises(InviteError, match="has not joined with that address"):
        asyncio.run(membership.admit_route("n2", {"raft": "elsewhere:2"}))
    asyncio.run(membership.admit_route("n2", {"raft": "h:2"}))
    asyncio.run(membership.admit_route("n2", {"raft": "h:2"}))  # again: no second add
    assert state.raft_members == ["h:2"]


def test_a_member_leaves_once_it_runs_nothing(tmp_path: Path):
    snap = Snapshot(members={"n1": member("n1"), "n2": member("n2", raft="h:2")})
    snap.apps["mybot"] = app()
    snap.apps["mybot"].placement = {"web.1": "n2"}
    snap.pins, snap.held = {"bafyslug": ["n1", "n2"]}, {"n2": ["bafyslug"]}
    membership, state = make(tmp_path, snap)
    state.raft_members = ["127.0.0.1:7002", "h:2"]
    with pytest.raises(InviteError, match="is not leaving"):
        asyncio.run(membership.remove_route("n2", {}))
    asyncio.run(membership.leave_route("n2", {}))
    assert state.snap.members["n2"].leaving
    with pytest.raises(InviteError, match="still runs 1 instance"):
        asyncio.run(membership.remove_route("n2", {}))
    state.snap.apps["mybot"].placement = {"web.1": "n1"}
    asyncio.run(membership.remove_route("n2", {}))
    assert set(state.snap.members) == {"n1"}
    assert state.snap.pins == {"bafyslug": ["n1"]} and state.snap.held == {}
    assert state.raft_members == ["127.0.0.1:7002"]
    assert asyncio.run(membership.step_down_route("n1", {})) == {"leader": None}


def dead_swarm() -> Snapshot:
    """n1 (this node) up, n2 dead for a minute, n3 up; n2 ran the bot and held its slug."""
    snap = Snapshot(
        members={
            "n1": member("n1", raft="127.0.0.1:7002"),
            "n2": member("n2", lease=NOW - 60, raft="h2:2"),
            "n3": member("n3", raft="h3:2"),
        }
    )
    snap.apps["mybot"] = app(scale={"bot": 1})
    snap.apps["mybot"].placement = {"bot.1": "n2"}
    snap.pins = {"bafyslug": ["n1", "n2", "n3"]}
    snap.held = {"n1": ["bafyslug"], "n2": ["bafyslug"], "n3": ["bafyslug"]}
    snap.observed = {"n2": {"mybot/bot.1": {"running": True}}}
    return snap


def test_a_dead_member_is_removed_from_raft_and_the_state(tmp_path: Path):
    membership, state = make(tmp_path, dead_swarm())
    state.raft_members = ["127.0.0.1:7002", "h2:2", "h3:2"]
    membership.me = me(settings(tmp_path, name="n1"))
    with pytest.raises(Forbidden):  # another member cannot ask it
        asyncio.run(membership.expel_route("n3", {"node": "n2"}))
    with mock.patch("swarm.membership.time.time", return_value=NOW):
        asyncio.run(membership.expel_route("n1", {"node": "n2"}))
    assert state.raft_members == ["127.0.0.1:7002", "h3:2"]
    snap = state.snap
    assert sorted(snap.members) == ["n1", "n3"]
    assert snap.pins == {"bafyslug": ["n1", "n3"]} and "n2" not in snap.held
    assert "n2" not in snap.observed
    assert [e["what"] for e in snap.events.values()] == ["swarm:remove n2 (pc swarm remove on n1)"]


@pytest.mark.parametrize(
    ("node", "lease", "error"),
    [
        ("n9", NOW - 60, "no member named 'n9'"),
        ("n1", NOW - 60, "does not remove itself"),
        ("n2", NOW + 1, "n2 is up: only a member whose lease has surely ended"),
        ("n2", NOW - 1, "n2 is suspect"),  # within the margin: it may still run
    ],
)
def test_only_a_dead_member_is_removed(tmp_path: Path, node: str, lease: float, error: str):
    snap = dead_swarm()
    snap.members["n2"].lease_expires = lease
    membership, state = make(tmp_path, snap)
    with pytest.raises(UsageError, match=error):
        expel(state, node, "n1", 4.5, NOW)  # type: ignore[arg-type]
    assert sorted(state.snap.members) == ["n1", "n2", "n3"]


def test_without_a_majority_the_host_is_told_what_to_do(tmp_path: Path):
    membership, state = make(tmp_path, dead_swarm())
    state.fail = NoQuorum("the swarm has no quorum (1 of 3 members answer): nothing was changed")
    with pytest.raises(NoQuorum, match="remove dead members one at a time, while most are alive"):
        expel(state, "n2", "n1", 4.5, NOW)  # type: ignore[arg-type]


def test_the_first_member_brings_the_lone_nodes_users_and_apps(tmp_path: Path):
    state = FakeState()
    lone = Snapshot(users={"ann": User("ann", ["ssh-ed25519 AAAA"])}, apps={"mybot": app()})
    seed(state, me(settings(tmp_path)), lone)  # type: ignore[arg-type]
    assert set(state.snap.users) == {"ann"} and set(state.snap.apps) == {"mybot"}
    assert state.snap.members["n1"].address == "127.0.0.1:7001"


def test_seeding_waits_until_the_swarm_elected_its_first_member(tmp_path: Path):
    state, sleeps = FakeState(), []
    state.fail = NoQuorum("no leader yet")

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        state.fail = None

    s = settings(tmp_path)
    seed_when_elected(state, me(s), State(s.state_file), sleep=sleep)  # type: ignore[arg-type]
    assert sleeps == [0.5] and "n1" in state.snap.members


def test_node_routes_answer_status_users_logs_and_restarts(tmp_path: Path):
    s = settings(tmp_path)
    parts = local(s)
    parts.logbus.lines["mybot"] = ["t1 app[web.1]: a", "t2 app[web.1]: b"]  # type: ignore[attr-defined]
    state = FakeState(Snapshot(members={"n1": member("n1")}))
    routes = NodeRoutes(IDENTITY, state, parts)  # type: ignore[arg-type]
    status = asyncio.run(routes.status("n2", {}))
    assert status["name"] == "friends"
    assert [(m["name"], m["state"], m["instances"]) for m in status["members"]] == [
        ("n1", "down", 0)
    ]
    with pytest.raises(Forbidden):
        asyncio.run(routes.user_add("n2", {"name": "bob", "key": "ssh-ed25519 AAAA"}))

    async def read(stream) -> list[bytes]:
        return [chunk async for chunk in await stream]

    assert asyncio.run(read(routes.logs("n2", {"app": "mybot", "lines": 1}))) == [
        b"t2 app[web.1]: b\n"
    ]
    asyncio.run(routes.restart("n2", {"app": "mybot", "ptype": "web"}))
    assert parts.reconciler.restarts == [("mybot", "web")]  # type: ignore[attr-defined]
    with pytest.raises(NotFound, match="n1 holds no git history of mybot"):
        asyncio.run(routes.repo("n2", {"app": "mybot"}))
