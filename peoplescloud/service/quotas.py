"""Quotas (`quota`, `quota:set`) and an app's resources (`resources`, `resources:set`)."""

from __future__ import annotations

from gitserver.service import QuotaRow, ResourceRow
from peoplescloud.errors import Forbidden, NotFound, UsageError
from peoplescloud.names import check_user_name
from peoplescloud.quotas import UNITS, apps_of, instances_of, limit_of
from peoplescloud.resources import ALL_TYPES, instance_size
from peoplescloud.service.base import ServiceBase
from peoplescloud.settings import QUOTA_NAMES
from peoplescloud.state import Snapshot

MOST_QUOTA = 10_000  # a limit above any node's: "as many as the node allows"


class QuotaCommands(ServiceBase):
    # --- quotas ---------------------------------------------------------------
    def quota(self, user: str, who: str | None = None) -> list[QuotaRow]:
        """Each quota of `who` (default: the asker), its limit and what they use;
        another user's only for admins."""
        snap = self.state.read()
        who = who or user
        if who != user:
            self._quota_admin(snap, user, "see another user's quota")
        if who not in snap.users:
            raise NotFound(f"no user named {who!r}")
        used = {
            "apps": apps_of(snap, who),
            "instances": instances_of(snap, who),
            "runs": self._user_runs.used(who),
            "builds": self.deployer.builds_of(who),
        }
        own = snap.quotas.get(who, {})
        return [
            QuotaRow(
                name=name,
                what=UNITS[name],
                limit=limit_of(snap, self.settings.quotas, who, name),
                used=used[name],
                source=f"set for {who}" if name in own else "node default ([quotas])",
            )
            for name in QUOTA_NAMES
        ]

    def quota_set(self, user: str, who: str, values: dict[str, int]) -> None:
        """An admin sets `who`'s limits; what is over a new limit keeps running,
        nothing more is admitted."""
        check_user_name(who)
        for name, n in values.items():
            if name not in QUOTA_NAMES:
                raise UsageError(f"no quota named {name!r}: quotas are {', '.join(QUOTA_NAMES)}")
            if not 0 <= n <= MOST_QUOTA:
                raise UsageError(f"{name}={n}: a quota is between 0 and {MOST_QUOTA}")
        with self.state.change() as s:
            self._quota_admin(s, user, "set quotas")
            if who not in s.users:
                raise NotFound(f"no user named {who!r}")
            s.quotas.setdefault(who, {}).update(values)

    @staticmethod
    def _quota_admin(snap: Snapshot, user: str, what: str) -> None:
        u = snap.users.get(user)
        if not (u and u.admin):
            raise Forbidden(f"only an admin may {what}; `quota` shows yours")

    # --- resources ------------------------------------------------------------
    def resources(self, user: str, app: str) -> list[ResourceRow]:
        """Memory and CPU of one instance of each of the app's process types."""
        a = self._app(user, app)
        shares = self.settings.shares
        if a.current is not None:
            types = list(a.release().processes)
        else:
            types = sorted(a.scale) or [ALL_TYPES]
        rows = []
        for ptype in types:
            size = instance_size(a, ptype, shares.instance_memory_mb, shares.instance_cpus)
            source = (
                f"set for {ptype}"
                if ptype in a.resources
                else "set for the app"
                if ALL_TYPES in a.resources
                else "node default"
            )
            rows.append(ResourceRow(ptype, size.memory_mb, size.cpus, source))
        return rows

    def resources_set(
        self, user: str, app: str, ptype: str | None, memory_mb: int | None, cpus: float | None
    ) -> str | None:
        """Set the memory and/or CPU of one instance of `ptype` (None: every type),
        within the node's per-instance ceiling. Like a config change it is a new
        release of the same slug, so the reconciler replaces the instances with
        ones of the new size. The new release's name (None before the first push)."""
        self._app(user, app)
        shares = self.settings.shares
        if memory_mb is None and cpus is None:
            raise UsageError("missing memory=SIZE or cpu=N")
        if memory_mb is not None and not 16 <= memory_mb <= shares.max_instance_memory_mb:
            raise UsageError(
                f"memory={memory_mb}M: this node gives an instance 16 MB to "
                f"{shares.max_instance_memory_mb} MB ([shares] max_instance_memory_mb)"
            )
        if cpus is not None and not 0.01 <= cpus <= shares.max_instance_cpus:
            raise UsageError(
                f"cpu={cpus:g}: this node gives an instance 0.01 to "
                f"{shares.max_instance_cpus:g} CPU ([shares] max_instance_cpus)"
            )
        figures: dict[str, float] = {}
        if memory_mb is not None:
            figures["memory_mb"] = memory_mb
        if cpus is not None:
            figures["cpus"] = cpus
        said = " ".join(f"{k}={v:g}" for k, v in figures.items())
        description = f"Set resources of {ptype or 'every type'}: {said}"
        with self.state.change() as s:
            a = s.app(app)
            if ptype is not None and a.current is not None and ptype not in a.release().processes:
                known = ", ".join(a.release().processes)
                raise UsageError(f"{app} has no process type {ptype!r} (it has: {known})")
            a.resources.setdefault(ptype or ALL_TYPES, {}).update(figures)
            release = a.rerelease(user, description)
        self.logbus.event(app, f"{description} by {user}")
        self.reconciler.reconcile()
        return release
