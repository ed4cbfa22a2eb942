"""Fakes shared by the swarm's unit tests: a state held in memory (the shape of
ReplicatedState), and the node's parts a swarm member uses."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peoplescloud.cluster import LocalParts
from peoplescloud.runtime.base import InstanceKey, InstanceStatus
from peoplescloud.settings import Settings
from peoplescloud.state import App, Member, Release, Snapshot
from swarm.me import Me

NOW = 1_000_000.0


class FakeState:
    """ReplicatedState in memory: `fail` makes every change raise it."""

    def __init__(self, snap: Snapshot | None = None, leader: str | None = None) -> None:
        self.snap = snap or Snapshot()
        self.version = 0
        self.fail: Exception | None = None
        self.leader_address = leader
        self.raft_members: list[str] = []
        self.listeners: list[tuple[object, set[str] | None]] = []
        self.stepped_down = False
        self.closed = False
        self.timeouts: list[float | None] = []  # each change's commit timeout

    def read(self) -> Snapshot:
        return copy.deepcopy(self.snap)

    def version_of(self, *fields: str) -> int:
        return self.version

    @contextmanager
    def change(self, timeout: float | None = None, queue: bool = True) -> Iterator[Snapshot]:
        self.timeouts.append(timeout)
        if self.fail is not None:
            raise self.fail
        draft = copy.deepcopy(self.snap)
        yield draft
        self.snap = draft
        self.version += 1

    def leader(self) -> str | None:
        return self.leader_address

    def members(self) -> list[str]:
        return list(self.raft_members)

    def add_member(self, addr: str, timeout: float | None = None) -> None:
        self.raft_members.append(addr)

    def remove_member(self, addr: str, timeout: float | None = None) -> None:
        self.raft_members.remove(addr)

    def step_down(self) -> None:
        self.stepped_down = True

    def on_change(self, callback: object, only: set[str] | None = None) -> None:
        self.listeners.append((callback, only))

    def close(self) -> None:
        self.closed = True


class FakeRuntime:
    name = "fake"

    def __init__(self, statuses: list[InstanceStatus] | None = None) -> None:
        self.statuses = statuses or []
        self.stopped: list[tuple[InstanceKey, float]] = []

    def status(self) -> list[InstanceStatus]:
        return list(self.statuses)

    def stop(self, key: InstanceKey, timeout: float = 10) -> None:
        self.stopped.append((key, timeout))


class FakeLogBus:
    def __init__(self, lines: dict[str, list[str]] | None = None) -> None:
        self.lines = lines or {}
        self.events: list[tuple[str, str]] = []
        self.forgotten: list[str] = []

    def event(self, app: str, text: str) -> None:
        self.events.append((app, text))

    def tail(self, app: str, n: int, ptype: str | None = None) -> list[str]:
        return self.lines.get(app, [])[-n:]

    async def follow(self, app: str, ptype: str | None, backlog: int) -> AsyncIterator[str]:
        for line in self.lines.get(app, [])[-backlog:]:
            yield line

    def knows(self, app: str) -> bool:
        return app in self.lines

    def forget(self, app: str) -> None:
        self.lines.pop(app, None)
        self.forgotten.append(app)


class FakeReconciler:
    def __init__(self) -> None:
        self.running: dict[InstanceKey, InstanceStatus] = {}
        self.failed: dict[tuple[str, str], str] = {}
        self.restarts: list[tuple[str, str | None]] = []

    def instances(self) -> dict[InstanceKey, InstanceStatus]:
        return dict(self.running)

    def failures(self) -> dict[tuple[str, str], str]:
        return dict(self.failed)

    def restart(self, app: str, ptype: str | None = None) -> None:
        self.restarts.append((app, ptype))


class FakeStore:
    def __init__(self, pinned: set[str] | None = None, unreachable: set[str] = frozenset()):
        self.pins = set(pinned or ())
        self.unreachable = set(unreachable)

    def pinned(self) -> set[str]:
        return set(self.pins)

    def pin(self, cid: str) -> None:
        if cid in self.unreachable:
            raise OSError(f"no holder of {cid}")
        self.pins.add(cid)

    def unpin(self, cid: str) -> None:
        self.pins.discard(cid)

    ready: set[str] = set()  # slugs unpacked ahead of need (`prepare`)

    def prepare(self, cid: str) -> None:
        self.ready = self.ready | {cid}

    def prepared(self) -> set[str]:
        return set(self.ready)

    def discard(self, cid: str) -> None:
        self.ready = self.ready - {cid}


class FakeKubo:
    multiaddr = "/ip4/127.0.0.1/tcp/4001/p2p/QmMe"

    def __init__(self, running: bool = True, connected: set[str] = frozenset()) -> None:
        self.running = running
        self.connected = set(connected)
        self.starts = 0
        self.stops = 0
        self.unreachable: set[str] = set()

    def start(self) -> None:
        self.starts += 1
        self.running = True

    def stop(self) -> None:
        self.stops += 1
        self.running = False

    def connected_peers(self) -> set[str]:
        return set(self.connected)

    def connect(self, addr: str) -> None:
        if addr in self.unreachable:
            raise OSError("no route")
        self.connected.add(addr.rsplit("/", 1)[-1])


def settings(tmp_path: Path, name: str = "n1", **kw: Any) -> Settings:
    return Settings(name=name, home=tmp_path, listen="127.0.0.1", **kw)


def me(s: Settings) -> Me:
    return Me(s, lambda: FakeKubo.multiaddr)


def member(name: str, lease: float = NOW + 4, **kw: Any) -> Member:
    return Member(name, 2048, 1.0, 20, lease_expires=lease, **kw)


def release(version: int = 1, slug: str = "bafyslug", pushed_to: str = "") -> Release:
    return Release(
        version, slug, "procfile", "stack", {"web": "run", "bot": "run"}, "c0ffee",
        "ann", "t", "push", pushed_to,
    )  # fmt: skip


def app(name: str = "mybot", scale: dict[str, int] | None = None, **kw: Any) -> App:
    a = App(name=name, owner="ann", created="t", scale=scale or {"web": 1}, **kw)
    a.releases = [release()]
    a.current = 1
    return a


def local(s: Settings, runtime: FakeRuntime | None = None) -> LocalParts:
    return LocalParts(s, runtime or FakeRuntime(), FakeReconciler(), FakeLogBus())  # type: ignore[arg-type]
