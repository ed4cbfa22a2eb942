"""The leader's decisions: which member runs each instance, and which members pin
each slug, written into the state for every member to act on.

`plan()` is a pure function of the state (swarm/placement.py decides); only the
Raft leader calls `Planner.decide`, so a new leader reaches the same answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from peoplescloud.deploy import KEEP_RELEASES
from peoplescloud.settings import Settings
from peoplescloud.state import Snapshot
from swarm.placement import DOWN, UP, holders, member_state, place, slugs_in_use
from swarm.raft import Conflict, NoQuorum
from swarm.replicated import ReplicatedState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """app -> (process -> member), cid -> members that pin it, and why; and why
    each instance that has no member could not get one."""

    placement: dict[str, dict[str, str]]
    pins: dict[str, list[str]]
    decisions: list[str] = field(default_factory=list)
    unplaced: dict[tuple[str, str], str] = field(default_factory=dict)

    def differs(self, snap: Snapshot) -> bool:
        """Whether writing this plan would change the state."""
        return self.pins != snap.pins or any(
            snap.apps[name].placement != placement for name, placement in self.placement.items()
        )


def plan(snap: Snapshot, settings: Settings, now: float) -> Plan:
    """Placement and pins for the state `snap` at time `now`."""
    margin = settings.swarm.margin_seconds
    members = list(snap.members.values())
    current = {(a.name, p): n for a in snap.apps.values() for p, n in a.placement.items()}
    size = settings.shares
    placed = place(
        members,
        snap.apps,
        current,
        now,
        size.instance_memory_mb,
        margin,
        size.instance_cpus,
        held=snap.held,
    )
    slugs = slugs_in_use(snap.apps, placed.nodes, KEEP_RELEASES)
    pins = holders(
        members,
        slugs,
        snap.pins,
        now,
        min(settings.swarm.replication, len(members)),
        placed.free_mb,
        margin,
    )
    placement = {
        name: {p: n for (a, p), n in placed.nodes.items() if a == name} for name in snap.apps
    }
    return Plan(placement, pins, placed.decisions, placed.unplaced)


class Planner:
    """Writes the plan into the state when it changes anything."""

    def __init__(
        self, settings: Settings, state: ReplicatedState, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock

    def next_change(self, snap: Snapshot) -> float:
        """Seconds until the next member that is up or suspect turns down (its
        instances are then placed elsewhere); inf when none will."""
        now, margin = self.clock(), self.settings.swarm.margin_seconds
        ends = [
            m.lease_expires + margin
            for m in snap.members.values()
            if member_state(m, now, margin) != DOWN
        ]
        return min(ends, default=now + float("inf")) - now

    def leader_gone(self, snap: Snapshot, leader: str | None) -> bool:
        """Whether the Raft leader (its address; None: an election is under way) is
        no member that is up, while some member still is up or suspect: a new
        leader is coming, and must place at once. (When every lease has surely
        passed, nothing was agreed for that long: no majority, nothing to hurry.)"""
        now, margin = self.clock(), self.settings.swarm.margin_seconds
        states = {m.raft: member_state(m, now, margin) for m in snap.members.values()}
        return states.get(leader or "") != UP and any(st != DOWN for st in states.values())

    def decide(self, snap: Snapshot) -> None:
        decided = plan(snap, self.settings, self.clock())
        for line in decided.decisions:
            log.info("placement: %s", line)
        if not decided.differs(snap):
            return
        try:
            with self.state.change() as s:
                for name, placement in decided.placement.items():
                    if name in s.apps:
                        s.apps[name].placement = placement
                s.pins = decided.pins
        except (NoQuorum, Conflict) as e:
            log.info("placement not written this round: %s", e)
