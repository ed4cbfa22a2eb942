"""SwarmCluster composed on fakes: it starts (serving the peer API, seeding,
taking a lease), answers the core's questions, ticks, and closes; and the
swarm's entry points the core loads by name."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

import pytest

from peoplescloud.errors import PCError
from peoplescloud.runtime.base import InstanceStatus
from peoplescloud.state import Snapshot
from swarm import entry
from swarm.cluster import SwarmCluster
from swarm.identity import SwarmIdentity
from swarm.observed import report
from tests.conftest import free_port
from tests.fakes_swarm import FakeKubo, FakeState, FakeStore, app, local, member, settings


def make(tmp_path: Path, snap: Snapshot | None = None) -> tuple[SwarmCluster, FakeState, FakeKubo]:
    s = settings(tmp_path, peer_port=free_port())
    identity = SwarmIdentity.create("friends")
    identity.save(s.swarm_file)
    state, kubo = FakeState(snap, leader=f"127.0.0.1:{s.raft_port}"), FakeKubo()
    return SwarmCluster(s, identity, state, kubo, FakeStore()), state, kubo  # type: ignore[arg-type]


def test_the_peer_api_listens_only_where_siblings_dial_it(tmp_path: Path):
    cluster, _state, _kubo = make(tmp_path)
    cluster.settings = dataclasses.replace(cluster.settings, listen="0.0.0.0")
    assert cluster.settings.advertised == "127.0.0.1"  # no `advertise`: a one-host swarm

    async def life() -> None:
        stop = asyncio.Event()
        loops = await cluster.start(local(cluster.settings), stop, lambda: None)
        assert cluster._runner is not None
        assert [a[0] for a in cluster._runner.addresses] == ["127.0.0.1"]  # not 0.0.0.0
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), timeout=5)
        await cluster.close()

    asyncio.run(life())


def test_a_first_member_starts_seeds_leads_and_closes(tmp_path: Path):
    cluster, state, kubo = make(tmp_path)
    parts = local(cluster.settings)
    web = InstanceStatus("mybot", "web.1", "v1", True)
    parts.reconciler.running = {web.key: web}  # type: ignore[attr-defined]
    woken: list[bool] = []
    assert not cluster.may_run()

    async def life() -> None:
        stop = asyncio.Event()
        loops = await cluster.start(parts, stop, lambda: woken.append(True))
        assert cluster.may_run()  # the first tick took a lease
        assert state.snap.members["n1"].lease_expires > 0
        assert state.snap.observed["n1"] == report({web.key: web}, {})
        assert [row.name for row in cluster.members()] == ["n1"]
        assert cluster.describe() == f", swarm friends (peer API :{cluster.settings.peer_port})"
        ((callback, only),) = state.listeners
        assert only == {"apps"}
        callback(1)  # from Raft's thread: the reconciler wakes on the loop
        await asyncio.sleep(0)
        assert woken == [True]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        cluster.settings.swarm_file.unlink()  # `pc swarm leave` finished
        await asyncio.wait_for(stop.wait(), timeout=5)  # the tick noticed
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        await cluster.close()

    asyncio.run(life())
    assert state.closed and kubo.stops == 1


def test_what_the_siblings_run_answers_the_reconciler(tmp_path: Path):
    snap = Snapshot(members={"n1": member("n1"), "n2": member("n2", lease=1e12)})
    snap.apps["mybot"] = app(scale={"web": 1, "bot": 1})
    snap.apps["mybot"].placement = {"web.1": "n2", "bot.1": "n2"}
    web = InstanceStatus("mybot", "web.1", "v1", True)
    snap.observed["n2"] = report({web.key: web}, {("mybot", "bot.1"): "no slug"})
    cluster, _, _ = make(tmp_path, snap)
    assert cluster.instances_elsewhere() == {web.key: web}
    assert cluster.busy_elsewhere(snap) == {("mybot", "web.1")}
    assert cluster.failed_elsewhere("mybot", "bot.1") == "n2: no slug"
    assert cluster.hop_key() == cluster.identity.secret_bytes
    with pytest.raises(PCError, match="has not started"):
        cluster.sibling_routers("mybot")


def test_the_entry_points_the_core_loads(tmp_path: Path):
    p = argparse.ArgumentParser()
    entry.add_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(["swarm", "invite", "--ttl", "60"])
    assert args.func.__name__ == "cmd_invite" and args.ttl == 60
    (kubo,) = entry.checks(settings(tmp_path))
    assert kubo.name == "ipfs" and not kubo.required
    with pytest.raises(PCError, match="this node is in no swarm"):
        entry.ask_daemon(settings(tmp_path), "users", {})
    with pytest.raises(PCError, match="is gone"):
        entry.open_cluster(settings(tmp_path))


def test_an_instance_no_member_can_take_says_so_in_ps(tmp_path: Path):
    snap = Snapshot(members={"n1": member("n1", lease=1e12)})
    snap.apps["mybot"] = app(scale={"bot": 5})
    snap.apps["mybot"].placement = {f"bot.{n}": "n1" for n in range(1, 5)}
    cluster, _, _ = make(tmp_path, snap)
    assert cluster.failed_elsewhere("mybot", "bot.5") == (
        "not placed: no member has room for 512 MB and 0.25 CPU: n1 has 0 MB free"
    )


def test_while_the_leader_is_gone_a_member_soon_looks_whether_it_leads(tmp_path: Path):
    from swarm.cluster import ELECTION_LOOK, PLAN_EVERY

    snap = Snapshot(members={"n1": member("n1", lease=1e12), "n2": member("n2", lease=1e12)})
    snap.members["n2"].raft = "127.0.0.9:7002"
    cluster, state, _ = make(tmp_path, snap)
    state.leader_address = "127.0.0.9:7002"  # n2 leads, and its lease holds

    async def life() -> tuple[float, float]:
        stop = asyncio.Event()
        loops = await cluster.start(local(cluster.settings), stop, lambda: None)
        calm = cluster.plan()
        state.snap.members["n2"].lease_expires = 1.0  # n2 died long ago: no leader now
        hurried = cluster.plan()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), timeout=5)
        await cluster.close()
        return calm, hurried

    calm, hurried = asyncio.run(life())
    assert calm > PLAN_EVERY and hurried == ELECTION_LOOK


def test_the_lease_is_renewed_every_quarter_lease_however_slow_each_renewal(tmp_path: Path):
    """Renewals start a quarter lease apart, not a quarter lease after the last
    one's commit came back (see tests/test_swarm_lease.py for why)."""
    import time

    cluster, _, _ = make(tmp_path)
    began: list[float] = []

    def slow_renewal() -> None:
        began.append(time.monotonic())
        time.sleep(0.5)  # a slow commit: most of the quarter lease (0.75 s)

    async def life() -> None:
        stop = asyncio.Event()
        loops = await cluster.start(local(cluster.settings), stop, lambda: None)
        cluster._parts().lease.renew = slow_renewal  # type: ignore[method-assign]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        await asyncio.sleep(2.4)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        await cluster.close()

    asyncio.run(life())
    gaps = [b - a for a, b in zip(began, began[1:], strict=False)]
    assert len(began) >= 3 and max(gaps) < 0.75 + 0.25, gaps  # not 0.75 + 0.5
