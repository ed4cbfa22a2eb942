"""This member's lease: it runs instances only while the lease holds.

Every tick the member renews its lease through the consensus (its own entry
only, never queued behind its other changes) and writes the lease's end to the
lease file, which the watchdog next to each instance reads
(peoplescloud/runtime/lease.py). When it cannot renew (no quorum: it is cut
off), it stops its own instances before the lease ends, so the others may take
them over without two copies running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from peoplescloud.logbus import LogBus
from peoplescloud.runtime.base import Runtime
from peoplescloud.runtime.lease import GRACE, write_lease
from peoplescloud.settings import Settings
from swarm.me import Me
from swarm.raft import Conflict, NoQuorum
from swarm.replicated import ReplicatedState

STOP_GRACE = 1.0  # seconds each instance gets to stop when the lease is about to go


class Lease:
    """Renews this member's lease; `stop_all(why)` runs when it is about to be lost."""

    def __init__(
        self,
        settings: Settings,
        me: Me,
        state: ReplicatedState,
        stop_all: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.me = me
        self.state = state
        self.stop_all = stop_all
        self.clock = clock
        self.until = 0.0  # epoch seconds: instances may run until then

    def may_run(self) -> bool:
        """The reconciler's gate: instances run only while the lease holds for more
        than GRACE (pc-shim would not start one that close to the end)."""
        return self.clock() < self.until - GRACE

    def renew(self) -> None:
        """Extend the lease by `lease_seconds`, or stop everything when it cannot be
        renewed and the next try would come after pc-shim begins to end them
        anyway (GRACE before the lease's end). Called every `renew_every` (a
        quarter of the lease), and waits no longer than that for the swarm to agree."""
        swarm = self.settings.swarm
        until = self.clock() + swarm.lease_seconds
        try:
            # Its own entry only: never queued behind this node's other changes.
            with self.state.change(swarm.renew_every, queue=False) as s:
                if self.me.name not in s.members:
                    return  # not (yet, or no longer) a member: no lease
                member = self.me.entry(s.members[self.me.name])
                member.lease_expires = until
                s.members[self.me.name] = member
        except (NoQuorum, Conflict) as e:
            if self.until and self.clock() + swarm.renew_every > self.until - GRACE:
                self.stop_all(f"lease not renewed ({e})")
            return
        self.until = until
        write_lease(self.settings.lease_dir, until)


def stop_everything(runtime: Runtime, logbus: LogBus, why: str) -> None:
    """Cut off from the swarm: stop before the lease ends, so the others may
    start these instances elsewhere without two copies running. All at once:
    one by one, a few slow stops would outlast the lease."""
    running = [s for s in runtime.status() if s.running]
    for s in running:
        logbus.event(s.app, f"stopping {s.process}: {why}")
    if running:
        with ThreadPoolExecutor(len(running), thread_name_prefix="lease-stop") as pool:
            list(pool.map(lambda s: runtime.stop(s.key, timeout=STOP_GRACE), running))
