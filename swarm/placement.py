"""Which node runs each process instance, and which nodes hold each slug.

Pure decisions, data in and data out: no I/O, no clock, no randomness. The
daemon calls `place()` and `holders()` on the Raft leader and commits the result
into the replicated state; every node's reconciler then runs what is placed on
it. Calling again with the same input gives the same output, so a new leader
reaches the same answer as the old one.

Liveness comes from leases. A member runs instances only while its lease
(renewed through the consensus) is valid, and stops them itself when it cannot
renew. So a member is:

- up       while `now < lease_expires`;
- suspect  after its lease ended, for `margin` more seconds: it may still be
           running its instances (clocks drift, a stop takes a moment), so they
           are left where they are — moving them now could run two copies;
- down     from `lease_expires + margin` on: its instances have surely stopped
           (pc-shim ends them by the lease's end, even with the daemon frozen;
           the margin covers its lag and the clocks), and they are placed
           elsewhere. With the default lease (3 s, renewed every 0.75 s) and
           margin (0.75 s), a dead node is down at most 3.75 s after it died
           (less by what its last renewal's commit took).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from peoplescloud.processes import process_names, ptype_of
from peoplescloud.resources import Size, instance_size
from peoplescloud.settings import SwarmSettings
from peoplescloud.state import App, Member

# The defaults are the settings' (`[swarm]` in a node's config.toml).
LEASE_SECONDS = SwarmSettings.lease_seconds
MARGIN_SECONDS = SwarmSettings.margin_seconds
DEFAULT_REPLICATION = SwarmSettings.replication

UP = "up"
SUSPECT = "suspect"
DOWN = "down"

Key = tuple[str, str]  # (app, process), e.g. ("mybot", "bot.1")


@dataclass(frozen=True)
class Placement:
    """The answer of `place()`.

    `nodes` is the new (app, process) -> node mapping: every wanted instance
    that could be placed. `unplaced` says why each other one could not.
    `handoffs` lists instances moved off a node that is still up (a leaving
    one), with that node: their new node must wait until the old one reports
    them stopped before starting them, or two copies could run.
    `free_mb` is each member's memory left after this placement.
    """

    nodes: dict[Key, str]
    decisions: list[str] = field(default_factory=list)
    unplaced: dict[Key, str] = field(default_factory=dict)
    handoffs: dict[Key, str] = field(default_factory=dict)
    free_mb: dict[str, int] = field(default_factory=dict)


def member_state(member: Member, now: float, margin: float = MARGIN_SECONDS) -> str:
    """`up`, `suspect` or `down` (see the module's docstring for why three)."""
    if now < member.lease_expires:
        return UP
    if now < member.lease_expires + margin:
        return SUSPECT
    return DOWN


def wanted_instances(apps: Mapping[str, App], instance_memory_mb: int) -> dict[Key, int]:
    """Every instance the swarm should run, with the memory (MB) it needs.

    The same set `reconciler.desired_instances` runs on a single node: each
    process type of the current release times its scale, unless the app is
    stopped.
    """
    return {key: size.memory_mb for key, size in _wanted(apps, instance_memory_mb, 0.0).items()}


def _wanted(
    apps: Mapping[str, App], instance_memory_mb: int, instance_cpus: float
) -> dict[Key, Size]:
    """Every wanted instance with its own figures: its app's `resources:set` for
    its type, else the defaults given."""
    out: dict[Key, Size] = {}
    for name in sorted(apps):
        app = apps[name]
        if app.stopped or app.target is None:  # (a release being deployed runs too)
            continue
        processes = app.release(app.target).processes
        scale = {ptype: app.scale.get(ptype, 0) for ptype in sorted(processes)}
        for process in process_names(scale):
            out[(name, process)] = instance_size(
                app, ptype_of(process), instance_memory_mb, instance_cpus
            )
    return out


@dataclass
class _Load:
    """What one member runs in the placement being built."""

    member: Member
    state: str
    holds: frozenset[str] = frozenset()  # the slugs it pins: an instance of them starts at once
    memory_mb: int = 0
    cpus: float = 0.0
    instances: int = 0
    apps: dict[str, int] = field(default_factory=dict)  # app -> instances here

    @property
    def free_mb(self) -> int:
        return self.member.memory_mb - self.memory_mb

    @property
    def free_cpus(self) -> float:
        return self.member.cpus - self.cpus

    def add(self, app: str, memory_mb: int, cpus: float) -> None:
        self.memory_mb += memory_mb
        self.cpus += cpus
        self.instances += 1
        self.apps[app] = self.apps.get(app, 0) + 1

    def remove(self, app: str, memory_mb: int, cpus: float) -> None:
        self.memory_mb -= memory_mb
        self.cpus -= cpus
        self.instances -= 1
        self.apps[app] -= 1
        if not self.apps[app]:
            del self.apps[app]

    def refusal(self, app: str, memory_mb: int, cpus: float) -> str | None:
        """Why this member cannot take one more instance of `app` (None: it can)."""
        name = self.member.name
        if self.state != UP:
            return f"{name} is {self.state}"
        if self.member.leaving:
            return f"{name} is leaving"
        if memory_mb > self.free_mb:
            return f"{name} has {max(self.free_mb, 0)} MB free"
        if cpus > self.free_cpus + 1e-9:  # sums of floats: 4 x 0.25 must fit in 1.0
            return f"{name} has {max(self.free_cpus, 0):.2g} CPU free"
        if app not in self.apps and len(self.apps) >= self.member.max_apps:
            return f"{name} runs {len(self.apps)} apps (its max)"
        return None

    def rank(self, app: str, slug: str) -> tuple[int, bool, int, float, str]:
        """Sort key of a candidate, best first: spread the app's instances, then a
        member that holds the slug already (it starts without a fetch: failover in
        seconds), then the most free memory, then the fewest instances per shared
        CPU, then the name (determinism)."""
        cpus = self.member.cpus
        per_cpu = self.instances / cpus if cpus > 0 else float("inf")
        return (
            self.apps.get(app, 0),
            slug not in self.holds,
            -self.free_mb,
            per_cpu,
            self.member.name,
        )


def place(
    members: Iterable[Member],
    apps: Mapping[str, App],
    current: Mapping[Key, str],
    now: float,
    instance_memory_mb: int,
    margin: float = MARGIN_SECONDS,
    instance_cpus: float = 0.0,
    held: Mapping[str, Collection[str]] | None = None,
) -> Placement:
    """Place every wanted instance of `apps` on `members`, starting from `current`.

    Running instances stay where they are while their node is up or suspect:
    never moved to balance load. Removed instances are dropped; those on down
    (or departed) nodes, new ones and those on leaving nodes go to up members
    with room (each needs its own memory and CPU of what a member shares: its
    app's `resources:set` figures, else `instance_memory_mb` and
    `instance_cpus`), spread over nodes. Instances are placed in the order bot.1 of
    every app, then bot.2 of every app, ...: with scarce room, one app scaled
    high cannot starve the others of their first instance. `held` (node -> the
    slugs it pins) makes a holder of an app's current slug the better of two
    otherwise equal candidates.
    """
    held = held or {}
    loads = {
        m.name: _Load(m, member_state(m, now, margin), frozenset(held.get(m.name, ())))
        for m in sorted(members, key=_by_name)
    }
    wanted = _wanted(apps, instance_memory_mb, instance_cpus)
    nodes: dict[Key, str] = {}
    decisions: list[str] = []
    homeless: list[tuple[Key, str]] = []  # (instance, why it needs a new node)
    leaving: list[Key] = []

    for key in sorted(current, key=_order):
        node = current[key]
        load = loads.get(node)
        if key not in wanted:
            decisions.append(f"{_label(key)}: no longer wanted; dropped from {node}")
        elif load is None:
            homeless.append((key, f"{node} is no longer a member"))
        elif load.state == DOWN:
            homeless.append((key, f"{node} is down since {_clock(load.member, margin)}"))
        else:
            nodes[key] = node
            load.add(key[0], *wanted[key])
            if load.state == SUSPECT:
                decisions.append(
                    f"{_label(key)}: {node} is suspect; left there until it is down at "
                    f"{_clock(load.member, margin)}"
                )
            elif load.member.leaving:
                leaving.append(key)
    homeless += [(key, "") for key in sorted(wanted, key=_order) if key not in current]
    homeless.sort(key=lambda item: _order(item[0]))

    unplaced: dict[Key, str] = {}
    for key, why in homeless:
        target, reason = _choose(loads, key[0], _slug(apps, key), *wanted[key])
        if target is None:
            unplaced[key] = reason
            decisions.append(f"{_label(key)}: {why + '; ' if why else ''}not placed: {reason}")
            continue
        nodes[key] = target
        loads[target].add(key[0], *wanted[key])
        verb = f"{why}; moved to" if why else "placed on"
        decisions.append(f"{_label(key)}: {verb} {target}")

    handoffs: dict[Key, str] = {}
    for key in leaving:
        old = nodes[key]
        target, reason = _choose(loads, key[0], _slug(apps, key), *wanted[key])
        if target is None:
            decisions.append(f"{_label(key)}: {old} is leaving; stays there: {reason}")
            continue
        loads[old].remove(key[0], *wanted[key])
        loads[target].add(key[0], *wanted[key])
        nodes[key] = target
        handoffs[key] = old
        decisions.append(f"{_label(key)}: {old} is leaving; moved to {target}")

    return Placement(
        nodes=nodes,
        decisions=decisions,
        unplaced=unplaced,
        handoffs=handoffs,
        free_mb={name: load.free_mb for name, load in loads.items()},
    )


def holders(
    members: Iterable[Member],
    slugs: Mapping[str, Collection[str]],
    current: Mapping[str, Collection[str]],
    now: float,
    replication: int | None = None,
    free_mb: Mapping[str, int] | None = None,
    margin: float = MARGIN_SECONDS,
) -> dict[str, list[str]]:
    """Which members pin each slug: cid -> sorted node names.

    `slugs` maps each cid in use to the nodes that run its instances (see
    `slugs_in_use`); `current` maps cids to the nodes that hold them now. Each
    slug gets min(R, up members) holders, R defaulting to min(3, members).
    Current holders that are up are kept (no needless copying), then nodes
    that run the slug (they need it anyway), then the most free memory
    (`free_mb`, e.g. `Placement.free_mb`; default: the shares), then the name.
    Only up members that are not leaving hold anything: a suspect holder may
    never come back, and an extra copy costs little. Cids absent from `slugs`
    are absent from the answer: their holders may unpin them.
    """
    everyone = sorted(members, key=_by_name)
    r = min(DEFAULT_REPLICATION, len(everyone)) if replication is None else replication
    if r < 1:
        raise ValueError(f"replication must be at least 1, not {r}")
    up = [m.name for m in everyone if member_state(m, now, margin) == UP and not m.leaving]
    free = dict(free_mb) if free_mb is not None else {m.name: m.memory_mb for m in everyone}
    out: dict[str, list[str]] = {}
    for cid in sorted(slugs):
        held, runners = set(current.get(cid, ())), set(slugs[cid])
        ranked = sorted((n not in held, n not in runners, -free.get(n, 0), n) for n in up)
        out[cid] = sorted(row[-1] for row in ranked[:r])
    return out


def slugs_in_use(
    apps: Mapping[str, App], nodes: Mapping[Key, str], keep: int
) -> dict[str, set[str]]:
    """cid -> nodes running it, for the last `keep` releases of every app (the
    current one runs; older ones stay pinned so a rollback needs no rebuild)."""
    out: dict[str, set[str]] = {}
    for app in apps.values():
        kept = app.releases[-keep:] if keep > 0 else []
        for release in kept:
            out.setdefault(release.slug, set())
        for version in {app.current, app.target} - {None}:  # a deploy runs both
            out.setdefault(app.release(version).slug, set())
    for (name, _), node in nodes.items():
        runs = apps.get(name)
        if runs is not None and runs.target is not None:
            out[runs.release(runs.target).slug].add(node)
    return out


def _choose(
    loads: Mapping[str, _Load], app: str, slug: str, memory_mb: int, cpus: float
) -> tuple[str | None, str]:
    """The best member for one more instance of `app` (running `slug`), or None
    and why not."""
    fits = [load for load in loads.values() if load.refusal(app, memory_mb, cpus) is None]
    if fits:
        return min(fits, key=lambda load: load.rank(app, slug)).member.name, ""
    if not loads:
        return None, "the swarm has no members"
    refusals = ", ".join(str(load.refusal(app, memory_mb, cpus)) for load in loads.values())
    need = f"{memory_mb} MB" + (f" and {cpus:g} CPU" if cpus else "")
    return None, f"no member has room for {need}: {refusals}"


def _slug(apps: Mapping[str, App], key: Key) -> str:
    """The slug an instance runs: its app's current release's (or the one being deployed)."""
    app = apps[key[0]]
    return app.release(app.target).slug


def _order(key: Key) -> tuple[int, str, str]:
    """bot.1 of every app before any bot.2; then by app and process type."""
    app, process = key
    ptype, _, n = process.rpartition(".")
    return (int(n), app, ptype) if n.isdigit() and ptype else (0, app, process)


def _by_name(member: Member) -> str:
    return member.name


def _label(key: Key) -> str:
    return f"{key[1]} of {key[0]}"


def _clock(member: Member, margin: float) -> str:
    """When the member is (or was) down, as HH:MM:SS UTC."""
    return datetime.fromtimestamp(member.lease_expires + margin, UTC).strftime("%H:%M:%S")
