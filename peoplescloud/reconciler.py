"""Make what runs on this node match the desired state.

The same loop runs after a push, a config change, a scale, a daemon restart
and every few seconds: it compares `state` (what should run) with
`runtime.status()` (what runs) and starts, stops or restarts instances. A
crashed instance is restarted with back-off (1 s, 2 s, 4 s ... 60 s).

A pass decides under the reconciler's lock (one pass at a time) and stops
instances outside it, several at once: a stop may take an instance's whole
grace period, and `restart`, `ps`, the lease and the next pass must not wait
for it. An instance that is stopping is left alone by the passes, and its
slot is started again only once it is gone.

Web instances are replaced without a gap (see `peoplescloud.rollout`): the new
release's instance starts beside the old one, which keeps taking requests
until the new one passes its health check, then drains and stops. Other
processes are stopped before their replacement starts: a bot never runs twice.
"""

from __future__ import annotations

import contextlib
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

from peoplescloud.desired import desired_instances, slugs_of, within_limit
from peoplescloud.errors import NotFound
from peoplescloud.health import run_checks
from peoplescloud.processes import is_web
from peoplescloud.rolling import WebInstances
from peoplescloud.rollout import CheckFn
from peoplescloud.runtime.base import InstanceKey, InstanceSpec, InstanceStatus, Runtime
from peoplescloud.settings import Settings
from peoplescloud.state import kept_images

if TYPE_CHECKING:
    from peoplescloud.cluster import Cluster, Slot
    from peoplescloud.logbus import LogBus

log = logging.getLogger(__name__)

BACKOFF_MAX = 60.0
HEALTHY_AFTER = 60.0  # an instance that ran this long starts its back-off over
# How long a pass waits for a missing slug before going on without it (the
# fetch goes on in the background): a local copy or a quick fetch starts the
# instance in this pass, a slow one never holds up the others for long.
FETCH_WAIT = 2.0
STOPS_AT_ONCE = 4  # instances stopped in parallel (each may take its grace period)


@dataclass
class Crash:
    count: int = 0
    retry_at: float | None = None  # set while a restart waits out its back-off
    restarted_at: float = 0.0


class Reconciler(WebInstances):
    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        runtime: Runtime,
        logbus: LogBus,
        check: CheckFn = run_checks,
    ) -> None:
        """`cluster` holds the state and the store, and says whether this node may
        run instances now (in a swarm: while its lease holds) and what its
        siblings run. `check` runs a web instance's health checks."""
        self.settings = settings
        self.cluster = cluster
        self.state = cluster.state
        self.store = cluster.store
        self.runtime = runtime
        self.logbus = logbus
        self._lock = threading.Lock()  # one pass at a time, whoever calls
        self._crashes: dict[Slot, Crash] = {}
        self._last: dict[InstanceKey, InstanceStatus] = {}
        self._apps: frozenset[str] = frozenset()
        self._held: Counter[str] = Counter()  # slug -> one-off processes using it
        self._failed: dict[Slot, str] = {}  # why an instance could not start
        # Slug fetches run beside the passes: one from a slow or absent holder may
        # take the store's whole timeout, and other apps must not wait for it.
        self._fetcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="slug-fetch")
        self._fetches: dict[str, Future[None]] = {}  # slug -> its fetch in progress
        self._fetch_deadline = 0.0  # until when this pass may wait for fetches
        self._stopper = ThreadPoolExecutor(STOPS_AT_ONCE, thread_name_prefix="stop")
        self._stopping: dict[InstanceKey, Future[None]] = {}  # stops under way
        # Called (from a stopping thread) when a stop or a health check is done: the
        # daemon wakes a pass then, which starts what replaces the instance.
        self.on_stopped: Callable[[], None] = lambda: None
        self._init_web(check)

    def apps(self) -> frozenset[str]:
        """The apps that existed at the last pass (cheap: no state read)."""
        return self._apps

    def instances(self) -> dict[InstanceKey, InstanceStatus]:
        """What ran at the end of the last pass (cheap: no runtime call), without
        the web instances that take no requests (not healthy yet, or draining):
        for `ps`, for a deploy waiting for its release, for the siblings' routers."""
        return {k: s for k, s in self._last.items() if not self._hidden(k, s)}

    def everywhere(self) -> dict[InstanceKey, InstanceStatus]:
        """Instances on this node (last pass) and, in a swarm, on its siblings."""
        return {**self.cluster.instances_elsewhere(), **self.instances()}

    def start_failure(self, app: str, process: str) -> str:
        """Why the last try to start an instance failed ("" if it did not): here,
        or on the sibling it is placed on."""
        return self._failed.get((app, process), "") or self.cluster.failed_elsewhere(app, process)

    def failures(self) -> dict[Slot, str]:
        """Why this node's instances that do not run could not start."""
        return dict(self._failed)

    def crash(self, app: str, process: str) -> Crash | None:
        return self._crashes.get((app, process))

    def reconcile(self, wait: bool = True) -> dict[InstanceKey, InstanceStatus]:
        """One pass; returns what runs afterwards. With `wait`, once the stops it
        began are done, another pass starts what replaces them (a command that
        scales down or deploys returns with the world changed); without (the
        periodic pass), the pass woken by `on_stopped` does."""
        for _ in range(3):  # a bound, should the state keep changing meanwhile
            began = self._pass()
            if not (wait and began):
                break
            wait_futures(began)  # without the lock: others go on meanwhile
        return self.instances()

    def tick(self) -> None:
        """The periodic pass: it never waits for a stop."""
        self.reconcile(wait=False)

    def _pass(self) -> list[Future[None]]:
        """Decide and start under the lock; returns the stops it began."""
        with self._lock:
            self._fetch_deadline = time.monotonic() + FETCH_WAIT  # for the whole pass
            # The lease first: a renewal returns only once this node applied it, so
            # a state read after a good lease is at least as new as that renewal.
            may_run = self.cluster.may_run()
            snap = self._snap = self.state.read()
            want = desired_instances(snap, self.settings.name, self.settings) if may_run else {}
            up = [k.slot for k, s in self._last.items() if s.running]
            want, over = within_limit(want, up, self.settings.shares.max_instances)
            busy = self.cluster.busy_elsewhere(snap)
            have: dict[Slot, list[InstanceStatus]] = {}  # what is left after the stops
            leaving: list[InstanceStatus] = []  # stopping: its slot starts once it is gone
            began: list[Future[None]] = []
            self._stopping = {k: f for k, f in self._stopping.items() if not f.done()}
            for status, why in self.web.collect():
                self._unhealthy(status, why)
            for status in self.runtime.status():
                spec = want.get(status.key.slot)
                if status.key in self._stopping:
                    leaving.append(status)
                elif self.web.draining(status.key) and spec is not None:  # (else: at once)
                    if self.web.drained(status.key):
                        began.append(self._stop(status, "drained"))
                    leaving.append(status)
                elif spec is None:
                    began.append(self._stop(status, "no longer wanted"))
                    leaving.append(status)
                elif status.release != spec.release and not self._keep_until_replaced(spec, status):
                    began += self._retire(status, spec)
                    leaving.append(status)
                else:
                    have.setdefault(status.key.slot, []).append(status)
            for slot in set(self._failed) - set(want):
                del self._failed[slot]  # no longer this node's to start
            self._failed.update(over)  # past the node's instance limit: `ps` says why
            for status in (s for ss in have.values() for s in ss):
                self._watch_health(status)
            gone_soon = set()  # started by the pass after its old instance stopped
            for s in leaving:  # (not for a web one of another release: it starts beside)
                new = want.get(s.key.slot)
                if not is_web(s.process) or (new is not None and new.key == s.key):
                    gone_soon.add(s.key.slot)
            for slot, spec in want.items():
                if slot in gone_soon:
                    continue
                mine = have.get(slot, [])
                if spec.web:  # the old release's instance serves beside it until it is healthy
                    current = next((s for s in mine if s.key == spec.key), None)
                elif any(s.key != spec.key for s in mine):
                    continue  # the old release's instance runs on until the new slug is here
                else:
                    current = next(iter(mine), None)
                if slot in busy and not (current and current.running):
                    continue  # still running on its previous node: start it once that stops
                self._converge(spec, current)
            present = [*leaving, *(s for ss in have.values() for s in ss)]
            self._gc_slugs(want.values(), slugs_of(snap, present))
            if (app_images := getattr(self.runtime, "app_images", None)) is not None:
                app_images.prune(kept_images(snap))  # Dockerfile apps' images no release keeps
            self._apps = frozenset(snap.apps)
            self._last = {s.key: s for s in self.runtime.status()}
            self.web.keep_only(self._last)
            self._publish()
            return began

    def _back_off(self, slot: Slot) -> float:
        """One more failure of the slot's instance: seconds until it starts again."""
        crash = self._crashes.setdefault(slot, Crash())
        crash.count += 1
        delay = min(BACKOFF_MAX, 2.0 ** (crash.count - 1))
        crash.retry_at = time.monotonic() + delay
        return delay

    def _stop(self, status: InstanceStatus, why: str, event: str = "") -> Future[None]:
        """Begin stopping an instance (in a stopping thread); under the lock."""
        event = event or f"stopping {status.process} ({status.release}): {why}"
        self.logbus.event(status.app, event)
        self._crashes.pop(status.key.slot, None)
        self.web.lost(status.key)  # no request goes to it from now on
        stop = self._stopper.submit(self._stop_now, status.key)
        self._stopping[status.key] = stop
        return stop

    def _stop_now(self, key: InstanceKey) -> None:
        try:
            self.runtime.stop(key)
        except Exception:  # the next pass sees it still there and tries again
            log.exception("stopping %s %s", key.app, key.process)
        finally:
            with contextlib.suppress(RuntimeError):  # the daemon's loop closed: it stops
                self.on_stopped()

    def _converge(self, spec: InstanceSpec, status: InstanceStatus | None) -> None:
        key = spec.key.slot
        crash = self._crashes.get(key)
        if status is None and crash is not None and crash.retry_at is not None:
            if time.monotonic() < crash.retry_at:
                return  # failed its health check: started again after its back-off
            crash.retry_at = None
            crash.restarted_at = time.monotonic()
        if status is not None and status.running:
            if crash and time.monotonic() - crash.restarted_at > HEALTHY_AFTER:
                del self._crashes[key]
            self.logbus.watch(spec.key)
            return
        if status is not None:  # it exited by itself: restart with back-off
            self.web.lost(spec.key)
            crash = self._crashes.setdefault(key, Crash())
            if crash.retry_at is None:
                delay = self._back_off(key)
                if status.oom_killed:
                    why = f"exceeded its memory limit ({spec.memory_mb} MB)"
                else:
                    why = f"exited with code {status.exit_code}"
                self.logbus.event(spec.app, f"{spec.process} {why}; restarting in {delay:.0f}s")
            if crash.retry_at is not None and time.monotonic() < crash.retry_at:
                return  # (set above, if not before)
            crash.retry_at = None
            crash.restarted_at = time.monotonic()
        self._start(spec)

    def _start(self, spec: InstanceSpec) -> None:
        if not self._slug_ready(spec):
            return
        try:
            self.logbus.event(spec.app, f"starting {spec.process} ({spec.release})")
            self.web.retry(spec.key)
            started = self.runtime.start(spec)
        except Exception as e:  # one failure must not stop the other apps' pass
            self._cannot_start(spec, e)
            return
        self._failed.pop(spec.key.slot, None)
        self.logbus.watch(spec.key)
        self._watch_health(started)  # at once: the deploy waiting for it wants it soon

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
        failed with (the next call tries again). A Dockerfile app whose image
        the engine has needs no slug (its slug is the image's archive)."""
        if spec.slug.exists() or self._image_here(spec):
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

    def _image_here(self, spec: InstanceSpec) -> bool:
        app_images = getattr(self.runtime, "app_images", None)
        return bool(spec.image and app_images is not None and app_images.has(spec.image))

    def close(self) -> None:
        """Drop the fetches not started; one under way ends with the store's timeout.
        Stops under way finish (the instances are going)."""
        self._fetcher.shutdown(wait=False, cancel_futures=True)
        self._stopper.shutdown(wait=False)
        self.web.close()

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

    def _gc_slugs(self, wanted: Iterable[InstanceSpec], running: set[str]) -> None:
        """Remove slug working copies no instance uses (the store keeps the original):
        neither a wanted one, nor one that runs still (an old release runs on until
        the new slug is here), nor a one-off's."""
        used = {s.slug.name for s in wanted} | running
        used |= {cid for cid, n in self._held.items() if n}
        for cid in [c for c, f in self._fetches.items() if c not in used and f.done()]:
            del self._fetches[cid]  # fetched for an instance that is no longer here
        slugs = self.settings.slugs_dir
        if not slugs.is_dir():
            return
        for d in slugs.iterdir():
            if d.name not in used and not d.name.endswith(".partial"):
                shutil.rmtree(d, ignore_errors=True)
