"""Apps: list, show, destroy."""

from __future__ import annotations

import shutil

from gitserver.service import AppRow
from peoplescloud.service.base import ServiceBase
from peoplescloud.state import App, now


class AppCommands(ServiceBase):
    def apps(self, user: str) -> list[AppRow]:
        snap = self.state.read()
        admin = bool(snap.users.get(user) and snap.users[user].admin)
        return [
            AppRow(
                name=a.name,
                owner=a.owner,
                release=f"v{a.current}" if a.current else "-",
                state=self._app_state(a),
                scale=" ".join(f"{t}={n}" for t, n in sorted(a.scale.items())),
            )
            for a in sorted(snap.apps.values(), key=lambda a: a.name)
            if admin or a.owner == user
        ]

    def _app_state(self, app: App) -> str:
        if app.current is None:
            return "not deployed"
        if app.stopped:
            return "stopped"
        running = self.reconciler.everywhere()
        mine = [s for key, s in running.items() if key.app == app.name]
        return "crashed" if any(not s.running for s in mine) else "running"

    def app_info(self, user: str, app: str) -> dict[str, str]:
        a = self._app(user, app)
        info = {
            "name": a.name,
            "owner": a.owner,
            "created": a.created,
            "state": self._app_state(a),
            "release": f"v{a.current}" if a.current else "-",
            "git": f"ssh://pc@<this node>:{self.settings.ssh_port}/{a.name}",
            "node": self.settings.name,
        }
        if a.current:
            r = a.release()
            info.update(kind=r.kind, stack=r.stack, slug=r.slug, commit=r.commit)
            info["processes"] = "; ".join(f"{t}: {c}" for t, c in r.processes.items())
            info["scale"] = " ".join(f"{t}={n}" for t, n in sorted(a.scale.items()))
            if "web" in r.processes:
                info["url"] = f"http://{a.name}.{self.settings.domain}:{self.settings.router_port}/"
        return info

    def destroy(self, user: str, app: str) -> None:
        a = self._app(user, app)
        with self.state.change() as s:
            del s.apps[app]
            s.destroyed[app] = now()
        self.reconciler.reconcile()
        self.deployer.unpin_unused({r.slug for r in a.releases})
        shutil.rmtree(self.settings.repo_path(app), ignore_errors=True)
        shutil.rmtree(self.settings.cache_dir / app, ignore_errors=True)
        self.logbus.forget(app)
