"""The lease: renewed through the consensus, written for the watchdogs, and
everything stopped when it cannot be renewed before it ends."""

import time
from pathlib import Path

from peoplescloud.runtime.base import InstanceKey, InstanceStatus
from peoplescloud.runtime.lease import GRACE, read_lease
from peoplescloud.settings import SwarmSettings
from peoplescloud.state import Snapshot
from swarm.lease import Lease, stop_everything
from swarm.raft import NoQuorum, RaftTimings
from tests.fakes_swarm import NOW, FakeLogBus, FakeRuntime, FakeState, me, member, settings


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, members: list[str]) -> tuple[Lease, FakeState, Clock, list[str]]:
    s = settings(tmp_path)
    state = FakeState(Snapshot(members={n: member(n, lease=0.0, leaving=True) for n in members}))
    clock, stopped = Clock(), []
    return Lease(s, me(s), state, stopped.append, clock), state, clock, stopped


def test_a_member_renews_its_lease_and_writes_it_for_the_watchdogs(tmp_path: Path):
    lease, state, clock, stopped = make(tmp_path, ["n1"])
    assert not lease.may_run()
    lease.renew()
    entry = state.snap.members["n1"]
    assert entry.lease_expires == NOW + 3  # the default lease
    assert entry.leaving  # kept from the old entry
    assert (entry.raft, entry.ipfs) == ("127.0.0.1:7002", "/ip4/127.0.0.1/tcp/4001/p2p/QmMe")
    assert read_lease(tmp_path / "run" / "lease") == NOW + 3
    assert lease.may_run()
    clock.now += 3
    assert not lease.may_run()
    assert stopped == []


def test_a_node_that_is_no_member_has_no_lease(tmp_path: Path):
    lease, state, _, _ = make(tmp_path, ["n2"])
    lease.renew()
    assert not lease.may_run()
    assert "n1" not in state.snap.members
    assert read_lease(tmp_path / "run" / "lease") is None


def test_a_cut_off_member_stops_everything_before_its_lease_ends(tmp_path: Path):
    lease, state, clock, stopped = make(tmp_path, ["n1"])
    lease.renew()
    state.fail = NoQuorum("no quorum")
    for _ in range(2):  # renewed every quarter lease: 2.25 s, then 1.5 s left: try again
        clock.now += 0.75
        lease.renew()
        assert stopped == [] and lease.may_run()
    clock.now += 0.75  # less than a second left
    lease.renew()
    assert stopped == ["lease not renewed (no quorum)"]


def test_a_renewal_waits_no_longer_than_until_the_next_one(tmp_path: Path):
    """A slow commit must not hold the next try back: the lease is short."""
    lease, state, _, _ = make(tmp_path, ["n1"])
    lease.renew()
    assert lease.settings.swarm.renew_every == 0.75
    assert state.timeouts == [0.75]


def test_a_member_that_never_had_a_lease_stops_nothing(tmp_path: Path):
    lease, state, _, stopped = make(tmp_path, ["n1"])
    state.fail = NoQuorum("no quorum")
    lease.renew()
    assert stopped == []


def test_stop_everything_stops_what_runs_and_says_why():
    up = InstanceStatus("mybot", "web.1", "v2", True)
    down = InstanceStatus("mybot", "bot.1", "v2", False, exit_code=1)
    runtime, logbus = FakeRuntime([up, down]), FakeLogBus()
    stop_everything(runtime, logbus, "lease not renewed")  # type: ignore[arg-type]
    assert runtime.stopped == [(InstanceKey("mybot", "web.1", "v2"), 1)]
    assert logbus.events == [("mybot", "stopping web.1: lease not renewed")]


def test_a_cut_off_member_stops_its_instances_at_once_not_one_by_one():
    """Four instances that each take a second to stop are all gone in about a
    second: one by one, they would outlast what is left of the lease."""

    class SlowRuntime(FakeRuntime):
        def stop(self, key: InstanceKey, timeout: float = 10) -> None:
            time.sleep(1.0)
            super().stop(key, timeout)

    running = [InstanceStatus("mybot", f"bot.{n}", "v2", True) for n in range(1, 5)]
    runtime = SlowRuntime(running)
    started = time.monotonic()
    stop_everything(runtime, FakeLogBus(), "lease not renewed")  # type: ignore[arg-type]
    assert len(runtime.stopped) == 4
    assert time.monotonic() - started < 2.5


def test_a_leader_election_fits_in_a_lease():
    """The leader dies just after a member renewed: the others elect a new one
    within `election_max`, and the member's next try after that is agreed (a
    quarter of a try's wait for the commit) before pc-shim's SIGTERM, GRACE
    before the lease's end (the daemon stops everything then too)."""
    timings, swarm = RaftTimings(), SwarmSettings()
    stopped_at = swarm.lease_seconds - GRACE
    assert timings.election_max + swarm.renew_every * 1.25 <= stopped_at


def test_slow_commits_do_not_space_the_renewals_out():
    """Each renewal starts a quarter lease after the last one started, however long
    that one waited for its commit: then a lease renewed in time always has half
    a lease left on file, more than pc-shim's GRACE (so it never stops the
    instances of a node whose renewals go through)."""
    import asyncio

    from peoplescloud.bridge import every
    from peoplescloud.runtime.lease import GRACE
    from peoplescloud.settings import LEASE_MIN

    started: list[float] = []

    def slow_renewal() -> None:
        started.append(time.monotonic())
        time.sleep(0.2)  # a commit that takes most of the quarter lease

    async def life() -> None:
        stop = asyncio.Event()
        loop = asyncio.ensure_future(every(0.3, slow_renewal, stop, steady=True))
        await asyncio.sleep(1.45)
        stop.set()
        await asyncio.wait_for(loop, 5)

    asyncio.run(life())
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    assert len(started) >= 4 and max(gaps) < 0.3 + 0.1  # not 0.3 + 0.2
    assert LEASE_MIN / 2 > GRACE
