"""Fakes shared by several test files: an in-memory runtime, a log bus that
remembers events, and a cluster whose answers a test sets."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from gitserver.service import NodeRow
from peoplescloud.cluster import LocalParts, Loop, Slot
from peoplescloud.health import Check
from peoplescloud.runtime.base import Capabilities, InstanceKey, InstanceSpec, InstanceStatus
from peoplescloud.state import Release, Snapshot, StateStore
from peoplescloud.store import Store
from swarm.observed import running_elsewhere


class FakeRuntime:
    """Instances in a dict keyed by slot (app, process): one per slot, as the
    reconciler keeps it."""

    name = "fake"
    capabilities = Capabilities(True, "a fake")

    def __init__(self) -> None:
        self.instances: dict[tuple[str, str], InstanceStatus] = {}
        self.started: list[tuple[str, str, str, dict]] = []

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        self.started.append((spec.app, spec.process, spec.release, spec.environment(None)))
        status = InstanceStatus(spec.app, spec.process, spec.release, running=True)
        self.instances[(spec.app, spec.process)] = status
        return status

    def stop(self, key: InstanceKey, timeout: float = 10) -> None:
        if (s := self.instances.get(key.slot)) is not None and s.key == key:
            del self.instances[key.slot]

    def status(self) -> list[InstanceStatus]:
        return list(self.instances.values())

    def crash(self, app: str, process: str, code: int) -> None:
        s = self.instances[(app, process)]
        self.instances[(app, process)] = InstanceStatus(s.app, s.process, s.release, False, code)


class FakeBus:
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, app: str, text: str) -> None:
        self.events.append(f"{app}: {text}")

    def line(self, app: str, source: str, text: str) -> None:
        self.events.append(f"{app}[{source}]: {text}")

    def watch(self, key: InstanceKey) -> None:
        pass

    def forget(self, app: str) -> None:
        pass


class FakeCluster:
    """A cluster whose answers the test sets. `busy_elsewhere` follows the swarm's
    rule (siblings whose lease holds report it running), so a test can drive a
    handoff through the state alone."""

    def __init__(self, state: StateStore, store: Store, node: str = "n1", margin: float = 6):
        self.state = state
        self.store = store
        self.node, self.margin = node, margin
        self.allowed = True
        self.elsewhere: dict[InstanceKey, InstanceStatus] = {}
        self.failed: Callable[[str, str], str] = lambda app, process: ""
        self.replicated: list[str] = []
        self.restarted: list[tuple[str, str | None]] = []

    def may_run(self) -> bool:
        return self.allowed

    def instances_elsewhere(self) -> dict[InstanceKey, InstanceStatus]:
        return dict(self.elsewhere)

    def busy_elsewhere(self, snap: Snapshot) -> set[Slot]:
        return running_elsewhere(snap, self.node, time.time() - self.margin)

    def failed_elsewhere(self, app: str, process: str) -> str:
        return self.failed(app, process)

    def wait_replicated(self, cid: str, say: Callable[[str], None]) -> None:
        self.replicated.append(cid)

    def sync_repo(self, app: str, release: Release, repo: Path) -> None:
        return None

    def restart_elsewhere(self, app: str, ptype: str | None) -> None:
        self.restarted.append((app, ptype))

    def sibling_logs(
        self, app: str, lines: int, ptype: str | None, follow: bool
    ) -> list[AsyncIterator[str]]:
        return []

    def members(self) -> list[NodeRow]:
        return []

    def sibling_routers(self, app: str) -> list[str]:
        return []

    def hop_key(self) -> bytes:
        return b""

    async def start(self, local: LocalParts, stop: object, wake: Callable[[], None]) -> list[Loop]:
        return []

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return ""


def release(version: int, cid: str) -> Release:
    return Release(version, cid, "python", "img", {"bot": "python bot.py"}, "c", "ann", "t", "")


class FakeWebRuntime:
    """Instances keyed by InstanceKey, so a new release's web instance can run
    beside the old one's; web instances get an address naming them. `on_stop`
    is called before an instance goes (a test looks at the world then); `log`
    records each start and stop in order."""

    name = "fake-web"
    capabilities = Capabilities(True, "a fake")

    def __init__(self) -> None:
        self.instances: dict[InstanceKey, InstanceStatus] = {}
        self.log: list[str] = []
        self.on_stop: Callable[[InstanceKey], None] = lambda key: None
        self.most_at_once: dict[tuple[str, str], int] = {}  # slot -> most running at once
        self.stop_takes = 0.0  # seconds a stop takes (an app finishing its work)

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        address = f"{spec.app}-{spec.process}-{spec.release}:80" if spec.web else None
        status = InstanceStatus(spec.app, spec.process, spec.release, True, address=address)
        self.instances[spec.key] = status
        self.log.append(f"start {spec.process} {spec.release}")
        running = sum(1 for k, s in self.instances.items() if k.slot == spec.key.slot and s.running)
        self.most_at_once[spec.key.slot] = max(self.most_at_once.get(spec.key.slot, 0), running)
        return status

    def stop(self, key: InstanceKey, timeout: float = 10) -> None:
        if key in self.instances:
            self.on_stop(key)
            time.sleep(self.stop_takes)
            del self.instances[key]
            self.log.append(f"stop {key.process} {key.release}")

    def status(self) -> list[InstanceStatus]:
        return list(self.instances.values())


class FakeChecks:
    """A health check whose outcome the test gives per release ("" passes): a
    check waits (bounded) until its release has one."""

    def __init__(self, **outcomes: str) -> None:
        self.outcomes = dict(outcomes)
        self.asked: list[str] = []  # addresses checked, in order
        self._changed = threading.Condition()

    def answer(self, release: str, why: str = "") -> None:
        with self._changed:
            self.outcomes[release] = why
            self._changed.notify_all()

    def __call__(
        self,
        address: str,
        host: str,
        checks: Sequence[Check],
        alive: Callable[[], bool],
        cancel: threading.Event | None = None,
    ) -> str:
        self.asked.append(address)
        release = address.rpartition(":")[0].rpartition("-")[2]
        deadline = time.monotonic() + 10
        with self._changed:
            while release not in self.outcomes and time.monotonic() < deadline:
                if cancel is not None and cancel.is_set():
                    return "cancelled"
                self._changed.wait(0.05)
            return self.outcomes.get(release, "no outcome given")
