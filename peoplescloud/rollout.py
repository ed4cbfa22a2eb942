"""Which of this node's web instances may take requests: the reconciler's part
for zero-downtime deploys.

A web instance takes requests once its health check passed (see
`peoplescloud.health`) and until it starts draining: a replaced instance is
taken out of the router's list at once, and stopped `[web] drain_seconds`
later, so the requests it has finish. Checks run in threads of their own (one
may take the whole of its attempts); the reconciler's pass collects their
outcomes. Non-web processes never come here: they are stopped, then started.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from peoplescloud.health import Check, run_checks
from peoplescloud.runtime.base import InstanceKey, InstanceStatus

log = logging.getLogger(__name__)

CHECKS_AT_ONCE = 8
FAILURES_KEPT = 500  # why checks failed, kept for `ps` and the deploy that waits


class CheckFn(Protocol):
    def __call__(
        self,
        address: str,
        host: str,
        checks: Sequence[Check],
        alive: Callable[[], bool],
        cancel: threading.Event | None = None,
    ) -> str: ...


class WebHealth:
    def __init__(self, check: CheckFn = run_checks) -> None:
        self._check = check
        self._healthy: set[InstanceKey] = set()
        self._failed: dict[InstanceKey, str] = {}  # why its check failed
        # Checks under way: the instance checked, the outcome ("" passed), a cancel.
        self._checks: dict[InstanceKey, tuple[InstanceStatus, Future[str], threading.Event]] = {}
        self._draining: dict[InstanceKey, float] = {}  # -> when to stop it (monotonic)
        self._pool = ThreadPoolExecutor(CHECKS_AT_ONCE, thread_name_prefix="health")
        # Called from a check's thread when it is done: the daemon wakes a pass,
        # which routes to the instance (and drains the one it replaces) or stops it.
        self.on_done: Callable[[], None] = lambda: None

    # --- what the router and the deploy ask (any thread) --------------------------
    def serving(self, key: InstanceKey) -> bool:
        """Whether requests may go to the instance: it passed and is not draining."""
        return key in self._healthy and key not in self._draining

    def healthy(self, key: InstanceKey) -> bool:
        return key in self._healthy

    def failure(self, key: InstanceKey) -> str:
        """Why the instance's last check failed ("" if it did not)."""
        return self._failed.get(key, "")

    # --- the reconciler's pass (under its lock) -----------------------------------
    def watch(
        self, status: InstanceStatus, checks: Sequence[Check], host: str, alive: Callable[[], bool]
    ) -> None:
        """Begin checking a running instance unless it passed, failed, or is being checked."""
        key = status.key
        if key in self._healthy or key in self._checks or key in self._failed:
            return
        cancel = threading.Event()
        address = status.address or ""
        future = self._pool.submit(self._run, address, host, list(checks), alive, cancel)
        self._checks[key] = (status, future, cancel)

    def _run(
        self,
        address: str,
        host: str,
        checks: list[Check],
        alive: Callable[[], bool],
        cancel: threading.Event,
    ) -> str:
        try:
            if not address:
                return "the instance has no address to check"
            return self._check(address, host, checks, alive, cancel)
        except Exception as e:  # a check must end with an outcome, never hang the deploy
            log.exception("health check of %s", address)
            return f"the check could not run: {e}"
        finally:
            with contextlib.suppress(RuntimeError):  # the daemon's loop closed: it stops
                self.on_done()

    def collect(self) -> list[tuple[InstanceStatus, str]]:
        """The checks that ended since the last pass: the ones that passed now
        serve; the failed ones are returned with why, for the pass to stop."""
        failed = []
        for key, (status, future, _cancel) in list(self._checks.items()):
            if not future.done():
                continue
            del self._checks[key]
            why = future.result()
            if why == "cancelled":
                continue
            if why:
                self._failed[key] = why
                for old in list(self._failed)[:-FAILURES_KEPT]:
                    del self._failed[old]
                failed.append((status, why))
            else:
                self._healthy.add(key)
        return failed

    def lost(self, key: InstanceKey) -> None:
        """The instance exited (or is going): it serves no more, and a copy started
        again under the same key is checked afresh."""
        self._healthy.discard(key)
        if (checking := self._checks.pop(key, None)) is not None:
            checking[2].set()

    def retry(self, key: InstanceKey) -> None:
        """Forget a failed check: the instance is started again, and checked again."""
        self._failed.pop(key, None)

    def undrain(self, key: InstanceKey) -> None:
        self._draining.pop(key, None)

    def drain(self, key: InstanceKey, seconds: float) -> None:
        """Take the instance out of the router's list now; `drained` after `seconds`."""
        self._draining.setdefault(key, time.monotonic() + seconds)

    def draining(self, key: InstanceKey) -> bool:
        return key in self._draining

    def drained(self, key: InstanceKey) -> bool:
        """Whether a draining instance's grace is over (it may be stopped now)."""
        return time.monotonic() >= self._draining.get(key, float("inf"))

    def keep_only(self, present: Iterable[InstanceKey]) -> None:
        """Forget the instances that are gone (not why a check failed: the deploy
        waiting for it may ask after the instance was stopped)."""
        here = set(present)
        for key in [k for k in self._checks if k not in here]:
            self.lost(key)
        self._healthy &= here
        for key in [k for k in self._draining if k not in here]:
            del self._draining[key]

    def close(self) -> None:
        for _status, _future, cancel in list(self._checks.values()):
            cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
