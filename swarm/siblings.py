"""What this node asks of its siblings: the git history of an app pushed
elsewhere, restarts and logs of instances they run, and which of their routers
serve an app's web instances."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from peoplescloud.bridge import LoopBridge
from peoplescloud.errors import PCError
from peoplescloud.locks import KeyedLocks
from peoplescloud.settings import Settings
from peoplescloud.state import Member, Release, now
from swarm.observed import web_nodes_elsewhere
from swarm.peer import PeerError
from swarm.peer_client import PeerClient
from swarm.replicated import ReplicatedState
from swarm.repos import has_commit, merge_repo

log = logging.getLogger(__name__)

REPO_TIMEOUT = 120.0  # seconds copying an app's git history from a sibling may take
LOGS_READ_TIMEOUT = 10.0  # seconds a sibling may pause while sending a log's tail
RESTART_TIMEOUT = 60.0  # seconds the siblings may take to restart an app


class Siblings:
    """Requests to the other members, over the peer API. The blocking methods are
    called from worker threads and run their requests on the daemon's loop."""

    def __init__(
        self,
        settings: Settings,
        state: ReplicatedState,
        client: PeerClient,
        bridge: LoopBridge,
    ) -> None:
        self.settings = settings
        self.me = settings.name
        self.state = state
        self.client = client
        self.bridge = bridge
        self.repo_locks = KeyedLocks()  # one copy of an app's history at a time
        # ((state version, second), app -> routers)
        self._routers: tuple[tuple[int, int], dict[str, list[str]]] = ((-1, 0), {})

    def nodes_of(self, app: str) -> list[Member]:
        """The other members that run instances of `app`."""
        snap = self.state.read()
        names = set(snap.apps[app].placement.values()) if app in snap.apps else set()
        return [snap.members[n] for n in sorted(names - {self.me}) if n in snap.members]

    # --- git history ----------------------------------------------------------------
    def sync_repo(self, app: str, release: Release, repo: Path) -> None:
        """Make `repo` hold the release's commit, copying it from the member it was
        pushed to, else from any other that has it. Raises PCError when none can."""
        commit, pushed_to = release.commit, release.pushed_to
        if has_commit(repo, commit):
            return
        with self.repo_locks.hold(app):
            if has_commit(repo, commit):
                return  # copied while this one waited
            try:
                copied = self.bridge.call(
                    self.copy_repo(app, commit, pushed_to, repo), REPO_TIMEOUT
                )
            except TimeoutError:
                copied = False
        if not copied:
            raise PCError(
                f"no member could give this node the git history of {app} ({commit[:7]}, "
                f"pushed to {pushed_to or 'another node'}): try again later, or use that node"
            )

    async def copy_repo(self, app: str, commit: str, pushed_to: str, dest: Path) -> bool:
        """Merge a sibling's copy of the repo into `dest`; False when none has `commit`."""
        members = [m for m in self.state.read().members.values() if m.name != self.me]
        members.sort(key=lambda m: m.name != pushed_to)  # the node it was pushed to first
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        for m in members:
            archive = self.settings.tmp_dir / f"repo-{app}-{secrets.token_hex(4)}.tar"
            try:
                body = {"app": app}
                stream = self.client.stream(
                    m.name, m.address, "repo", body, read_timeout=30, lines=False
                )
                async with contextlib.aclosing(stream) as chunks:
                    with open(archive, "wb") as f:
                        async for chunk in chunks:
                            f.write(chunk)
                await asyncio.to_thread(merge_repo, archive, dest, commit)
            except (PCError, tarfile.TarError, OSError) as e:  # PeerError is a PCError
                log.info("no git history of %s from %s: %s", app, m.name, e)
                continue
            finally:
                archive.unlink(missing_ok=True)
            log.info("git history of %s copied from %s", app, m.name)
            return True
        return False

    # --- restarts and logs ----------------------------------------------------------
    def restart_elsewhere(self, app: str, ptype: str | None) -> None:
        """Ask the siblings that run `app` to restart it (a worker thread)."""
        self.bridge.call(self._restart(app, ptype), RESTART_TIMEOUT)

    async def _restart(self, app: str, ptype: str | None) -> None:
        for m in self.nodes_of(app):
            try:
                await self.client.call(m.name, m.address, "restart", {"app": app, "ptype": ptype})
            except PeerError as e:
                log.warning("restart of %s on %s: %s", app, m.name, e)

    def sibling_logs(
        self, app: str, lines: int, ptype: str | None, follow: bool
    ) -> list[AsyncIterator[str]]:
        """The log lines of `app` on each sibling that runs it."""
        body = {"app": app, "lines": lines, "ptype": ptype, "follow": follow}
        wait = None if follow else LOGS_READ_TIMEOUT  # a frozen sibling must not hang `logs`
        return [
            decoded(self.client.stream(m.name, m.address, "logs", body, read_timeout=wait))
            for m in self.nodes_of(app)
        ]

    # --- web traffic ------------------------------------------------------------------
    def sibling_routers(self, app: str) -> list[str]:
        """The routers of the other members that run a web instance of `app`.
        Asked for every web request: worked out again at most once a second, and
        only when the state changed, not from a copy of it each time."""
        version = (self.state.version, int(time.time()))  # leases also end with no change
        if self._routers[0] != version:
            snap, at = self.state.read(), time.time()
            routers = {
                name: [
                    snap.members[n].router
                    for n in sorted(web_nodes_elsewhere(snap, self.me, at, name))
                    if snap.members[n].router
                ]
                for name in snap.apps
            }
            self._routers = (version, routers)
        return self._routers[1].get(app, [])


async def decoded(stream: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """A sibling's log lines; one that does not answer costs its lines, not the command."""
    try:
        async for raw in stream:
            yield raw.decode().rstrip("\n")
    except PeerError as e:
        yield f"{now()} app[pc]: logs unavailable: {e}"
