"""The swarm's members as `pc swarm status`, `swarm:nodes` and `pc swarm leave`
see them: one dict per member (sent between nodes), one row per member (shown)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gitserver.service import NodeRow
from peoplescloud.settings import Settings
from peoplescloud.state import Snapshot
from swarm.identity import SwarmIdentity
from swarm.placement import member_state


def swarm_status(
    snap: Snapshot, identity: SwarmIdentity, leader: str | None, settings: Settings, now: float
) -> dict[str, Any]:
    """The swarm and its members: state, what placement put on each, what each runs."""
    placed = [(a.name, n) for a in snap.apps.values() for n in a.placement.values()]
    rows = []
    for m in sorted(snap.members.values(), key=lambda m: m.name):
        seen = snap.observed.get(m.name, {}).values()
        instances = sum(1 for _, n in placed if n == m.name)  # placed there
        rows.append(
            {
                **asdict(m),
                "state": member_state(m, now, settings.swarm.margin_seconds),
                "instances": instances,
                # What placement counts against its shares.
                "used_mb": instances * settings.shares.instance_memory_mb,
                "used_cpus": instances * settings.shares.instance_cpus,
                "apps": len({a for a, n in placed if n == m.name}),
                "running": sum(1 for o in seen if o.get("running")),  # as it reports
            }
        )
    return {"id": identity.id, "name": identity.name, "leader": leader, "members": rows}


def member_row(m: dict[str, Any]) -> NodeRow:
    """A member as `swarm_status()` gives it -> a row of `swarm:nodes`."""
    return NodeRow(
        name=m["name"],
        state=m["state"] + (" (leaving)" if m.get("leaving") else ""),
        address=m["address"],
        shares=f"{m['memory_mb']} MB, {m['cpus']:g} cpu, {m['max_apps']} apps",
        uses=f"{m['used_mb']} MB, {m['used_cpus']:g} cpu, "
        f"{m['apps']} app{'' if m['apps'] == 1 else 's'}",
        instances=m["instances"],
    )
