"""One push, from a commit to a running release: checkout -> build -> store ->
release -> reconcile -> check that it runs. A failure at any step before the
release is recorded leaves the running release untouched; a release whose
instances do not start (or whose web instances fail their health check) never
becomes current, and the one before it serves on (see `peoplescloud.rollout`)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import builder
from peoplescloud.cluster import Cluster
from peoplescloud.errors import PCError
from peoplescloud.health import budget
from peoplescloud.locks import KeyedLocks
from peoplescloud.logbus import LogBus
from peoplescloud.phases import Phases
from peoplescloud.processes import is_web, process_names
from peoplescloud.quotas import UserSlots, limit_of
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceKey, image_repo
from peoplescloud.settings import Settings
from peoplescloud.stack_choice import StackChooser
from peoplescloud.state import KEEP_RELEASES, Release, now

RELEASE_TYPE = "release"  # the Procfile type of Heroku's release phase
SETTLE = 1.0  # seconds a new instance must keep running for its push to succeed
BUILD_WAIT = 10.0  # seconds a push waits for one of the node's build slots


class Deployer:
    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        reconciler: Reconciler,
        logbus: LogBus,
        executor: builder.Executor,
        locks: KeyedLocks | None = None,
    ) -> None:
        """`locks`: the node's per-app locks; a push holds its app's for its whole run."""
        self.settings = settings
        self.cluster = cluster
        self.state = cluster.state
        self.store = cluster.store
        self.reconciler = reconciler
        self.logbus = logbus
        self.executor = executor
        self.stacks = StackChooser(settings, executor)
        self.locks = locks or KeyedLocks()
        self.phases = Phases(settings, reconciler, logbus)
        self._builds = threading.BoundedSemaphore(settings.build.max_concurrent)
        self._user_builds = UserSlots("builds")  # builds each user has going here

    def deploy(
        self, user: str, app: str, repo: Path, commit: str, say: Callable[[str], None]
    ) -> str:
        """Build and release `commit`; returns "vN" once its instances run."""
        with self.exclusive(app):
            return self._deploy(user, app, repo, commit, say)

    @contextmanager
    def exclusive(self, app: str) -> Iterator[None]:
        """Hold the app's deploy lock for the block, or refuse at once: one push or
        rollback at a time, so two cannot leave the app on the wrong release."""
        with self.locks.try_hold(app) as free:
            if not free:
                raise PCError(f"another deploy of {app} is under way; try again when it is done")
            yield

    def busy(self, app: str) -> bool:
        return self.locks.held(app)

    def builds_of(self, user: str) -> int:
        """The builds `user` has going on this node (their `builds` quota counts them)."""
        return self._user_builds.used(user)

    def _deploy(
        self, user: str, app: str, repo: Path, commit: str, say: Callable[[str], None]
    ) -> str:
        tmp_root = self.settings.tmp_dir
        tmp_root.mkdir(parents=True, exist_ok=True)
        most = limit_of(self.state.read(), self.settings.quotas, user, "builds")
        with self._user_builds.hold(user, most), self._build_slot(say):
            work = Path(tempfile.mkdtemp(prefix=f"build-{app}-", dir=tmp_root))
            try:
                src, out = work / "src", work / "slug"
                try:  # the checkout refuses with a BuildError too (a symlink out of the tree)
                    builder.checkout(repo, commit, src, self.settings.build.max_tree_mb << 20)
                    manifest = builder.read_app_json(src)  # a bad one fails before the build
                    cache = self._cache(app, user)
                    limit = self.settings.build.max_slug_mb
                    known = self.state.read().apps.get(app)  # none before a first push
                    config = known.config if known else {}  # collectstatic reads it
                    executor = self.stacks.executor_for(src, say)
                    result = builder.build(
                        src,
                        out,
                        cache,
                        executor,
                        say,
                        max_slug_mb=limit,
                        config=config,
                        image_repo=image_repo(self.settings.name, app),
                        # a Dockerfile app's image goes into the store only where
                        # siblings may run it (a lone node keeps it in its engine)
                        archive_image=self.store.name != "local",
                    )
                except builder.BuildError as e:
                    raise PCError(f"build failed: {e}") from None
                check_process_types(result.processes, self.settings.build.max_process_types)
                cid = self.store.add(out)
                self.store.pin(cid)
                say(f"-----> Slug {cid[:19]} stored")
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if manifest.web_checks:
            say(f"-----> app.json: {len(manifest.web_checks)} health check(s) for web")
        release = self._record(app, user, commit, cid, result, manifest)
        self.logbus.event(app, f"release {release.name} by {user}: {release.description}")
        self.cluster.wait_replicated(cid, say)
        return self.activate(app, release.version, say, manifest.formation)

    def _cache(self, app: str, user: str) -> Path:
        """The app's own build cache, never another app's (nor an earlier app's of
        the same name: its owner and creation time name it)."""
        a = self.state.read().apps.get(app)
        owner = f"{a.owner} {a.created}" if a is not None else user
        return builder.app_cache(self.settings.cache_dir, app, owner)

    @contextmanager
    def _build_slot(self, say: Callable[[str], None]) -> Iterator[None]:
        """One of the node's `[build] max_concurrent` build slots for the block: a
        push waits BUILD_WAIT seconds for one, then is refused."""
        if not self._builds.acquire(blocking=False):
            n = self.settings.build.max_concurrent
            say(f"-----> Waiting: this node is building {n} apps, its limit")
            if not self._builds.acquire(timeout=BUILD_WAIT):
                raise PCError(
                    f"the node is building {n} apps, its limit ([build] max_concurrent); "
                    "try again in a minute"
                )
        try:
            yield
        finally:
            self._builds.release()

    def _record(
        self,
        app: str,
        user: str,
        commit: str,
        cid: str,
        result: builder.BuildResult,
        manifest: builder.AppJson,
    ) -> Release:
        with self.state.change() as snap:
            a = snap.app(app)
            release = Release(
                version=a.next_version(),
                slug=cid,
                kind=result.kind,
                stack=result.stack,
                # `release` runs once per release (peoplescloud.phases), never as an instance
                processes={t: c for t, c in result.processes.items() if t != RELEASE_TYPE},
                release_command=result.processes.get(RELEASE_TYPE, ""),
                predeploy=manifest.predeploy,
                postdeploy=manifest.postdeploy,
                cron=[asdict(j) for j in manifest.cron],
                commit=commit,
                pushed_by=user,
                created=now(),
                description=f"Deploy {commit[:7]}",
                pushed_to=self.settings.name,
                web_checks=[asdict(c) for c in manifest.web_checks],
                image=result.image,
                user=result.user,
            )
            a.releases.append(release)
            dropped = {r.slug for r in a.releases[:-KEEP_RELEASES]}
        self.unpin_unused(dropped)
        return release

    def unpin_unused(self, cids: set[str]) -> None:
        """Unpin the slugs that no app's kept releases use (apps may share a slug)."""
        in_use = {
            r.slug for a in self.state.read().apps.values() for r in a.releases[-KEEP_RELEASES:]
        }
        for cid in cids - in_use:
            self.store.unpin(cid)

    def activate(
        self,
        app: str,
        version: int,
        say: Callable[[str], None],
        formation: dict[str, int] | None = None,
    ) -> str:
        """Run `version`'s release phase, bring it up and wait until it runs; only
        then is it the current release. Until then the current one serves on (its
        web instances are replaced once the new ones are healthy); if its release
        phase fails or it does not start, nothing of it is left running.
        `formation`: app.json's initial scale, used if the app never ran a release.
        Call it holding `exclusive(app)`."""
        self.phases.before(self.state.read().app(app), version, say)
        with self.state.change() as snap:
            a = snap.app(app)
            previous, previous_scale = a.current, dict(a.scale)
            release = a.release(version)
            a.deploying = version
            # New process types start with one instance (app.json's formation on the
            # first deploy), unless scaled before (to 0, say, by `ps:scale` before the
            # first push); types gone from the Procfile go.
            initial = (formation or {}) if previous is None else {}
            a.scale = {t: a.scale.get(t, initial.get(t, 1)) for t in release.processes}
            ours = dict(a.scale)
        try:
            running = self.wait_running(app, release.name, say)
        except PCError as e:
            if previous is None:  # a first release: nothing to keep; it goes on trying
                self._settle(app, version, current=True)
                raise
            if not self._give_back(app, version, previous, previous_scale, ours):
                raise
            self.reconciler.reconcile()
            self.logbus.event(app, f"{release.name} did not start; v{previous} runs again")
            raise PCError(f"{e}; v{previous} runs again") from None
        if self._settle(app, version, current=True):
            self.phases.after(self.state.read().app(app), version, say)
        return running

    def _settle(self, app: str, version: int, current: bool) -> bool:
        """End the deploy of `version` (if another has not taken over): it becomes
        the current release, or is dropped. Whether it was still the one deployed."""
        with self.state.change() as snap:
            a = snap.apps.get(app)
            if a is None or a.deploying != version:
                return False  # destroyed, or another release took over meanwhile
            a.deploying = None
            if current:
                a.current = version
        return True

    def _give_back(
        self,
        app: str,
        version: int,
        previous: int,
        previous_scale: dict[str, int],
        ours: dict[str, int],
    ) -> bool:
        """Undo what a failed activation set, and only that: `version` is no longer
        deployed, and a type's scale goes back only where it still has the value
        the activation gave it (a `ps:scale` made during the wait stays). Whether
        the release that ran before runs on."""
        with self.state.change() as snap:
            a = snap.apps.get(app)
            if a is None or a.deploying not in (version, None):
                return False  # destroyed, or another deploy took over meanwhile
            a.deploying = None
            if a.current != previous:
                return False  # another release was made current meanwhile (config:set)
            for t in ours.keys() | previous_scale.keys():
                if a.scale.get(t) != ours.get(t):
                    continue  # changed since: not ours to undo
                if t in previous_scale:
                    a.scale[t] = previous_scale[t]
                else:
                    a.scale.pop(t, None)
        return True

    def wait_running(
        self, app: str, release: str, say: Callable[[str], None], timeout: float = 20
    ) -> str:
        """Reconcile, then wait until every wanted instance of `release` runs and has
        kept running for SETTLE seconds: a process that dies at once (a typo in
        the Procfile, an exception at import) fails the push instead of passing
        it. A web instance counts only once it passed its health check (it is
        not listed before), and one that fails it fails the push at once. The
        wait lasts `timeout`, or as long as the checks may take. A stopped app
        has nothing to wait for: its release is recorded, that is all."""
        checks = budget(self.reconciler.checks_of(app, release))
        deadline = time.monotonic() + max(timeout, checks + SETTLE + 5)
        seen: dict[str, tuple[str, float]] = {}  # process -> (its start, first seen running)
        while True:
            self.reconciler.reconcile()
            running = self.reconciler.everywhere()
            a = self.state.read().app(app)
            if a.stopped:  # (ps:stop, before or during the wait) nothing is wanted to run
                say(f"-----> Release {release} recorded; {app} is stopped (ps:start starts it)")
                return release
            wanted = process_names(a.scale)
            mine = {k.process: s for k, s in running.items() if k == (app, k.process, release)}
            now = time.monotonic()
            for p in wanted:
                if why := self.reconciler.health_failure(InstanceKey(app, p, release)):
                    raise PCError(
                        f"{p} of {release} failed its health check: {why}; see `logs {app}`, "
                        "fix the app (or app.json healthchecks) and push again"
                    )
                s = mine.get(p)
                if s is None:
                    continue
                if s.running and seen.get(p, (s.started_at,))[0] != s.started_at:
                    s = replace(s, running=False)  # it ran before: it died and came back
                if not s.running:
                    code = f" (exit code {s.exit_code})" if s.exit_code is not None else ""
                    raise PCError(
                        f"release {release} is deployed but {p} stopped{code}: see `logs {app}`"
                    )
                seen.setdefault(p, (s.started_at, now))
            settled = [p for p in wanted if p in seen and now - seen[p][1] >= SETTLE]
            if len(settled) == len(wanted):
                where = (
                    ", ".join(f"{p} on {a.placement.get(p, self.settings.name)}" for p in wanted)
                    or "no processes scaled up"
                )
                say(f"-----> Release {release} running: {where}")
                return release
            if now > deadline:
                late = next(p for p in wanted if p not in settled)
                raise PCError(
                    f"release {release} is deployed but {late} is not running"
                    f"{' (or not healthy)' if is_web(late) else ''}: see `logs {app}`"
                )
            time.sleep(0.2)


def check_process_types(processes: dict[str, str], most: int) -> None:
    """Refuse a build with more process types than the node allows."""
    if len(processes) > most:
        raise PCError(
            f"build failed: {len(processes)} process types, more than this node's limit "
            f"of {most} ([build] max_process_types); run related work in one process"
        )
