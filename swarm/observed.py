"""What members report of their instances, through the swarm's state.

Each member writes `Snapshot.observed[node]` ("app/process" -> report) when what
it runs changes: a running or exited instance as `observation()`, an instance it
cannot start as `{"why": reason}`. Any node reads those reports to answer `ps`,
route web traffic, wait for a release that runs on a sibling, and hand an
instance over without running two copies. Pure functions of a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from peoplescloud.processes import is_web
from peoplescloud.runtime.base import InstanceKey, InstanceStatus
from peoplescloud.state import Snapshot

Slot = tuple[str, str]  # (app, process)


def report(instances: Mapping[InstanceKey, InstanceStatus], failures: Mapping[Slot, str]) -> dict:
    """This node's report: its instances, and why the others do not run."""
    out: dict[str, dict[str, Any]] = {}
    for s in instances.values():
        out[f"{s.app}/{s.process}"] = {
            "release": s.release,
            "running": s.running,
            "exit_code": s.exit_code,
            "started_at": s.started_at,
            "address": s.address,
        }
    for (app, process), why in failures.items():
        out.setdefault(f"{app}/{process}", {"why": why})
    return out


def _live_reports(
    snap: Snapshot, me: str, lease_after: float
) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(node, app, process, report) from the other members whose lease ends after
    `lease_after`: one whose lease ended may have stopped, or be frozen."""
    for node, seen in snap.observed.items():
        member = snap.members.get(node)
        if node == me or member is None or member.lease_expires < lease_after:
            continue
        for key, o in seen.items():
            app, process = key.split("/", 1)
            yield node, app, process, o


def running_elsewhere(snap: Snapshot, me: str, lease_after: float) -> set[Slot]:
    """Instances another member reports running while its lease holds. A node
    waits for them to stop before starting its own copy: a handoff (a node
    leaving, a move) never runs two copies."""
    return {(app, p) for _, app, p, o in _live_reports(snap, me, lease_after) if o.get("running")}


def instances_elsewhere(snap: Snapshot, me: str, now: float) -> dict[InstanceKey, InstanceStatus]:
    """The instances the other members run (or ran) where placement puts them."""
    out = {}
    for node, app, process, o in _live_reports(snap, me, now):
        if "why" in o or app not in snap.apps or snap.apps[app].placement.get(process) != node:
            continue  # could not start there, or belongs elsewhere now
        s = InstanceStatus(
            app, process, o["release"], o["running"], o["exit_code"], o["started_at"], o["address"]
        )
        out[s.key] = s
    return out


def web_nodes_elsewhere(snap: Snapshot, me: str, now: float, app: str) -> set[str]:
    """The other members that report a running web instance of `app`."""
    return {
        node
        for node, a, process, o in _live_reports(snap, me, now)
        if a == app and o.get("running") and is_web(process)
    }


def failure_elsewhere(snap: Snapshot, me: str, app: str, process: str, now: float) -> str:
    """Why the member an instance is placed on says it cannot start it ("" if none,
    or if that member's lease ended: its word is stale)."""
    node = snap.apps[app].placement.get(process) if app in snap.apps else None
    for reporter, a, p, o in _live_reports(snap, me, now):
        if (reporter, a, p) == (node, app, process) and "why" in o:
            return f"{node}: {o['why']}"
    return ""
