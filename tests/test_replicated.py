"""The swarm's replicated state on real pysyncobj members talking over loopback,
each with its own port and data directory, with short Raft timings."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peoplescloud.state import App, Member, User
from swarm.replicated import (
    Conflict,
    NoQuorum,
    RaftTimings,
    ReplicatedState,
    SnapshotMachine,
    diff,
)
from tests import conftest

FAST = RaftTimings(
    heartbeat=0.05,
    election_min=0.3,
    election_max=0.6,
    connection_timeout=1.0,
    reconnect=0.2,
    leader_fallback=1.0,
    commit_timeout=3.0,
)
SECRET = "swarm secret for tests"


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


wait_for = functools.partial(conftest.wait_for, timeout=15, interval=0.05)


class Swarm:
    """Members started by a test; every one still running is closed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, ReplicatedState] = {}

    def start(self, addr: str, partners: list[str], secret: str = SECRET) -> ReplicatedState:
        member = ReplicatedState(addr, partners, secret, self.root / addr, FAST)
        self.running[addr] = member
        return member

    def start_all(self, n: int) -> list[ReplicatedState]:
        addrs = [free_address() for _ in range(n)]
        members = [self.start(a, addrs) for a in addrs]
        wait_for(lambda: agreed_leader(members), "the members agree on a leader")
        return members

    def stop(self, member: ReplicatedState) -> None:
        member.close()
        del self.running[member.members()[0]]

    def close(self) -> None:
        for member in self.running.values():
            member.close()


def agreed_leader(members: list[ReplicatedState]) -> str | None:
    leaders = {m.leader() for m in members}
    leader = leaders.pop() if len(leaders) == 1 else None
    return leader if leader in members[0].members() else None


def by_address(members: list[ReplicatedState], addr: str | None) -> ReplicatedState:
    return next(m for m in members if m.members()[0] == addr)


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    s = Swarm(tmp_path)
    yield s
    s.close()


def add_app(member: ReplicatedState, name: str) -> None:
    with member.change() as s:
        s.apps[name] = App(name=name, owner="ann", created="2026-11-23T22:00:00Z")


def test_three_members_agree_on_a_change_made_on_any(swarm: Swarm):
    a, b, c = swarm.start_all(3)
    with a.change() as s:
        s.users["ann"] = User(name="ann", keys=["ssh-ed25519 AAAA"], admin=True)
    add_app(b, "mybot")
    wait_for(lambda: "mybot" in c.read().apps, "c sees b's app")
    with c.change() as s:
        s.app("mybot").config["TOKEN"] = "x"
    for m in (a, b, c):
        wait_for(lambda m=m: m.version == 3, "every member applied the three changes")
        snap = m.read()
        assert snap.user_for_key("ssh-ed25519 AAAA") == "ann"
        assert snap.app("mybot").config == {"TOKEN": "x"}


def test_a_block_that_raises_changes_nothing_and_reads_are_copies(swarm: Swarm):
    (a,) = swarm.start_all(1)
    add_app(a, "mybot")
    with pytest.raises(RuntimeError), a.change() as s:
        del s.apps["mybot"]
        raise RuntimeError("half-way")
    a.read().apps["mybot"].config["X"] = "1"
    assert a.read().apps["mybot"].config == {}
    assert a.version == 1


def test_a_change_that_does_not_queue_passes_a_slow_one(swarm: Swarm):
    """A lease renewal (queue=False) never waits behind this member's other changes."""
    (a,) = swarm.start_all(1)
    inside, release = threading.Event(), threading.Event()

    def slow() -> None:
        with a.change() as s:
            inside.set()
            release.wait(10)  # a change that takes long (a commit without quorum)
            s.apps["slow"] = App(name="slow", owner="ann", created="t")

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        assert inside.wait(10)
        with a.change(queue=False) as s:
            s.members["n1"] = Member("n1", 2048, 1.0, 20, lease_expires=1.0)
        assert "n1" in a.read().members and "slow" not in a.read().apps
    finally:
        release.set()
        worker.join()
    assert set(a.read().apps) == {"slow"}


def test_new_leader_after_the_leader_stops(swarm: Swarm):
    members = swarm.start_all(3)
    old = by_address(members, agreed_leader(members))
    swarm.stop(old)
    survivors = [m for m in members if m is not old]
    wait_for(lambda: agreed_leader(survivors) not in (None, old.members()[0]), "a new leader")
    add_app(survivors[0], "mybot")
    wait_for(lambda: "mybot" in survivors[1].read().apps, "the other survivor has the change")


def test_an_isolated_member_refuses_changes_and_keeps_its_state(swarm: Swarm):
    a, b, c = swarm.start_all(3)
    add_app(a, "mybot")
    wait_for(lambda: "mybot" in c.read().apps, "c has the app")
    addr_a, addr_b = a.members()[0], b.members()[0]
    swarm.stop(a)
    swarm.stop(b)
    wait_for(lambda: not c.status().has_quorum, "c notices it is alone")
    before = c.read()
    with pytest.raises(NoQuorum) as refused, c.change(timeout=1.0) as s:
        s.app("mybot").config["X"] = "1"
    assert str(refused.value) == (
        "the swarm has no quorum (1 of 3 members answer): nothing was changed; "
        "apps keep running wherever a majority of the swarm answers"
    )
    assert c.read() == before
    # When the others come back, the refused change does not turn up later.
    a = swarm.start(addr_a, c.members())
    b = swarm.start(addr_b, c.members())
    wait_for(lambda: agreed_leader([a, b, c]), "the swarm recovers")
    add_app(c, "other")
    for m in (a, b, c):
        wait_for(lambda m=m: "other" in m.read().apps, "everyone has the next change")
        assert m.read().app("mybot").config == {}


def test_members_restarted_from_disk_recover_the_state(swarm: Swarm):
    a, b, c = swarm.start_all(3)
    add_app(a, "first")
    wait_for(lambda: "first" in c.read().apps, "c has the first app")
    swarm.stop(c)
    add_app(a, "second")  # c misses this one while it is down
    addrs = a.members()
    swarm.stop(a)
    swarm.stop(b)
    restarted = [swarm.start(addr, addrs) for addr in addrs]
    wait_for(lambda: agreed_leader(restarted), "the restarted members elect a leader")
    for m in restarted:
        wait_for(lambda m=m: set(m.read().apps) == {"first", "second"}, "state recovered")


def test_a_member_restarted_from_its_full_dump(swarm: Swarm):
    a, b, c = swarm.start_all(3)
    add_app(a, "first")
    add_app(a, "second")
    wait_for(lambda: c.version == 2, "c applied both changes")
    dump = swarm.root / c.members()[0] / "raft.dump"
    c.compact()
    wait_for(dump.exists, "c wrote its full dump")
    addrs = c.members()
    for m in (a, b, c):
        swarm.stop(m)
    c = swarm.start(addrs[0], addrs)  # alone: nobody else can tell it the state
    wait_for(lambda: set(c.read().apps) == {"first", "second"}, "c recovered from its dump")
    assert c.version == 2


def test_a_member_with_the_wrong_secret_gets_nothing(swarm: Swarm):
    addrs = [free_address() for _ in range(3)]
    a, b = (swarm.start(addr, addrs) for addr in addrs[:2])
    intruder = swarm.start(addrs[2], addrs, secret="guessed")
    wait_for(lambda: agreed_leader([a, b]), "the two members elect a leader")
    add_app(a, "mybot")
    wait_for(lambda: "mybot" in b.read().apps, "b has the change")
    time.sleep(1.0)  # many heartbeats and reconnection attempts
    assert intruder.read().apps == {}
    assert intruder.version == 0
    assert not any(up for addr, up in intruder.status().members.items() if addr != addrs[2])
    assert a.status().members[addrs[2]] is False


def test_concurrent_changes_of_one_app_one_wins_the_other_conflicts(swarm: Swarm):
    a, b, c = swarm.start_all(3)
    add_app(a, "mybot")
    wait_for(lambda: all("mybot" in m.read().apps for m in (a, b, c)), "everyone has the app")
    with pytest.raises(Conflict, match="another member changed apps/mybot"), a.change() as sa:
        sa.app("mybot").config["WHO"] = "a"
        with b.change() as sb:  # b starts from the same version and finishes first
            sb.app("mybot").config["WHO"] = "b"
    for m in (a, b, c):
        wait_for(lambda m=m: m.version == 2, "everyone applied exactly one more change")
        assert m.read().app("mybot").config == {"WHO": "b"}


def test_concurrent_changes_of_different_apps_both_apply(swarm: Swarm):
    a, b, _ = swarm.start_all(3)
    with a.change() as sa:
        sa.apps["one"] = App(name="one", owner="ann", created="now")
        add_app(b, "two")  # agreed while a's change is still being edited
    for m in (a, b):
        wait_for(lambda m=m: set(m.read().apps) == {"one", "two"}, "both apps everywhere")


def test_a_fourth_member_joins_gets_the_state_and_can_leave(swarm: Swarm):
    members = swarm.start_all(3)
    a = members[0]
    add_app(a, "mybot")
    for m in members:
        wait_for(lambda m=m: m.version == 1, "every member applied the change")
        m.compact()  # the newcomer then gets a full dump, not the log from the start
    d_addr = free_address()
    d = swarm.start(d_addr, a.members())
    a.add_member(d_addr)
    wait_for(lambda: "mybot" in d.read().apps, "d received the state")
    assert sorted(d.members()) == sorted(a.members())
    assert len(a.members()) == 4
    add_app(d, "from-d")
    for m in members:
        wait_for(lambda m=m: "from-d" in m.read().apps, "d's change reaches everyone")
    a.remove_member(d_addr)
    wait_for(lambda: all(d_addr not in m.members() for m in members), "d is gone everywhere")


def test_on_change_is_called_with_each_new_version(swarm: Swarm):
    (a,) = swarm.start_all(1)
    seen: list[int] = []
    a.on_change(seen.append)
    add_app(a, "one")
    add_app(a, "two")
    assert seen == [1, 2]  # change() returns after this member applied it


def test_diff_and_apply_are_entry_by_entry():
    machine = SnapshotMachine()
    _, base = machine.read()
    new = {**base, "apps": {"mybot": {"name": "mybot"}}}
    edits = diff(base, new)
    assert edits == [("apps", "mybot", [], [{"name": "mybot"}])]
    assert machine.apply(edits) == 1
    assert machine.apply(edits) is None  # the entry no longer has its old value
    assert machine.read() == (1, new)
    assert diff(new, new) == []


def test_a_field_version_moves_only_when_that_field_changes():
    # The router's domain table and the SSH key index rebuild on it: a lease
    # renewal (members, every second) must not make them copy the whole state.
    machine = SnapshotMachine()
    _, base = machine.read()
    with_user = {**base, "users": {"ann": {"name": "ann"}}}
    assert machine.apply(diff(base, with_user)) == 1
    renewed = {**with_user, "members": {"n1": {"name": "n1"}}}
    assert machine.apply(diff(with_user, renewed)) == 2
    assert machine.version_of(frozenset({"users"})) == 1
    assert machine.version_of(frozenset({"users", "members"})) == 2
    assert machine.version_of(frozenset({"domains"})) == 0
    machine.load({"version": 7, "data": renewed})  # a whole new state: every field may differ
    assert machine.version_of(frozenset({"users"})) == 7


def test_a_command_sent_twice_is_applied_once():
    from swarm.raft import _Consumer

    consumer = _Consumer(SnapshotMachine())
    edits = [("apps", "mybot", [], [{"name": "mybot"}])]
    # As Raft applies a log entry: the same command twice (sent again after the
    # leader changed) answers like the first time instead of conflicting with itself.
    assert consumer.apply("id-1", edits, _doApply=True) == 1
    assert consumer.apply("id-1", edits, _doApply=True) == 1
    assert consumer.apply("id-2", edits, _doApply=True) is None
    restored = _Consumer(SnapshotMachine())
    restored._deserialize(consumer._serialize())
    assert restored.apply("id-1", edits, _doApply=True) == 1
    assert restored.machine.read() == consumer.machine.read()


def test_two_members_recording_events_at_once_both_apply():
    """Events are entries of a dict keyed by a unique id: members that append at
    the same moment touch different entries (a list would Conflict)."""
    from dataclasses import asdict

    from peoplescloud.state import snapshot_from_dict

    machine = SnapshotMachine()
    _, base = machine.read()
    drafts = [snapshot_from_dict(base), snapshot_from_dict(base)]
    drafts[0].add_event("ann", "mybot", "ps:restart")
    drafts[1].add_event("bob", "mybot", "config: Set X")
    for draft in drafts:
        assert machine.apply(diff(base, asdict(draft))) is not None
    assert sorted(e["user"] for e in machine.read()[1]["events"].values()) == ["ann", "bob"]
