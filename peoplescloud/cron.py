"""Scheduled jobs: app.json's `cron`, run as one-off processes of the app's
current release at their times (UTC), through the runtime's `run` (the limits
and sandbox of `run APP`), their output in the app's log as `app[cron.N]`.

One node runs an app's jobs (`runner_of`): a lone node; in a swarm the member
its first web instance (else its first instance) is placed on, which the
replicated state names the same for every member, or, with nothing placed, the
live member first by name. A job still running when its time comes again is
skipped, never run twice at once; so is one past the node's [shares]
max_oneoffs jobs running together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from builder.crontab import parse_schedule
from builder.errors import BuildError
from gitserver.service import CronRow
from peoplescloud.cluster import Cluster
from peoplescloud.desired import instance_spec
from peoplescloud.errors import PCError
from peoplescloud.logbus import LogBus
from peoplescloud.phases import LineSplitter
from peoplescloud.processes import process_names
from peoplescloud.reconciler import Reconciler
from peoplescloud.settings import Settings
from peoplescloud.state import App, Snapshot

CRON_EVERY = 5.0  # seconds between looks at the clock: a job starts this late at most


def utc_now() -> datetime:
    return datetime.now(UTC)


def runner_of(snap: Snapshot, app: App, node: str) -> str:
    """The node that runs `app`'s jobs ("" when no member may)."""
    if not snap.members:
        return node
    names = process_names(app.scale)
    first = next((p for p in names if p.startswith("web.")), names[0] if names else "")
    if where := app.placement.get(first, ""):
        return where
    live = [n for n, m in sorted(snap.members.items()) if m.lease_expires > time.time()]
    return next((n for n in live if not snap.members[n].leaving), "")


def job_rows(app: App, now: datetime) -> list[CronRow]:
    """The current release's jobs, with their next run after `now`."""
    rows = []
    for n, job in enumerate(app.release().cron if app.current is not None else [], 1):
        try:
            nxt = parse_schedule(job["schedule"]).next_after(now)
        except BuildError:
            nxt = None
        when = nxt.strftime("%Y-%m-%dT%H:%M:%SZ") if nxt is not None else ""
        rows.append(CronRow(f"cron.{n}", job["schedule"], job["command"], when))
    return rows


class Cron:
    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        reconciler: Reconciler,
        logbus: LogBus,
        clock: Callable[[], datetime] = utc_now,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """`clock` and `spawn` (how a job's run is started; a thread of its own by
        default) are for tests."""
        self.settings = settings
        self.cluster = cluster
        self.reconciler = reconciler
        self.logbus = logbus
        self.clock = clock
        self.spawn = spawn or (lambda work: threading.Thread(target=work, daemon=True).start())
        self._lock = threading.Lock()
        self._fired: dict[tuple[str, int], datetime] = {}  # job -> the minute it last started
        self._running: set[tuple[str, int]] = set()

    def tick(self) -> None:
        """Start the jobs whose minute this is (each once a minute)."""
        minute = self.clock().astimezone(UTC).replace(second=0, microsecond=0)
        if not self.cluster.may_run():
            return
        snap = self.cluster.state.read()
        for app in snap.apps.values():
            if app.current is None or app.stopped:
                continue
            if runner_of(snap, app, self.settings.name) != self.settings.name:
                continue
            release = app.release()
            for n, job in enumerate(release.cron, 1):
                try:
                    due = parse_schedule(job["schedule"]).matches(minute)
                except BuildError:
                    continue  # checked at the push: not reached
                if due:
                    self._start(app, release.version, n, job["command"], minute)

    def _start(self, app: App, version: int, n: int, command: str, minute: datetime) -> None:
        key = (app.name, n)
        with self._lock:
            if self._fired.get(key) == minute:
                return
            self._fired[key] = minute
            if key in self._running:
                why = "its last run is still going"
            elif len(self._running) >= self.settings.shares.max_oneoffs:
                why = "the node runs [shares] max_oneoffs one-offs already"
            else:
                why = ""
                self._running.add(key)
        if why:
            self.logbus.event(app.name, f"cron.{n} skipped at {minute:%H:%M}: {why}")
            return
        self.spawn(lambda: self._run(app, version, n, command))

    def _run(self, app: App, version: int, n: int, command: str) -> None:
        source = f"cron.{n}"
        try:
            spec = instance_spec(app, version, source, command, self.settings.name, self.settings)
            self.logbus.event(app.name, f"{source} runs: {command}")
            lines = LineSplitter(lambda line: self.logbus.line(app.name, source, line))
            try:
                with self.reconciler.holding(spec):
                    code = self.reconciler.runtime.run(spec, ["sh", "-c", command], lines.feed)
            finally:
                lines.flush()
            self.logbus.event(app.name, f"{source} exited with code {code}")
        except PCError as e:  # its slug is gone, the runtime failed
            self.logbus.event(app.name, f"{source} did not run: {e}")
        finally:
            with self._lock:
                self._running.discard((app.name, n))
