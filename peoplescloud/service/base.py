"""What every part of the app service shares: the node's parts, and who may do what."""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from peoplescloud.cluster import Cluster
from peoplescloud.deploy import Deployer
from peoplescloud.errors import Forbidden, NotFound, PCError
from peoplescloud.logbus import LogBus
from peoplescloud.names import check_app_name
from peoplescloud.quotas import UserSlots, apps_of, limit_of, refusal
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import Runtime
from peoplescloud.settings import Settings
from peoplescloud.state import App, Snapshot, fingerprint, normalize_key, now

log = logging.getLogger(__name__)

REFUSALS_PER_MINUTE = 30  # refusals recorded in the audit trail, at most


class ServiceBase:
    """The node's parts, access checks, and the git side of a push."""

    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        runtime: Runtime,
        reconciler: Reconciler,
        deployer: Deployer,
        logbus: LogBus,
    ) -> None:
        self.settings = settings
        self.node_name = settings.name
        self.cluster = cluster
        self.state = cluster.state
        self.store = cluster.store
        self.runtime = runtime
        self.reconciler = reconciler
        self.deployer = deployer
        self.logbus = logbus
        self._oneoff = itertools.count(1)
        self._keys: tuple[int, dict[str, str]] = (-1, {})  # state version, key -> user
        self._oneoffs = threading.BoundedSemaphore(settings.shares.max_oneoffs)
        self._refusals: dict[str, float] = {}  # what was refused -> when (monotonic)
        self._refusals_lock = threading.Lock()
        self._user_runs = UserSlots("runs")  # one-offs each user has going here

    # --- who may do what ----------------------------------------------------
    def _app(self, user: str, name: str, snap: Snapshot | None = None, need: str = "use") -> App:
        """The app `name` if `user` may `need` it: "use" (its owner, a collaborator,
        an admin: push, logs, config, scale, run...) or "own" (its owner or an admin:
        destroy, transfer, sharing). Anyone else gets the same refusal whether or
        not the app exists: the names of other people's apps are not told."""
        check_app_name(name)
        inside = snap is not None  # a change is open: a refusal is recorded after it
        snap = snap or self.state.read()
        app = snap.apps.get(name)
        role = self._role(user, app, snap) if app else ""
        if not role:
            if not inside:
                self._refused(user, name, f"refused ({need})")
            raise NotFound(f"no app named {name!r} of yours: `apps` lists yours")
        if need == "own" and role == "collaborator":
            assert app is not None
            if not inside:
                self._refused(user, name, f"refused ({need})")
            raise Forbidden(
                f"{name} is shared with you: only its owner {app.owner} or an admin may do that"
            )
        assert app is not None
        return app

    @staticmethod
    def _role(user: str, app: App, snap: Snapshot) -> str:
        """ "owner", "admin", "collaborator", or "" (none) of `user` for `app`."""
        u = snap.users.get(user)
        if u is None:  # removed: a session opened before keeps no rights
            return ""
        if app.owner == user:
            return "owner"
        if u.admin:
            return "admin"
        return "collaborator" if user in app.collaborators else ""

    def _admin(self, user: str, snap: Snapshot | None = None) -> None:
        u = (snap or self.state.read()).users.get(user)
        if not (u and u.admin):
            self._refused(user, "", "refused (admin)")
            raise Forbidden("only the node's admins may do that")

    # --- the audit trail ------------------------------------------------------
    def _record(self, user: str, app: str, what: str) -> None:
        """Add an event to the audit trail. An event that cannot be recorded (no
        quorum in a swarm, a member's append at the same instant) is logged here and
        never fails the action it describes."""
        for _ in range(2):  # Conflict: another member trimmed the same old event
            try:
                with self.state.change() as s:
                    s.add_event(user, app, what)
                return
            except PCError as e:
                reason = e
        log.warning("event not recorded (%s): %s %s %s", reason, user, app, what)

    def _refused(self, user: str, app: str, what: str) -> None:
        """Record a refusal, at most once a minute per (who, app, what) and
        REFUSALS_PER_MINUTE in all: refusals cost a state change each, and whoever
        causes them is not trusted."""
        key = f"{user}\0{app}\0{what}"
        t = time.monotonic()
        with self._refusals_lock:
            seen = self._refusals
            for k in [k for k, at in seen.items() if t - at > 60]:
                del seen[k]
            if key in seen or len(seen) >= REFUSALS_PER_MINUTE:
                return
            seen[key] = t
        self._record(user, app, what)

    def refused_login(self, openssh_public_key: str) -> None:
        """A key nobody owns was offered (`gitserver.server`): its fingerprint goes
        to the audit trail (admins see it), within the refusals' rate."""
        try:
            print_ = fingerprint(openssh_public_key)
        except (ValueError, IndexError):
            return
        self._refused("", "", f"refused login: key {print_}")

    def _runs_here(self, user: str, snap: Snapshot | None = None) -> None:
        """Where the runtime cannot keep tenants apart, only the node's admins (its
        host) may push or run code on it."""
        caps = self.runtime.capabilities
        if caps.isolates_tenants:
            return
        u = (snap or self.state.read()).users.get(user)
        if not (u and u.admin):
            raise Forbidden(caps.owner_only())

    def user_for_key(self, openssh_public_key: str) -> str | None:
        """Asked for every key a client offers, before anything else: an index of the
        keys, rebuilt when the users changed, not a copy of the state per key."""
        wanted = normalize_key(openssh_public_key)
        version, keys = self._keys
        if version != self.state.version_of("users"):
            version = self.state.version_of("users")  # before the read: the index is as new
            keys = {}
            for user in self.state.read().users.values():
                for key in user.keys:
                    keys.setdefault(key, user.name)  # as Snapshot.user_for_key: the first
            self._keys = (version, keys)
        return keys.get(wanted)

    # --- git ------------------------------------------------------------------
    def repo_for(self, user: str, app: str, write: bool) -> Path:
        check_app_name(app)
        if not write:
            self._up_to_date(self._app(user, app), write)
            return self.settings.repo_path(app)
        try:
            with self.state.change() as s:  # check and create in one change: first pushes race
                self._runs_here(user, s)
                if app in s.apps and not self._role(user, s.apps[app], s):
                    # a push would create it: that the name is taken is no secret
                    raise Forbidden(f"{app} is taken: push to another name")
                found = self._app(user, app, s) if app in s.apps else self._new_app(s, user, app)
        except Forbidden:
            self._refused(user, app, "refused (push)")
            raise
        self._up_to_date(found, write)
        path = self.settings.repo_path(app)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            from dulwich.repo import Repo  # here: a lone idle daemon needs no dulwich

            Repo.init_bare(path, mkdir=True)
        return path

    def _new_app(self, s: Snapshot, user: str, app: str, empty: bool = False) -> App:
        """A new app of `user` in the state being changed, within the node's limit."""
        if len(s.apps) >= self.settings.shares.max_apps:
            raise PCError(f"this node hosts {len(s.apps)} apps, its limit; ask the host")
        if (have := apps_of(s, user)) >= limit_of(s, self.settings.quotas, user, "apps"):
            raise refusal("apps", user, user, have)
        new = s.apps[app] = App(name=app, owner=user, created=now(), created_empty=empty)
        s.destroyed.pop(app, None)
        return new

    def _up_to_date(self, app: App, write: bool) -> None:
        """In a swarm, the app's history may have been pushed to another node: the
        cluster copies it here first, so clones (and the ref a push is checked
        against) are the same on every node. A push goes on without it when no
        copy can be had."""
        if app.current is None:
            return
        try:
            self.cluster.sync_repo(app.name, app.release(), self.settings.repo_path(app.name))
        except PCError:
            if not write:
                raise

    def deploy(self, user: str, app: str, commit: str, say: Callable[[str], None]) -> str:
        self._app(user, app)
        self._runs_here(user)
        try:
            repo = self.settings.repo_path(app)
            release = self.deployer.deploy(user, app, repo, commit, say)
        except PCError:
            self._record(user, app, f"push {commit[:7]}: deploy failed")
            self._forget_if_never_deployed(app)
            raise
        self._record(user, app, f"push {commit[:7]}: {release} deployed")
        return release

    def push_ended(self, user: str, app: str) -> None:
        self._forget_if_never_deployed(app)

    def _forget_if_never_deployed(self, app: str) -> None:
        """A first push that fails, or pushes nothing, leaves no app behind (nor its
        repo): only a deploy makes an app that holds one of the node's slots, unless
        the app was made with `apps:create` (its config and scale wait for a push)."""
        if self.deployer.busy(app):  # refused because another push builds it: keep it
            return
        with self.state.change() as s:
            if app not in s.apps or s.apps[app].releases or s.apps[app].created_empty:
                return
            del s.apps[app]
        shutil.rmtree(self.settings.repo_path(app), ignore_errors=True)
