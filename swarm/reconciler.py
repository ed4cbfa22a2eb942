"""Make what runs on this node match the desired state.

The same loop runs after a push, a config change, a scale, a daemon restart
and every few seconds: it compares `state` (what should run) with
`runtime.status()` (what runs) and starts, stops or restarts instances. A
crashed instance is restarted with back-off (1 s, 2 s, 4 s ... 60 s).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarm.errors import NotFound
from swarm.observed import running_elsewhere
from swarm.runtime.base import InstanceSpec, InstanceStatus, Runtime
from swarm.settings import Settings
from swarm.state import App, Snapshot, State
from swarm.store import Store

if TYPE_CHECKING:
    from swarm.logbus import LogBus

log = logging.getLogger(__name__)

BACKOFF_MAX = 60.0
HEALTHY_AFTER = 60.0  # an instance that ran this long starts its back-off over
# How long a pass waits for a missing slug before going on without it (the
# fetch goes on in the background): a local copy or a quick fetch starts the
# instance in this pass, a slow one never holds up the others for long.
FETCH_WAIT = 2.0


@dataclass
class Crash:
    count: int = 0
    retry_at: float | None = None  # set while a restart waits out its back-off
    restarted_at: float = 0.0


def desired_instances(
    snap: Snapshot, node: str, settings: Settings
) -> dict[tuple[str, str], InstanceSpec]:
    """Every instance this node should run, keyed by (app, process). In a swarm
    (the state has members) that is what placement put on this node."""
    out: dict[tuple[str, str], InstanceSpec] = {}
    swarm = bool(snap.members)
    for app in snap.apps.values():
        if app.stopped or app.current is None:
            continue
        release = app.release()
        for ptype, command in release.processes.items():
            for n in range(1, app.scale.get(ptype, 0) + 1):
                process = f"{ptype}.{n}"
                if swarm and app.placement.get(process) != node:
                    continue
                out[(app.name, process)] = instance_spec(
                    app, release.version, process, command, node, settings
                )
    return out


def instance_spec(
    app: App, version: int, process: str, command: str, node: str, settings: Settings
) -> InstanceSpec:
    release = app.release(version)
    return InstanceSpec(
        app=app.name,
        process=process,
        release=release.name,
        command=command,
        slug=settings.slugs_dir / release.slug,
        node=node,
        env=dict(app.config),
        memory_mb=settings.shares.instance_memory_mb,
        cpus=settings.shares.instance_cpus,
        web=process.rsplit(".", 1)[0] == "web",
    )


class Reconciler:
    def __init__(
        self, settings: Settings, state: State, store: Store, runtime: Runtime, logbus: LogBus
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.runtime = runtime
        self.logbus = logbus
        # In a swarm: whether this node's lease holds. Without it, nothing may run.
        self.may_run: Callable[[], bool] = lambda: True
        # In a swarm: what siblings last reported of their instances, and why the
        # node an instance is placed on cannot start it.
        self.elsewhere: Callable[[], dict[tuple[str, str], InstanceStatus]] = dict
        self.failed_elsewhere: Callable[[str, str], str] = lambda app, process: ""
        self._lock = threading.Lock()  # one pass at a time, whoever calls
        self._crashes: dict[tuple[str, str], Crash] = {}
        self._last: dict[tuple[str, str], InstanceStatus] = {}
        self._apps: frozenset[str] = frozenset()
        self._held: Counter[str] = Counter()  # slug -> one-off processes using it
        self._failed: dict[tuple[str, str], str] = {}  # why an instance could not start
        # Slug fetches run beside the passes: one from a slow or absent holder may
        # take the store's whole timeout, and other apps must not wait for it.
        self._fetcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="slug-fetch")
        self._fetches: dict[str, Future[None]] = {}  # slug -> its fetch in progress
        self._fetch_deadline = 0.0  # until when this pass may wait for fetches

    def apps(self) -> frozenset[str]:
        """The apps that existed at the last pass (cheap: no state read)."""
        return self._apps

    def instances(self) -> dict[tuple[str, str], InstanceStatus]:
        """What ran at the end of the last pass (cheap: no runtime call)."""
        return dict(self._last)

    def everywhere(self) -> dict[tuple[str, str], InstanceStatus]:
        """Instances on this node (last pass) and, in a swarm, on its siblings."""
        return {**self.elsewhere(), **self._last}

    def start_failure(self, app: str, process: str) -> str:
        """Why the last try to start an instance failed ("" if it did not): here,
        or on the sibling it is placed on."""
        return self._failed.get((app, process), "") or self.failed_elsewhere(app, process)

    def failures(self) -> dict[tuple[str, str], str]:
        """Why this node's instances that do not run could not start."""
        return dict(self._failed)

    def crash(self, app: str, process: str) -> Crash | None:
        return self._crashes.get((app, process))

    def reconcile(self) -> dict[tuple[str, str], InstanceStatus]:
        """One pass; returns what runs afterwards."""
        with self._lock:
            self._fetch_deadline = time.monotonic() + FETCH_WAIT  # for the whole pass
            # The lease first: a renewal returns only once this node applied it, so
            # a state read after a good lease is at least as new as that renewal.
            may_run = self.may_run()
            snap = self.state.read()
            want = desired_instances(snap, self.settings.name, self.settings) if may_run else {}
            margin = self.settings.swarm.margin_seconds
            busy = running_elsewhere(snap, self.settings.name, time.time() - margin)
            have = {(s.app, s.process): s for s in self.runtime.status()}
            for key, status in have.items():
                if key not in want:
                    self._stop(status, "no longer wanted")
            for key in set(self._failed) - set(want):
                del self._failed[key]  # no longer this node's to start
            for key, spec in want.items():
                status = have.get(key)
                if key in busy and not (status and status.running):
                    continue  # still running on its previous node: start it once that stops
                self._converge(spec, status)
            self._gc_slugs(want.values())
            self._apps = frozenset(snap.apps)
            self._last = {(s.app, s.process): s for s in self.runtime.status()}
            return dict(self._last)

    def restart(self, app: str, ptype: str | None = None) -> None:
        """Stop the app's instances (of one type) so the next pass starts them afresh."""
        with self._lock:
            for s in self.runtime.status():
                if s.app == app and (ptype is None or s.process.rsplit(".", 1)[0] == ptype):
                    self.logbus.event(app, f"restarting {s.process}")
                    self.runtime.stop(s.app, s.process)
                    self._crashes.pop((s.app, s.process), None)
        self.reconcile()

    def _stop(self, status: InstanceStatus, why: str) -> None:
        self.logbus.event(status.app, f"stopping {status.process} ({status.release}): {why}")
        self.runtime.stop(status.app, status.process)
        self._crashes.pop((status.app, status.process), None)

    def _converge(self, spec: InstanceSpec, status: InstanceStatus | None) -> None:
        key = (spec.app, spec.process)
        if status is not None and status.release != spec.release:
            if status.running and not self._slug_ready(spec):
                return  # the running release stays until the new one's slug is here
            self._stop(status, f"replaced by {spec.release}")
            status = None
        crash = self._crashes.get(key)
        if status is not None and status.running:
            if crash and time.monotonic() - crash.restarted_at > HEALTHY_AFTER:
                del self._crashes[key]
            self.logbus.watch(spec.app, spec.process)
            return
        if status is not None:  # it exited by itself: restart with back-off
            crash = self._crashes.setdefault(key, Crash())
            if crash.retry_at is None:
                crash.count += 1
                delay = min(BACKOFF_MAX, 2.0 ** (crash.count - 1))
                crash.retry_at = time.monotonic() + delay
                why = f"exited with code {status.exit_code}; restarting in {delay:.0f}s"
                self.logbus.event(spec.app, f"{spec.process} {why}")
            if time.monotonic() < crash.retry_at:
                return
            crash.retry_at = None
            crash.restarted_at = time.monotonic()
        self._start(spec)

    def _start(self, spec: InstanceSpec) -> None:
        if not self._slug_ready(spec):
            return
        try:
            self.logbus.event(spec.app, f"starting {spec.process} ({spec.release})")
            self.runtime.start(spec)
        except Exception as e:  # one failure must not stop the other apps' pass
            self._cannot_start(spec, e)
            return
        self._failed.pop((spec.app, spec.process), None)
        self.logbus.watch(spec.app, spec.process)

    def _cannot_start(self, spec: InstanceSpec, error: Exception) -> None:
        log.warning("cannot start %s %s: %s", spec.app, spec.process, error)
        why = f"{error}; trying again"
        key = (spec.app, spec.process)
        if self._failed.get(key) != why:  # say it once, not every pass
            self.logbus.event(spec.app, f"could not start {spec.process}: {why}")
        self._failed[key] = why

    def _slug_ready(self, spec: InstanceSpec) -> bool:
        """Whether the slug is here; says why not (a fetch under way, or failed)."""
        try:
            if self._slug_here(spec):
                return True
        except Exception as e:
            self._cannot_start(spec, e)
            return False
        why = f"fetching its slug {spec.slug.name} from the store"
        self._failed.setdefault((spec.app, spec.process), why)  # or the last failure
        return False

    def _slug_here(self, spec: InstanceSpec, wait: float | None = None) -> bool:
        """Whether the slug's working copy is on this node, fetching it when not:
        for what is left of the pass's FETCH_WAIT (or `wait` seconds) here, then
        on in the background while the passes go on. Raises what the fetch
        failed with (the next call tries again)."""
        if spec.slug.exists():
            return True
        cid = spec.slug.name
        fetch = self._fetches.get(cid)
        if fetch is None:
            fetch = self._fetches[cid] = self._fetcher.submit(self.store.get, cid, spec.slug)
        if wait is None:
            wait = max(0.0, self._fetch_deadline - time.monotonic())
        if not wait_futures([fetch], timeout=wait).done:
            return False
        del self._fetches[cid]
        fetch.result()
        return spec.slug.exists()

    def close(self) -> None:
        """Drop the fetches not started; one under way ends with the store's timeout."""
        self._fetcher.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def holding(self, spec: InstanceSpec) -> Iterator[None]:
        """A one-off process's slug, here and kept from the slug GC while it runs."""
        with self._lock:
            self._held[spec.slug.name] += 1
        try:
            for _ in range(3):  # the fetch runs beside the passes; wait for it here
                with self._lock:
                    if self._slug_here(spec, wait=0):
                        break
                    fetch = self._fetches.get(spec.slug.name)
                if fetch is not None:
                    fetch.exception()  # until done; its error is raised by the next look
            else:  # a pass took the outcome twice: say so rather than wait on
                raise NotFound(f"slug {spec.slug.name} is not here yet: try again shortly")
            yield
        finally:
            with self._lock:
                self._held[spec.slug.name] -= 1

    def _gc_slugs(self, wanted: Iterable[InstanceSpec]) -> None:
        """Remove slug working copies no instance uses (the store keeps the original)."""
        used = {s.slug.name for s in wanted} | {cid for cid, n in self._held.items() if n}
        for cid in [c for c, f in self._fetches.items() if c not in used and f.done()]:
            del self._fetches[cid]  # fetched for an instance that is no longer here
        slugs = self.settings.slugs_dir
        if not slugs.is_dir():
            return
        for d in slugs.iterdir():
            if d.name not in used and not d.name.endswith(".partial"):
                shutil.rmtree(d, ignore_errors=True)
