"""The node as the SSH layer sees it: `gitserver.service.NodeService`.

Every method checks who may do what, then changes the state (through
`State.change`) and lets the reconciler make the world match.
"""

from __future__ import annotations

import asyncio
import itertools
import shlex
import shutil
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dulwich.repo import Repo

from gitserver.service import AppRow, NodeRow, PsRow, ReleaseRow
from swarm.deploy import Deployer
from swarm.errors import Forbidden, NotFound, PCError, UsageError
from swarm.logbus import LogBus
from swarm.peer import PeerError
from swarm.reconciler import Reconciler, instance_spec
from swarm.repos import has_commit
from swarm.runtime.base import Runtime
from swarm.settings import Settings, check_app_name
from swarm.state import App, Snapshot, State, now
from swarm.store import Store

if TYPE_CHECKING:
    from swarm.membership import Membership

CONFIG_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED_KEYS = {"PORT", "PC_APP", "PC_PROCESS", "PC_RELEASE", "PC_NODE", "HOME", "PATH"}


class Node:
    def __init__(
        self,
        settings: Settings,
        state: State,
        runtime: Runtime,
        store: Store,
        reconciler: Reconciler,
        deployer: Deployer,
        logbus: LogBus,
    ) -> None:
        self.settings = settings
        self.node_name = settings.name
        self.state = state
        self.runtime = runtime
        self.store = store
        self.reconciler = reconciler
        self.deployer = deployer
        self.logbus = logbus
        self._oneoff = itertools.count(1)
        self._repo_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self.membership: Membership | None = None  # set by the daemon in a swarm

    # --- who may do what ----------------------------------------------------
    def _app(self, user: str, name: str, snap: Snapshot | None = None) -> App:
        check_app_name(name)
        snap = snap or self.state.read()
        app = snap.app(name)
        u = snap.users.get(user)
        if app.owner != user and not (u and u.admin):
            raise Forbidden(f"{name} belongs to {app.owner}; ask them or an admin")
        return app

    def user_for_key(self, openssh_public_key: str) -> str | None:
        return self.state.read().user_for_key(openssh_public_key)

    def repo_path(self, app: str) -> Path:
        return self.settings.repos_dir / f"{app}.git"

    def repo_for(self, user: str, app: str, write: bool) -> Path:
        check_app_name(app)
        if not write:
            self._up_to_date(self._app(user, app), write)
            return self.repo_path(app)
        with self.state.change() as s:  # check and create in one change: two first pushes race
            if app in s.apps:
                found = self._app(user, app, s)
            elif len(s.apps) >= self.settings.shares.max_apps:
                raise PCError(f"this node hosts {len(s.apps)} apps, its limit; ask the host")
            else:
                found = s.apps[app] = App(name=app, owner=user, created=now())
                s.destroyed.pop(app, None)
        self._up_to_date(found, write)
        path = self.repo_path(app)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Repo.init_bare(path, mkdir=True)
        return path

    def _up_to_date(self, app: App, write: bool) -> None:
        """In a swarm, the app's history may have been pushed to another node: copy
        it here first, so clones (and the ref a push is checked against) are the
        same on every node. A push goes on without it when no copy can be had."""
        if self.membership is None or app.current is None:
            return
        release = app.release()
        path = self.repo_path(app.name)
        if has_commit(path, release.commit):
            return
        with self._repo_locks[app.name]:  # one copy of an app at a time
            if has_commit(path, release.commit):
                return
            try:
                self.membership.sync_repo(app.name, release.commit, release.pushed_to, path)
            except PCError:
                if not write:
                    raise

    def deploy(self, user: str, app: str, commit: str, say: Callable[[str], None]) -> str:
        self._app(user, app)
        try:
            return self.deployer.deploy(user, app, self.repo_path(app), commit, say)
        except PCError:
            self._forget_if_never_deployed(app)
            raise

    def _forget_if_never_deployed(self, app: str) -> None:
        """A first push that fails leaves no app behind (nor its repo)."""
        if self.deployer.busy(app):  # refused because another push builds it: keep it
            return
        with self.state.change() as s:
            if app not in s.apps or s.apps[app].releases:
                return
            del s.apps[app]
        shutil.rmtree(self.repo_path(app), ignore_errors=True)

    # --- apps -----------------------------------------------------------------
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
        mine = [s for (name, _), s in running.items() if name == app.name]
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
        shutil.rmtree(self.repo_path(app), ignore_errors=True)
        self.logbus.forget(app)

    # --- processes --------------------------------------------------------------
    def ps(self, user: str, app: str) -> list[PsRow]:
        a = self._app(user, app)
        if a.current is None:
            return []
        release = a.release()
        running = self.reconciler.everywhere()
        rows = []
        for ptype, count in sorted(a.scale.items()):
            for n in range(1, count + 1):
                process = f"{ptype}.{n}"
                s = running.get((app, process))
                crash = self.reconciler.crash(app, process)
                if a.stopped:
                    state, why = "stopped", "ps:start starts it"
                elif s is None:  # e.g. its slug cannot be fetched yet: it retries
                    state, why = "starting", self.reconciler.start_failure(app, process)
                elif s.running:  # a crash loop shows here, between its restarts
                    state, why = "up", f"restarted after {crash.count} crash(es)" if crash else ""
                else:
                    state = "crashed"
                    why = f"exit code {s.exit_code}" + (f", {crash.count} crashes" if crash else "")
                rows.append(
                    PsRow(
                        process=process,
                        release=s.release if s else release.name,
                        node=a.placement.get(process, self.settings.name),
                        state=state,
                        since=s.started_at if s else "",
                        command=release.processes.get(ptype, ""),
                        why=why,
                    )
                )
        return rows

    def scale(self, user: str, app: str, counts: dict[str, int]) -> None:
        self._app(user, app)
        with self.state.change() as s:
            a = s.app(app)
            release = a.release()
            for ptype, n in counts.items():
                if ptype not in release.processes:
                    known = ", ".join(release.processes)
                    raise UsageError(f"{app} has no process type {ptype!r} (it has: {known})")
                if not 0 <= n <= 20:
                    raise UsageError(f"{ptype}={n}: scale between 0 and 20 instances")
                a.scale[ptype] = n
        self.reconciler.reconcile()

    def restart(self, user: str, app: str, ptype: str | None) -> None:
        a = self._app(user, app)
        if ptype is not None and ptype not in a.scale:
            raise UsageError(f"{app} has no process type {ptype!r}")
        self.reconciler.restart(app, ptype)
        if self.membership is not None:
            self.membership.restart_everywhere(app, ptype)

    def stop(self, user: str, app: str) -> None:
        self._set_stopped(user, app, True)

    def start(self, user: str, app: str) -> None:
        self._set_stopped(user, app, False)

    def _set_stopped(self, user: str, app: str, stopped: bool) -> None:
        self._app(user, app).release()  # nothing to start or stop before a deploy
        with self.state.change() as s:
            s.app(app).stopped = stopped
        self.reconciler.reconcile()

    # --- config -------------------------------------------------------------------
    def config(self, user: str, app: str) -> dict[str, str]:
        return dict(sorted(self._app(user, app).config.items()))

    def config_set(self, user: str, app: str, values: dict[str, str]) -> str | None:
        self._app(user, app)
        for key in values:
            if not key or key[0].isdigit() or set(key) - CONFIG_KEY_CHARS:
                raise UsageError(
                    f"invalid config key {key!r}: letters, digits and '_', not first a digit"
                )
            if key in RESERVED_KEYS:
                raise UsageError(f"{key} is set by People's Cloud and cannot be changed")
        return self._change_config(
            user, app, f"Set {', '.join(sorted(values))}", lambda config: config.update(values)
        )

    def config_unset(self, user: str, app: str, keys: list[str]) -> str | None:
        a = self._app(user, app)
        missing = [k for k in keys if k not in a.config]
        if missing:
            raise NotFound(f"{app} has no config var {', '.join(missing)}")

        def unset(config: dict[str, str]) -> None:
            for k in keys:
                del config[k]

        return self._change_config(user, app, f"Unset {', '.join(keys)}", unset)

    def _change_config(
        self, user: str, app: str, description: str, edit: Callable[[dict[str, str]], None]
    ) -> str | None:
        """Config vars change with a new release of the same slug (as on Heroku), so
        the reconciler replaces the instances: a daemon killed half-way through still
        ends with every instance on the new environment. The new release's name
        (None before the first push: there is nothing to restart)."""
        with self.state.change() as s:
            a = s.app(app)
            edit(a.config)
            if a.current is not None:
                new = replace(
                    a.release(),
                    version=a.next_version(),
                    created=now(),
                    pushed_by=user,
                    description=description,
                )
                a.releases.append(new)
                a.current = new.version
            release = a.release().name if a.current is not None else None
        self.logbus.event(app, f"{description} by {user}")
        self.reconciler.reconcile()
        return release

    # --- releases -------------------------------------------------------------------
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

    def swarm_nodes(self, user: str) -> list[NodeRow]:
        if self.membership is None:
            raise PCError("this node is in no swarm (`pc swarm create` makes one)")
        return [member_row(m) for m in self.membership.swarm_status()["members"]]

    def rollback(self, user: str, app: str, version: str) -> str:
        a = self._app(user, app)
        if not (version.startswith("v") and version[1:].isdigit()):
            raise UsageError(f"{version!r} is not a release: use vN, as `releases {app}` shows")
        target = a.release(int(version[1:]))
        if not self.store.has(target.slug):
            raise NotFound(f"the slug of {version} is no longer kept; push that commit again")
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
        return self.deployer.activate(app, new.version, lambda _line: None)

    # --- one-off processes and logs --------------------------------------------------
    def run(
        self,
        user: str,
        app: str,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None,
        cancel: threading.Event | None = None,
    ) -> int:
        a = self._app(user, app)
        if not argv:
            raise UsageError("run needs a command, e.g. `run APP python -V`")
        release = a.release()
        spec = instance_spec(
            a,
            release.version,
            f"run.{next(self._oneoff)}",
            shlex.join(argv),
            self.node_name,
            self.settings,
        )
        self.logbus.event(app, f"{user} runs {spec.process}: {shlex.join(argv)}")
        with self.reconciler.holding(spec):
            return self.runtime.run(spec, argv, output, stdin, cancel)

    async def logs(
        self, user: str, app: str, lines: int, ptype: str | None, follow: bool
    ) -> AsyncIterator[str]:
        await asyncio.to_thread(self._app, user, app)
        siblings = (
            await self.membership.sibling_logs(app, lines, ptype, follow) if self.membership else []
        )
        if not follow:
            mine = await asyncio.to_thread(self.logbus.tail, app, lines, ptype)
            for theirs in await asyncio.gather(*(_collect(_decoded(s)) for s in siblings)):
                mine += theirs
            mine.sort(key=lambda line: line[:20])  # by timestamp; stable within a node
            for line in mine[-lines:]:
                yield line
            return
        sources = [self.logbus.follow(app, ptype, backlog=lines), *map(_decoded, siblings)]
        async for line in merge(sources):
            yield line


def member_row(m: dict) -> NodeRow:
    """A member as `Membership.swarm_status()` gives it -> a row of `swarm:nodes`."""
    return NodeRow(
        name=m["name"],
        state=m["state"] + (" (leaving)" if m.get("leaving") else ""),
        address=m["address"],
        shares=f"{m['memory_mb']} MB, {m['cpus']:g} cpu, {m['max_apps']} apps",
        uses=f"{m['used_mb']} MB, {m['used_cpus']:g} cpu, "
        f"{m['apps']} app{'' if m['apps'] == 1 else 's'}",
        instances=m["instances"],
    )


async def _collect(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def _decoded(stream: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """A sibling's log lines; one that does not answer costs its lines, not the command."""
    try:
        async for raw in stream:
            yield raw.decode().rstrip("\n")
    except PeerError as e:
        yield f"{now()} app[pc]: logs unavailable: {e}"


async def merge(sources: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """Lines of several followed logs as they come; stopping stops them all."""
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

    async def pump(source: AsyncIterator[str]) -> None:
        async for line in source:
            await queue.put(line)

    tasks = [asyncio.ensure_future(pump(s)) for s in sources]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in tasks:
            task.cancel()
