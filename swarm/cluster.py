"""The node's cluster when it is a member of a swarm (`peoplescloud.cluster.Cluster`).

State agreed by Raft (swarm/replicated.py), slugs in the swarm's private IPFS
(swarm/ipfs/), and three loops on their own pace:

- the lease (four times a lease, on a thread of its own): renew it
  (swarm/lease.py). Consensus only, and nothing else waits in front of it: a
  lease is never lost to slow I/O or to a slow placement commit.
- the plan (every second, at once when the apps change, and right when a
  member's lease has surely passed): on the leader, decide placement and pins
  (swarm/planner.py); publish what this node's instances do, so any node can
  answer `ps` or wait for a release that runs on a sibling.
- the upkeep (every 3 s): kubo running and connected, pins held, destroyed apps
  forgotten (swarm/upkeep.py).

Siblings are asked over the signed peer API (swarm/siblings.py), which this
node also serves (swarm/routes.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from gitserver.service import NodeRow
from peoplescloud.bridge import LoopBridge, every
from peoplescloud.cluster import Cluster, LocalParts, Loop, Slot
from peoplescloud.errors import PCError
from peoplescloud.local_http import HttpServer
from peoplescloud.runtime.base import InstanceKey, InstanceStatus
from peoplescloud.settings import Settings
from peoplescloud.state import Release, Snapshot, State
from swarm.identity import SwarmIdentity
from swarm.ipfs.kubo import KuboNode
from swarm.ipfs.store import IpfsStore
from swarm.lease import Lease, stop_everything
from swarm.me import Me
from swarm.membership import Membership, seed_when_elected, seek_admission
from swarm.observed import failure_elsewhere, instances_elsewhere, report, running_elsewhere
from swarm.peer_client import PeerClient
from swarm.peer_server import start_peer_server
from swarm.pins import wait_replicated
from swarm.planner import Planner, plan
from swarm.raft import Conflict, NoQuorum
from swarm.replicated import ReplicatedState
from swarm.routes import NodeRoutes, peer_app
from swarm.siblings import Siblings
from swarm.status import member_row, swarm_status
from swarm.upkeep import Upkeep

log = logging.getLogger(__name__)

PLAN_EVERY = 1.0  # seconds: placement and observation, at the latest
MAINTAIN_EVERY = 3.0  # seconds: kubo connections and pins
ELECTION_LOOK = 0.1  # seconds: how often a member looks whether it leads, while none does


class _Started:
    """The parts that need the daemon's loop and this node's runtime."""

    def __init__(self, lease: Lease, upkeep: Upkeep, siblings: Siblings, local: LocalParts):
        self.lease, self.upkeep, self.siblings, self.local = lease, upkeep, siblings, local


class SwarmCluster:
    def __init__(
        self,
        settings: Settings,
        identity: SwarmIdentity,
        state: ReplicatedState,
        kubo: KuboNode,
        store: IpfsStore,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.state = state
        self.store = store
        self.kubo = kubo
        self.me = Me(settings, lambda: kubo.multiaddr)
        self.client = PeerClient(settings.name, lambda: identity.secret_bytes)
        self.planner = Planner(settings, state)
        self.membership = Membership(self.me, identity, state)
        self._started: _Started | None = None
        self._runner: HttpServer | None = None  # the peer API's server
        self._admission: asyncio.Future[SwarmIdentity] | None = None
        self._left: Callable[[], None] = lambda: None  # stops the daemon
        # The lease's own thread: it never waits behind commands in the shared pool,
        # nor behind the plan's commits (which have their own).
        self._ticker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-lease")
        self._planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-plan")
        self._replan = asyncio.Event()  # the apps changed, or a member just turned down

    def _parts(self) -> _Started:
        if self._started is None:
            raise PCError("this node's swarm part has not started yet")
        return self._started

    # --- the reconciler's questions ------------------------------------------------
    def may_run(self) -> bool:
        return self._started is not None and self._started.lease.may_run()

    def instances_elsewhere(self) -> dict[InstanceKey, InstanceStatus]:
        return instances_elsewhere(self.state.read(), self.me.name, time.time())

    def busy_elsewhere(self, snap: Snapshot) -> set[Slot]:
        margin = self.settings.swarm.margin_seconds
        return running_elsewhere(snap, self.me.name, time.time() - margin)

    def failed_elsewhere(self, app: str, process: str) -> str:
        snap = self.state.read()
        if app in snap.apps and process not in snap.apps[app].placement:
            # No member could take it (placement says why): the plan, as the leader makes it.
            why = plan(snap, self.settings, time.time()).unplaced.get((app, process))
            if why:
                return f"not placed: {why}"
        return failure_elsewhere(snap, self.me.name, app, process, time.time())

    # --- pushes and git --------------------------------------------------------------
    def wait_replicated(self, cid: str, say: Callable[[str], None]) -> None:
        wait_replicated(self.state, cid, say)

    def sync_repo(self, app: str, release: Release, repo: Path) -> None:
        self._parts().siblings.sync_repo(app, release, repo)

    # --- commands that reach the siblings ---------------------------------------------
    def restart_elsewhere(self, app: str, ptype: str | None) -> None:
        self._parts().siblings.restart_elsewhere(app, ptype)

    def sibling_logs(
        self, app: str, lines: int, ptype: str | None, follow: bool
    ) -> list[AsyncIterator[str]]:
        return self._parts().siblings.sibling_logs(app, lines, ptype, follow)

    def members(self) -> list[NodeRow]:
        status = swarm_status(
            self.state.read(), self.identity, self.state.leader(), self.settings, time.time()
        )
        return [member_row(m) for m in status["members"]]

    def sibling_routers(self, app: str) -> list[str]:
        return self._parts().siblings.sibling_routers(app)

    def hop_key(self) -> bytes:
        return self.identity.secret_bytes

    # --- the loops -------------------------------------------------------------------
    def tick(self) -> None:
        """Renew the lease (a worker thread, every `renew_every` seconds)."""
        parts = self._parts()
        if not self.settings.swarm_file.exists():  # `pc swarm leave` finished
            log.warning("this node left the swarm: stopping (start `pc daemon` to run alone)")
            self._left()
            return
        parts.lease.renew()

    def plan(self) -> float:
        """Placement on the leader, and what runs here for the others (a worker
        thread). Returns the seconds until a member's lease has surely passed:
        the plan runs again then, so failover waits on nothing more. While the
        leader is gone (it died with the node whose instances fail over), soon:
        the member elected places them at once, not a round later."""
        snap, leader = self.state.read(), self.state.leader()
        if leader == self.me.raft:
            self.planner.decide(snap)
        self._publish(snap, self._parts().local)
        wait = self.planner.next_change(snap)
        if leader != self.me.raft and self.planner.leader_gone(snap, leader):
            wait = min(wait, ELECTION_LOOK)
        return wait

    def _publish(self, snap: Snapshot, local: LocalParts) -> None:
        """What this node's instances do, for the others (only when it changed)."""
        mine = report(local.reconciler.instances(), local.reconciler.failures())
        if snap.observed.get(self.me.name) == mine:
            return
        try:
            with self.state.change() as s:
                s.observed[self.me.name] = mine
        except (NoQuorum, Conflict):
            pass

    def maintain(self) -> None:
        """kubo, pins and destroyed apps (a worker thread, every 3 s)."""
        self._parts().upkeep.maintain()

    # --- life ----------------------------------------------------------------------------
    async def start(
        self, local: LocalParts, stop: asyncio.Event, wake: Callable[[], None]
    ) -> list[Loop]:
        """Serve the peer API, seed or join the swarm, take a first lease, and return
        the tick and upkeep loops (they end when `stop` is set)."""
        bridge = LoopBridge(asyncio.get_running_loop())
        # Once out of the swarm, no member sends it anything: the Raft log may never
        # tell, and its Raft must not go on asking for votes. So the daemon stops.
        self._left = functools.partial(bridge.soon, stop.set)
        stop_all = functools.partial(stop_everything, local.runtime, local.logbus)
        self._started = _Started(
            Lease(self.settings, self.me, self.state, stop_all),
            Upkeep(self.settings, self.state, self.kubo, self.store, local.logbus),
            Siblings(self.settings, self.state, self.client, bridge),
            local,
        )

        # What to run changed: place and reconcile now, not at the next pass.
        def changed(_version: int) -> None:
            bridge.soon(wake)
            bridge.soon(self._replan.set)

        self.state.on_change(changed, only={"apps"})
        routes = NodeRoutes(self.identity, self.state, local)
        app = peer_app(self.identity, self.state, self.membership, routes)
        # Where siblings dial it, nothing more: with `listen` 0.0.0.0 and no `advertise`,
        # loopback, so no container reaches it through its bridge.
        self._runner = await start_peer_server(
            app, self.settings.advertised, self.settings.peer_port
        )
        if not self.identity.partners and not self.state.read().members:
            # The swarm's first start: the first member brings the lone node's state.
            lone = State(self.settings.state_file)
            await asyncio.to_thread(seed_when_elected, self.state, self.me, lone, stop.is_set)
        elif self.identity.sponsor:  # joined, not yet admitted
            self._admission = asyncio.ensure_future(
                seek_admission(self.settings, self.identity, self.me, self.client)
            )
            self._admission.add_done_callback(self._admitted)
        # A lease first, or the reconciler's first pass would stop everything.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._ticker, self.tick)
        await loop.run_in_executor(self._planner, self.plan)  # and a first placement
        return [
            # Steady: a slow commit must not space the renewals out (see `Lease.renew`).
            every(
                self.settings.swarm.renew_every, self.tick, stop, executor=self._ticker, steady=True
            ),
            self._plan_loop(stop),
            every(MAINTAIN_EVERY, self.maintain, stop),
        ]

    async def _plan_loop(self, stop: asyncio.Event) -> None:
        """`plan()` every PLAN_EVERY at the latest, sooner when it asks or the apps change."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                wait = await loop.run_in_executor(self._planner, self.plan)
            except Exception:  # one bad round must not end the daemon
                log.exception("placement round failed")
                wait = PLAN_EVERY
            waiters = [asyncio.ensure_future(e.wait()) for e in (stop, self._replan)]
            timeout = min(max(wait, 0.05), PLAN_EVERY)
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            self._replan.clear()

    def _admitted(self, done: asyncio.Future[SwarmIdentity]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.identity = done.result()

    async def close(self) -> None:
        """Stop serving and taking part (kubo too); the apps keep running."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admission is not None:
            self._admission.cancel()
        await self.client.close()
        self._ticker.shutdown(wait=False)
        self._planner.shutdown(wait=False)
        self.state.close()
        await asyncio.to_thread(self.kubo.stop)  # the apps have their slugs already

    def describe(self) -> str:
        return f", swarm {self.identity.name} (peer API :{self.settings.peer_port})"


if TYPE_CHECKING:
    # The node loads the swarm's cluster by name (peoplescloud.cluster.open_cluster):
    # this is where a SwarmCluster is checked to be a Cluster, its ReplicatedState a
    # StateStore and its IpfsStore a Store.
    _is_a_cluster: type[Cluster] = SwarmCluster
