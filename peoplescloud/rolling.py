"""The reconciler's web side: which instances take requests, their health
checks, and rolling restarts (one instance at a time).

A mixin of `Reconciler`, kept in its own file so that each stays short; it
uses the reconciler's lock, its last view of the runtime and its `_stop`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING

from builder.appjson import HealthCheck
from peoplescloud.errors import NotFound, PCError
from peoplescloud.health import Check, budget, resolve
from peoplescloud.processes import is_web, ptype_of
from peoplescloud.rollout import CheckFn, WebHealth
from peoplescloud.runtime.base import InstanceKey, InstanceSpec, InstanceStatus, Runtime
from peoplescloud.settings import Settings
from peoplescloud.state import Snapshot, StateStore

if TYPE_CHECKING:
    from peoplescloud.logbus import LogBus


class WebInstances:
    """What `Reconciler` has that this part uses."""

    settings: Settings
    state: StateStore
    runtime: Runtime
    logbus: LogBus
    web: WebHealth
    _lock: threading.Lock
    _last: dict[InstanceKey, InstanceStatus]
    _stopping: dict[InstanceKey, Future[None]]
    _stopper: ThreadPoolExecutor
    _snap: Snapshot
    _routes: dict[str, list[InstanceStatus]]  # app -> its instances that take requests
    _routed: frozenset[InstanceKey]  # the same, as a set
    on_stopped: Callable[[], None]
    _failed: dict[tuple[str, str], str]  # (app, process) -> why it does not run

    def _init_web(self, check: CheckFn) -> None:
        self.web = WebHealth(check)
        self.web.on_done = lambda: self.on_stopped()  # a pass routes to it, or stops it
        self._snap = Snapshot()  # the state the pass under way read
        self._routes = {}
        self._routed = frozenset()

    def reconcile(self, wait: bool = True) -> dict[InstanceKey, InstanceStatus]:
        raise NotImplementedError

    def _stop(self, status: InstanceStatus, why: str, event: str = "") -> Future[None]:
        raise NotImplementedError

    def _slug_ready(self, spec: InstanceSpec) -> bool:
        raise NotImplementedError

    def _back_off(self, slot: tuple[str, str]) -> float:
        raise NotImplementedError

    def _hidden(self, key: InstanceKey, status: InstanceStatus) -> bool:
        return is_web(key.process) and status.running and key not in self._routed

    def serving(self, app: str) -> list[InstanceStatus]:
        """The app's web instances on this node that may take requests now (as
        published: see `_publish`)."""
        return self._routes.get(app, [])

    def _publish(self) -> None:
        """Make the router's lists match the instances' health (under the lock).
        One switch for all: a pass that lets a new instance in and drains the one
        it replaces changes both at once, so no request goes to the old one after
        one went to the new, and the list is never empty between the two."""
        routes: dict[str, list[InstanceStatus]] = {}
        for k, s in self._last.items():
            if s.running and s.address and self.web.serving(k) and k not in self._stopping:
                routes.setdefault(k.app, []).append(s)  # (only web instances are checked)
        self._routed = frozenset(s.key for ss in routes.values() for s in ss)
        self._routes = routes

    def health_failure(self, key: InstanceKey) -> str:
        """Why this node's instance `key` failed its health check ("" if it did not)."""
        return self.web.failure(key)

    def checks_of(self, app: str, release: str) -> list[Check]:
        """The health checks a web instance of the app's `release` must pass."""
        return self._checks(self.state.read(), app, release)

    def _checks(self, snap: Snapshot, app: str, release: str) -> list[Check]:
        declared: list[HealthCheck] = []
        a = snap.apps.get(app)
        version = release[1:]
        if a is not None and version.isascii() and version.isdigit():
            with contextlib.suppress(NotFound):
                declared = [HealthCheck(**c) for c in a.release(int(version)).web_checks]
        return resolve(declared, self.settings.web)

    def restart(self, app: str, ptype: str | None = None) -> None:
        """Stop the app's instances (of one type) and start them afresh: it waits
        for these stops, never for another app's. Running web instances go one at
        a time, each once the one before serves again (`_roll`)."""
        with self._lock:
            mine = [
                s
                for s in self.runtime.status()
                if s.app == app
                and (ptype is None or ptype_of(s.process) == ptype)
                and s.key not in self._stopping
                and not self.web.draining(s.key)
            ]
            web = sorted((s for s in mine if is_web(s.process) and s.running), key=_by_number)
            began = [
                self._stop(s, "restart", event=f"restarting {s.process}")
                for s in mine
                if s not in web
            ]
        wait_futures(began)
        self.reconcile()
        for status in web:
            if why := self._roll(status):
                rest = ", ".join(s.process for s in web[web.index(status) + 1 :])
                raise PCError(
                    f"{status.process} failed its health check after its restart: {why}"
                    + (f"; {rest} not restarted" if rest else "")
                    + f"; see `logs {app}`"
                )

    def _roll(self, status: InstanceStatus) -> str:
        """Restart one web instance: out of the router's list at once, stopped once
        it drained (at once if no other instance serves the app: nothing would take
        its requests), started again, and waited for until it serves. Why it does
        not serve again ("" if it does, or is no longer wanted)."""
        key = status.key
        with self._lock:
            others = [s for s in self.serving(key.app) if s.key != key]
            self.web.drain(key, math.inf)  # the passes leave it to us meanwhile
            self._publish()
        if others:
            time.sleep(self.settings.web.drain_seconds)
        with self._lock:
            self.web.undrain(key)
            stop = self._stop(status, "restart", event=f"restarting {status.process}")
            self._publish()
        wait_futures([stop])
        deadline = time.monotonic() + budget(self.checks_of(key.app, key.release)) + 5
        while time.monotonic() < deadline:
            self.reconcile()
            # The failure first: a copy that failed its check is stopped by the pass,
            # and then is not in `_last` either, which must not read as "not wanted".
            if why := self.web.failure(key):
                return why  # (the passes start it again after a back-off)
            if self.web.serving(key) or key not in self._last:
                return ""  # serves again, or is not wanted any more
            time.sleep(0.1)
        return "it did not pass its health check in time"

    def _watch_health(self, status: InstanceStatus) -> None:
        """Check a running web instance that was not checked (under the lock)."""
        if not (status.running and is_web(status.process)):
            return
        key = status.key
        checks = self._checks(self._snap, key.app, key.release)
        host = f"{key.app}.{self.settings.domain}"
        self.web.watch(status, checks, host, lambda: self._alive(status))

    def _alive(self, status: InstanceStatus) -> bool:
        """Whether the instance still runs, as far as the last pass saw: one just
        started is not seen yet (the last pass may have seen the copy it replaced,
        of the same key, exiting)."""
        seen = self._last.get(status.key)
        if seen is None or (seen.detail, seen.started_at) != (status.detail, status.started_at):
            return True
        return seen.running

    def _unhealthy(self, status: InstanceStatus, why: str) -> None:
        """A web instance failed its health check: it is stopped, and started again
        after a back-off, as a crash is (a deploy waiting for it fails at once)."""
        self.logbus.event(status.app, f"{status.process} ({status.release}): {why}")
        if status.key not in self._stopping:
            self._stop(status, "it failed its health check")
        delay = self._back_off(status.key.slot)
        self._failed[status.key.slot] = f"{why}; trying again in {delay:.0f}s"

    def _keep_until_replaced(self, spec: InstanceSpec, old: InstanceStatus) -> bool:
        """An instance of an older release runs on until its replacement may take
        over: a web one until the new instance passed its health check, any other
        until the new release's slug is here (then it is stopped, and the new one
        started)."""
        if spec.web:
            return old.running and not self.web.healthy(spec.key)
        return old.running and not self._slug_ready(spec)

    def _retire(self, old: InstanceStatus, new: InstanceSpec) -> list[Future[None]]:
        """Stop an instance that its new release's replaces (under the lock): a web
        one that serves drains first, out of the router's list at once."""
        drain = self.settings.web.drain_seconds
        if old.running and self.web.serving(old.key) and drain > 0:
            self.web.drain(old.key, drain)
            self.logbus.event(
                old.app,
                f"draining {old.process} ({old.release}): replaced by {new.release}, "
                f"stopped in {drain:g}s",
            )
            return []
        stop = self._stop(old, f"replaced by {new.release}")
        prepare = getattr(self.runtime, "prepare", None)  # the docker runtime's
        if prepare is not None and not new.web and not new.image and new.slug.exists():
            # Its container is made while the old one stops (it starts only once
            # that is gone: a bot never runs twice), so its start waits less.
            self._stopper.submit(prepare, new)
        return [stop]


def _by_number(status: InstanceStatus) -> int:
    """web.2 after web.1 (and web.10 after web.9)."""
    number = status.process.rpartition(".")[2]
    return int(number) if number.isdigit() else 0
