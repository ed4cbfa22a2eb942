"""Apps: create, list, show, destroy."""

from __future__ import annotations

import shutil
import socket

from gitserver.service import AppRow
from peoplescloud.domains import drop_app
from peoplescloud.errors import PCError
from peoplescloud.names import check_app_name
from peoplescloud.processes import process_names
from peoplescloud.service.base import ServiceBase
from peoplescloud.state import App, now

WILDCARDS = ("0.0.0.0", "::", "")  # `listen` values that name no one address


class AppCommands(ServiceBase):
    def create(self, user: str, app: str) -> None:
        """An empty app of `user`, so that config and scale can be set before the
        first push (which then finds it, as Heroku's and Dokku's `apps:create`)."""
        check_app_name(app)
        with self.state.change() as s:
            self._runs_here(user, s)
            if app in s.apps:
                if s.apps[app].owner == user:
                    raise PCError(f"you already have {app}: `apps` lists your apps")
                raise PCError(f"{app} is taken: choose another name")
            self._new_app(s, user, app, empty=True)
        self.logbus.event(app, f"created by {user}")
        self._record(user, app, "apps:create")

    def apps(self, user: str) -> list[AppRow]:
        """The apps `user` owns or shares (admins: all), with their role."""
        snap = self.state.read()
        rows = []
        for a in sorted(snap.apps.values(), key=lambda a: a.name):
            role = self._role(user, a, snap)
            if not role:
                continue
            rows.append(
                AppRow(
                    name=a.name,
                    # the owner's account removed: the app stays and says whose it was
                    owner=a.owner if a.owner in snap.users else f"{a.owner} (removed)",
                    release=f"v{a.current}" if a.current else "-",
                    state=self._app_state(a),
                    scale=" ".join(f"{t}={n}" for t, n in sorted(a.scale.items())),
                    role=role,
                )
            )
        return rows

    def _app_state(self, app: App) -> str:
        if app.current is None:
            return "not deployed"
        if app.stopped:
            return "stopped"
        if not process_names(app.scale):
            return "idle"  # every type scaled to 0
        running = self.reconciler.everywhere()
        mine = [s for key, s in running.items() if key.app == app.name]
        if any(not s.running for s in mine):
            return "crashed"
        # No instance yet (being started, or its slug still being fetched): not running.
        return "running" if mine else "starting"

    def app_info(self, user: str, app: str) -> dict[str, str]:
        a = self._app(user, app)
        info = {
            "name": a.name,
            "owner": a.owner,
            "created": a.created,
            "state": self._app_state(a),
            "release": f"v{a.current}" if a.current else "-",
            "git": f"ssh://pc@{self._git_host()}:{self.settings.ssh_port}/{a.name}",
            "node": self.settings.name,
        }
        if a.current:
            r = a.release()
            info.update(kind=r.kind, stack=r.stack, slug=r.slug, commit=r.commit)
            if r.image:
                info["image"] = r.image
            info["processes"] = "; ".join(f"{t}: {c}" for t, c in r.processes.items())
            info["scale"] = " ".join(f"{t}={n}" for t, n in sorted(a.scale.items()))
            if "web" in r.processes:
                info["url"] = f"http://{a.name}.{self.settings.domain}:{self.settings.router_port}/"
        domains = sorted(h for h, owner in self.state.read().domains.items() if owner == a.name)
        info["domains"] = " ".join(domains) or "-"
        return info

    def _git_host(self) -> str:
        """The host name of the app's git URL: the address the node advertises, else
        the one it listens on; listening everywhere, the machine's host name (the
        one name users may reach it by that the node knows)."""
        host = self.settings.advertise
        if not host:
            listen = self.settings.listen
            host = socket.gethostname() if listen in WILDCARDS else listen
        return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL

    def destroy(self, user: str, app: str) -> None:
        a = self._app(user, app, need="own")
        with self.state.change() as s:
            del s.apps[app]
            drop_app(s, app)  # its custom domains become free
            s.destroyed[app] = now()
        self.reconciler.reconcile()
        self.deployer.unpin_unused({r.slug for r in a.releases})
        shutil.rmtree(self.settings.repo_path(app), ignore_errors=True)
        shutil.rmtree(self.settings.cache_dir / app, ignore_errors=True)
        self.logbus.forget(app)
        self._record(user, app, "apps:destroy")
