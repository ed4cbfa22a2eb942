"""Releases: list them, roll back to one; and the swarm's members."""

from __future__ import annotations

from dataclasses import replace

from gitserver.service import CronRow, NodeRow, ReleaseRow
from peoplescloud.cron import job_rows, utc_now
from peoplescloud.errors import NotFound, PCError, UsageError
from peoplescloud.service.base import ServiceBase
from peoplescloud.state import now


class ReleaseCommands(ServiceBase):
    def releases(self, user: str, app: str) -> list[ReleaseRow]:
        a = self._app(user, app)
        snap = self.state.read()
        pins: dict[str, list[str]] = {}
        for node, cids in snap.held.items():
            for cid in cids:
                pins.setdefault(cid, []).append(node)
        return [
            ReleaseRow(
                version=r.name,
                current=r.version == a.current,
                description=r.description,
                pushed_by=r.pushed_by,
                created=r.created,
                slug=r.slug,
                pinned_on=sorted(pins.get(r.slug, [])),
            )
            for r in reversed(a.releases)
        ]

    def cron(self, user: str, app: str) -> list[CronRow]:
        return job_rows(self._app(user, app), utc_now())

    def swarm_nodes(self, user: str) -> list[NodeRow]:
        return self.cluster.members()

    def rollback(self, user: str, app: str, version: str) -> str:
        a = self._app(user, app)
        number = version[1:]
        if not (version.startswith("v") and number.isascii() and number.isdigit()):
            raise UsageError(f"{version!r} is not a release: use vN, as `releases {app}` shows")
        target = a.release(int(number))
        if not self.store.has(target.slug):
            raise NotFound(f"the slug of {version} is no longer kept; push that commit again")
        with self.deployer.exclusive(app):  # not beside a push or another rollback
            with self.state.change() as s:
                a2 = s.app(app)
                new = replace(
                    target,
                    version=a2.next_version(),
                    created=now(),
                    pushed_by=user,
                    description=f"Rollback to {version}",
                )
                a2.releases.append(new)
            self.logbus.event(app, f"release {new.name} by {user}: rollback to {version}")
            try:
                running = self.deployer.activate(app, new.version, lambda _line: None)
            except PCError:
                self._record(user, app, f"rollback to {version}: {new.name} failed")
                raise
            self._record(user, app, f"rollback to {version}: {running} deployed")
            return running
