"""What this node should run, as pure functions of the desired state: the
instances placement gives it (all of them, alone), each one's spec, and the
node's instance limit. The reconciler makes the runtime match them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import builder
from peoplescloud.errors import NotFound
from peoplescloud.processes import is_web, process_names, ptype_of
from peoplescloud.resources import instance_size
from peoplescloud.runtime.base import InstanceSpec, InstanceStatus
from peoplescloud.settings import Settings
from peoplescloud.state import App, Snapshot

if TYPE_CHECKING:
    from peoplescloud.cluster import Slot


def desired_instances(snap: Snapshot, node: str, settings: Settings) -> dict[Slot, InstanceSpec]:
    """Every instance this node should run, keyed by its slot (app, process). In a
    swarm (the state has members) that is what placement put on this node."""
    out: dict[Slot, InstanceSpec] = {}
    swarm = bool(snap.members)
    for app in snap.apps.values():
        if app.stopped or app.target is None:
            continue
        release = app.release(app.target)
        scale = {t: n for t, n in app.scale.items() if t in release.processes}
        for process in process_names(scale):
            if swarm and app.placement.get(process) != node:
                continue
            out[(app.name, process)] = instance_spec(
                app, release.version, process, release.processes[ptype_of(process)], node, settings
            )
    return out


def within_limit(
    want: dict[Slot, InstanceSpec], running: Iterable[Slot], limit: int
) -> tuple[dict[Slot, InstanceSpec], dict[Slot, str]]:
    """At most `limit` of the wanted instances, those that run already first (a
    full node starts nothing new, and stops nothing that runs); and why each of
    the others is not started."""
    if len(want) <= limit:
        return want, {}
    runs = set(running)
    order = sorted(want, key=lambda slot: slot not in runs)  # stable: the state's order
    kept = {slot: want[slot] for slot in order[:limit]}
    why = f"not started: this node runs {limit} instances, its limit ([shares] max_instances)"
    return kept, {slot: why for slot in order[limit:]}


def instance_spec(
    app: App, version: int, process: str, command: str, node: str, settings: Settings
) -> InstanceSpec:
    release = app.release(version)
    shares = settings.shares
    size = instance_size(app, ptype_of(process), shares.instance_memory_mb, shares.instance_cpus)
    return InstanceSpec(
        app=app.name,
        process=process,
        release=release.name,
        command=command,
        slug=settings.slug_path(release.slug),
        node=node,
        env=dict(app.config),
        memory_mb=size.memory_mb,
        cpus=size.cpus,
        web=is_web(process),
        path=builder.SLUG_PATH,
        image=release.image,
        user=release.user,
        stack=release.stack,  # a rollback runs on the stack its release was built on
    )


def slugs_of(snap: Snapshot, instances: Iterable[InstanceStatus]) -> set[str]:
    """The slugs (content ids) of these instances' releases, as far as the state knows them."""
    out = set()
    for s in instances:
        app = snap.apps.get(s.app)
        version = s.release[1:]
        if app is None or not (version.isascii() and version.isdigit()):
            continue
        try:
            out.add(app.release(int(version)).slug)
        except NotFound:
            continue
    return out
