"""Process instances: ps, scale, restart, stop, start."""

from __future__ import annotations

from builder.procfile import PROCESS_TYPE
from gitserver.service import PsRow
from peoplescloud.errors import PCError, UsageError
from peoplescloud.processes import process_names, ptype_of
from peoplescloud.quotas import instances_of, limit_of, refusal
from peoplescloud.runtime.base import InstanceKey, InstanceStatus
from peoplescloud.service.base import ServiceBase
from peoplescloud.state import Snapshot


class ProcessCommands(ServiceBase):
    def ps(self, user: str, app: str) -> list[PsRow]:
        a = self._app(user, app)
        release = a.release()
        running: dict[str, InstanceStatus] = {}  # process -> its instance, the newest release
        for key, status in sorted(self.reconciler.everywhere().items(), key=_by_version):
            if key.app == app:
                running[key.process] = status
        swarm = bool(self.state.read().members)  # an instance no member can take has no node
        rows = []
        for process in process_names(dict(sorted(a.scale.items()))):
            s = running.get(process)
            crash = self.reconciler.crash(app, process)
            if a.stopped:
                state, why = "stopped", "ps:start starts it"
            elif s is None:  # e.g. its slug cannot be fetched yet: it retries
                state, why = "starting", self.reconciler.start_failure(app, process)
            elif (
                s.running
                and s.release != release.name
                and (failed := self.reconciler.start_failure(app, process))
            ):  # a web instance of the current release failed its health check
                state, why = "up", f"{release.name} does not take over: {failed}"
            elif s.running:  # a crash loop shows here, between its restarts
                state, why = "up", f"restarted after {crash.count} crash(es)" if crash else ""
            else:
                state = "crashed"
                why = f"exit code {s.exit_code}" + (f", {crash.count} crashes" if crash else "")
            rows.append(
                PsRow(
                    process=process,
                    release=s.release if s else release.name,
                    node=a.placement.get(process, "-" if swarm else self.settings.name),
                    state=state,
                    since=s.started_at if s else "",
                    command=release.processes.get(ptype_of(process), ""),
                    why=why,
                )
            )
        return rows

    def scale(self, user: str, app: str, counts: dict[str, int]) -> None:
        """Set how many instances of each type run. Before the first push the types
        are not known yet: the counts are kept for the types the first release has
        (a type scaled to 0 then is not started, nor waited for)."""
        owner = self._app(user, app).owner
        with self.state.change() as s:
            before = _wanted(s)
            mine = instances_of(s, owner)
            a = s.app(app)
            types = a.release().processes if a.current is not None else None
            for ptype, n in counts.items():
                if types is not None and ptype not in types:
                    known = ", ".join(types)
                    raise UsageError(f"{app} has no process type {ptype!r} (it has: {known})")
                if types is None and not PROCESS_TYPE.fullmatch(ptype):
                    raise UsageError(
                        f"{ptype!r} is no process type: lowercase letters, digits, '-' or '_'"
                    )
                if not 0 <= n <= 20:
                    raise UsageError(f"{ptype}={n}: scale between 0 and 20 instances")
                a.scale[ptype] = n
            self._check_instances(s, before)
            self._check_quota(s, user, a.owner, mine)
        self.reconciler.reconcile()
        self._record(user, app, "ps:scale " + " ".join(f"{t}={n}" for t, n in counts.items()))

    def _check_instances(self, snap: Snapshot, before: int) -> None:
        """Refuse a scale up that asks more instances than the node (in a swarm:
        its members, at this node's limit each) may run; scaling down always goes."""
        most = self.settings.shares.max_instances * max(1, len(snap.members))
        wanted = _wanted(snap)
        if wanted > most and wanted > before:
            where = "the node runs" if not snap.members else "the swarm's nodes run"
            raise PCError(
                f"{wanted} instances in all: {where} at most {most} "
                "([shares] max_instances); scale something down first"
            )

    def _check_quota(self, snap: Snapshot, user: str, owner: str, before: int) -> None:
        """Refuse a scale up past the instance quota of the app's owner (whoever asks:
        a collaborator spends the owner's quota); scaling down always goes."""
        wanted = instances_of(snap, owner)
        if wanted > limit_of(snap, self.settings.quotas, owner, "instances") and wanted > before:
            raise refusal("instances", owner, user, wanted)

    def restart(self, user: str, app: str, ptype: str | None) -> None:
        a = self._app(user, app)
        if ptype is not None and ptype not in a.scale:
            raise UsageError(f"{app} has no process type {ptype!r}")
        self.reconciler.restart(app, ptype)
        self.cluster.restart_elsewhere(app, ptype)
        self._record(user, app, f"ps:restart {ptype or ''}".rstrip())

    def stop(self, user: str, app: str) -> None:
        self._set_stopped(user, app, True)

    def start(self, user: str, app: str) -> None:
        self._set_stopped(user, app, False)

    def _set_stopped(self, user: str, app: str, stopped: bool) -> None:
        self._app(user, app).release()  # nothing to start or stop before a deploy
        with self.state.change() as s:
            s.app(app).stopped = stopped
        self.reconciler.reconcile()
        self._record(user, app, "ps:stop" if stopped else "ps:start")


def _wanted(snap: Snapshot) -> int:
    """Instances the state asks for, all apps together."""
    return sum(
        n
        for a in snap.apps.values()
        if a.target is not None and not a.stopped
        for n in a.scale.values()
    )


def _by_version(item: tuple[InstanceKey, InstanceStatus]) -> int:
    """Instances sorted so that a newer release's comes after an older one's."""
    release = item[0].release
    return int(release[1:]) if release[1:].isdigit() else 0
