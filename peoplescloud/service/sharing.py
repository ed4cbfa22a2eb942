"""Sharing an app: collaborators may push, read logs and config, scale, restart,
run and roll back; its owner and the admins alone destroy it, transfer it or
change who shares it."""

from __future__ import annotations

from peoplescloud.errors import NotFound, PCError
from peoplescloud.quotas import apps_of, limit_of, refusal
from peoplescloud.service.base import ServiceBase
from peoplescloud.state import Snapshot


class SharingCommands(ServiceBase):
    def sharing(self, user: str, app: str) -> list[str]:
        return sorted(self._app(user, app).collaborators)

    def sharing_add(self, user: str, app: str, other: str) -> None:
        self._app(user, app, need="own")
        with self.state.change() as s:
            a = self._app(user, app, s, need="own")
            _known(s, other)
            if other == a.owner or other in a.collaborators:
                raise PCError(f"{other} already shares {app}: `sharing {app}` lists who does")
            a.collaborators.append(other)
        self._record(user, app, f"sharing:add {other}")

    def sharing_remove(self, user: str, app: str, other: str) -> None:
        self._app(user, app, need="own")
        with self.state.change() as s:
            a = self._app(user, app, s, need="own")
            if other not in a.collaborators:
                raise NotFound(f"{app} is not shared with {other}: `sharing {app}` lists who is")
            a.collaborators.remove(other)
        self._record(user, app, f"sharing:remove {other}")

    def transfer(self, user: str, app: str, other: str) -> None:
        """`other` owns the app from now on; the former owner keeps no access
        (unless they are an admin): share it with them again if they should."""
        self._app(user, app, need="own")
        with self.state.change() as s:
            a = self._app(user, app, s, need="own")
            _known(s, other)
            if other == a.owner:
                raise PCError(f"{other} already owns {app}")
            quotas = self.settings.quotas
            if (have := apps_of(s, other)) >= limit_of(s, quotas, other, "apps"):
                raise refusal("apps", other, user, have)  # the new owner's quota counts
            if other in a.collaborators:
                a.collaborators.remove(other)
            before, a.owner = a.owner, other
        self._record(user, app, f"apps:transfer from {before} to {other}")


def _known(s: Snapshot, name: str) -> None:
    if name not in s.users:
        raise NotFound(f"no user named {name!r}: ask an admin for their user name")
