"""The audit trail: who did what, and when (`events [APP] [-n N]`). Kept in the
state (replicated in a swarm), bounded: see `Snapshot.add_event`."""

from __future__ import annotations

from gitserver.service import EventRow
from peoplescloud.service.base import ServiceBase


class EventCommands(ServiceBase):
    def events(self, user: str, app: str | None, n: int) -> list[EventRow]:
        """The newest `n`, oldest first: of `app` (anyone who may use it), or of
        every app `user` may use and their own doings (admins: everything)."""
        snap = self.state.read()
        if app is not None:
            self._app(user, app, snap)
            wanted = lambda e: e["app"] == app  # noqa: E731
        elif (u := snap.users.get(user)) and u.admin:
            wanted = lambda e: True  # noqa: E731
        else:
            mine = {a.name for a in snap.apps.values() if self._role(user, a, snap)}
            wanted = lambda e: e["app"] in mine or (e["user"] == user and not e["app"])  # noqa: E731
        found = [snap.events[k] for k in sorted(snap.events) if wanted(snap.events[k])]
        return [EventRow(e["at"], e["user"], e["app"], e["what"]) for e in found[-n:] if n]
