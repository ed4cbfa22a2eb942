"""This node's part in its swarm.

Every tick (about a second) each member:
1. renews its lease through the consensus: it runs instances only while the
   lease holds; when it cannot renew (no quorum: it is cut off), it stops its
   own instances before the lease ends, so the others may take them over;
2. if it leads, decides placement and which nodes pin each slug
   (swarm/placement.py) and writes the answer into the state;
3. pins the slugs it should hold and lets go of the others;
4. publishes what its instances are doing (`observed`), so any node can answer
   `ps` or wait for a release that runs on a sibling.

The reconciler on each node then runs what is placed on it (swarm/reconciler.py).
Siblings talk over the signed peer API (swarm/peer.py): invite, join, status,
logs, restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from swarm.deploy import KEEP_RELEASES
from swarm.errors import Forbidden, NotFound, PCError
from swarm.identity import SwarmIdentity
from swarm.invite import InviteError, InviteRecord, make_invite, redeem, usable
from swarm.ipfs.kubo import KuboNode
from swarm.ipfs.store import IpfsStore
from swarm.logbus import LogBus
from swarm.observed import failure_elsewhere, instances_elsewhere, report, web_nodes_elsewhere
from swarm.peer import PeerClient, PeerError, make_peer_app
from swarm.placement import holders, member_state, place, slugs_in_use
from swarm.raft import Conflict, NoQuorum
from swarm.reconciler import Reconciler
from swarm.replicated import ReplicatedState
from swarm.repos import merge_repo, tar_repo
from swarm.runtime.base import InstanceStatus, Runtime
from swarm.runtime.lease import write_lease
from swarm.settings import Settings, check_app_name, check_public_key, check_user_name
from swarm.state import Member, Snapshot

log = logging.getLogger(__name__)

INVITE_TTL = 3600  # seconds an invite token stays usable
REPO_TIMEOUT = 120.0  # seconds copying an app's git history from a sibling may take
LOGS_READ_TIMEOUT = 10.0  # seconds a sibling may pause while sending a log's tail


class Membership:
    def __init__(
        self,
        settings: Settings,
        identity: SwarmIdentity,
        state: ReplicatedState,
        kubo: KuboNode,
        store: IpfsStore,
        runtime: Runtime,
        reconciler: Reconciler,
        logbus: LogBus,
    ) -> None:
        self.settings = settings
        self.me = settings.name
        self.identity = identity
        self.state = state
        self.kubo = kubo
        self.store = store
        self.runtime = runtime
        self.reconciler = reconciler
        self.logbus = logbus
        self.lease_until = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None  # the daemon's, set when it starts
        # Called when this node has left the swarm (`pc swarm leave` removes its
        # swarm.json): its Raft must not go on asking the members for votes, so
        # the daemon stops. The Raft log may never tell it: once out, no member
        # sends it anything.
        self.on_removed: Callable[[], None] = lambda: None
        # ((state version, second), app -> routers)
        self._routers: tuple[tuple[int, int], dict[str, list[str]]] = ((-1, 0), {})
        self.client = PeerClient(self.me, lambda: identity.secret_bytes)

    @property
    def raft_address(self) -> str:
        return f"{self.settings.advertised}:{self.settings.raft_port}"

    @property
    def peer_address(self) -> str:
        return f"{self.settings.advertised}:{self.settings.peer_port}"

    def may_run(self) -> bool:
        """The reconciler's gate: instances run only while this node's lease holds."""
        return time.time() < self.lease_until

    # --- the tick ---------------------------------------------------------------
    def tick(self) -> None:
        """Lease, placement and observation: consensus only, never waiting on a
        sibling's kubo or a slow fetch, so a lease is never lost to slow I/O."""
        if not self.settings.swarm_file.exists():  # `pc swarm leave` finished
            log.warning("this node left the swarm: stopping (start `pc daemon` to run alone)")
            self.on_removed()
            return
        self._renew_lease()
        snap = self.state.read()
        if self.state.leader() == self.raft_address:
            self._decide(snap)
        self._observe(snap)

    def maintain(self) -> None:
        """The slow part, on its own pace: keep kubo connected to the members and
        pin what placement gave this node."""
        if not self.kubo.running:
            log.warning("kubo is not running: starting it again")
            self.kubo.start()
        snap = self.state.read()
        self._connect_peers(snap)
        self._hold_pins(snap)
        self._forget_destroyed(snap)

    def seed(self, local: Snapshot) -> None:
        """The first member: bring the lone node's users and apps into the swarm,
        and make itself a member."""
        with self.state.change() as s:
            if not s.users:
                s.users.update(local.users)
                s.apps.update(local.apps)
            s.members.setdefault(self.me, self._member(s.members.get(self.me)))

    def _member(self, old: Member | None) -> Member:
        shares = self.settings.shares
        return Member(
            name=self.me,
            memory_mb=shares.memory_mb,
            cpus=shares.cpus,
            max_apps=shares.max_apps,
            lease_expires=old.lease_expires if old else 0.0,
            leaving=old.leaving if old else False,
            address=self.peer_address,
            raft=self.raft_address,
            ipfs=self.kubo.multiaddr,
            router=f"{self.settings.advertised}:{self.settings.router_port}",
        )

    def _renew_lease(self) -> None:
        until = time.time() + self.settings.swarm.lease_seconds
        try:
            # Its own entry only: never queued behind this node's other changes.
            with self.state.change(self.settings.swarm.lease_seconds / 2, queue=False) as s:
                if self.me not in s.members:
                    return  # not (yet, or no longer) a member: no lease
                member = self._member(s.members[self.me])
                member.lease_expires = until
                s.members[self.me] = member
        except (NoQuorum, Conflict) as e:
            if self.lease_until and time.time() > self.lease_until - 1:
                self._stop_everything(f"lease not renewed ({e})")
            return
        self.lease_until = until
        write_lease(self.settings.run_dir / "lease", until)

    def _stop_everything(self, why: str) -> None:
        """Cut off from the swarm: stop before the lease ends, so the others may
        start these instances elsewhere without two copies running."""
        for s in self.runtime.status():
            if s.running:
                self.logbus.event(s.app, f"stopping {s.process}: {why}")
                self.runtime.stop(s.app, s.process, timeout=2)

    def _decide(self, snap: Snapshot) -> None:
        now = time.time()
        margin = self.settings.swarm.margin_seconds
        members = list(snap.members.values())
        current = {(a.name, p): n for a in snap.apps.values() for p, n in a.placement.items()}
        size = self.settings.shares
        placed = place(
            members, snap.apps, current, now, size.instance_memory_mb, margin, size.instance_cpus
        )
        for line in placed.decisions:
            log.info("placement: %s", line)
        slugs = slugs_in_use(snap.apps, placed.nodes, KEEP_RELEASES)
        pins = holders(
            members,
            slugs,
            snap.pins,
            now,
            min(self.settings.swarm.replication, len(members)),
            placed.free_mb,
            margin,
        )
        wanted = {
            name: {p: n for (a, p), n in placed.nodes.items() if a == name} for name in snap.apps
        }
        if all(snap.apps[n].placement == wanted[n] for n in snap.apps) and pins == snap.pins:
            return
        try:
            with self.state.change() as s:
                for name, placement in wanted.items():
                    if name in s.apps:
                        s.apps[name].placement = placement
                s.pins = pins
        except (NoQuorum, Conflict) as e:
            log.info("placement not written this round: %s", e)

    def _hold_pins(self, snap: Snapshot) -> None:
        pinned = self.store.pinned()  # one look at kubo a round, not one per slug
        mine = {c for c, n in snap.pins.items() if self.me in n}
        for cid in sorted(mine - pinned):
            try:
                self.store.pin(cid)
                pinned.add(cid)
                log.info("pinned %s", cid)
            except Exception as e:  # no holder up yet: next round
                log.info("cannot pin %s yet: %s", cid, e)
        # Let go of the release slugs that are not this node's to hold: given to
        # others, or of releases too old to keep. A slug no release names yet (a
        # push here just added it) stays until the leader decides.
        known = {r.slug for a in snap.apps.values() for r in a.releases}
        held_elsewhere = {c for n, cids in snap.held.items() if n != self.me for c in cids}
        for cid in (pinned & known & held_elsewhere) - mine:
            self.store.unpin(cid)  # never the last copy: another node holds it
            pinned.discard(cid)
        held = sorted(pinned & known)
        if snap.held.get(self.me) != held:  # what `releases` shows and a push waits for
            try:
                with self.state.change() as s:
                    s.held[self.me] = held
            except (NoQuorum, Conflict):
                pass

    def _forget_destroyed(self, snap: Snapshot) -> None:
        """An app destroyed on another node: its repo copy and its log here go too.
        Only apps the state says were destroyed: a node that has not caught up
        must never take an app it does not know of yet for a destroyed one."""
        for app in snap.destroyed:
            repo = self.settings.repos_dir / f"{app}.git"
            if not (repo.exists() or (self.settings.logs_dir / f"{app}.log").exists()):
                continue
            if app in self.state.read().apps:
                continue  # made again since (a first push takes the name back)
            shutil.rmtree(repo, ignore_errors=True)
            self.logbus.forget(app)
            log.info("forgot %s: it was destroyed", app)

    def holders_of(self, cid: str) -> list[str]:
        """The members that report pinning `cid`."""
        return sorted(n for n, cids in self.state.read().held.items() if cid in cids)

    def wait_replicated(self, cid: str, say: Callable[[str], None], timeout: float = 90) -> None:
        """Until the slug is pinned on as many nodes as placement wants (a push
        reports it); after `timeout` the push goes on and says so."""
        deadline = time.monotonic() + timeout
        while True:
            want = len(self.state.read().pins.get(cid, [])) or None
            have = self.holders_of(cid)
            if want and len(have) >= want:
                say(f"-----> Slug pinned on {len(have)} nodes: {', '.join(have)}")
                return
            if time.monotonic() > deadline:
                say(f"-----> Slug pinned on {len(have)} node(s) so far: {', '.join(have)}")
                return
            time.sleep(0.3)

    def _connect_peers(self, snap: Snapshot) -> None:
        connected = self.kubo.connected_peers()
        for m in snap.members.values():
            if m.name != self.me and m.ipfs and m.ipfs.rsplit("/", 1)[-1] not in connected:
                try:
                    self.kubo.connect(m.ipfs)
                    log.info("kubo connected to %s", m.name)
                except Exception as e:
                    log.info("kubo cannot reach %s yet: %s", m.name, e)

    def _observe(self, snap: Snapshot) -> None:
        mine = report(self.reconciler.instances(), self.reconciler.failures())
        if snap.observed.get(self.me) == mine:
            return
        try:
            with self.state.change() as s:
                s.observed[self.me] = mine
        except (NoQuorum, Conflict):
            pass

    # --- what siblings ask ------------------------------------------------------------
    def peer_app(self) -> web.Application:
        return make_peer_app(
            lambda: self.identity.secret_bytes,
            lambda name: name in self.state.read().members,
            {
                "invite": self._invite,
                "status": self._status,
                "logs": self._logs,
                "restart": self._restart,
                "admit": self._admit,
                "leave": self._leave,
                "step_down": self._step_down,
                "remove": self._remove,
                "user_add": self._user_add,
                "users": self._users,
                "repo": self._repo,
            },
            name=self.me,
            invite_handlers={"join": self._join},
            invite_key=self._invite_key,
        )

    def _invite_key(self, invite_id: str) -> bytes:
        records = {k: InviteRecord.from_dict(v) for k, v in self.state.read().invites.items()}
        return usable(records, invite_id, time.time()).key

    async def _invite(self, sender: str, body: Any) -> Any:
        ttl = int(body.get("ttl", INVITE_TTL)) if isinstance(body, dict) else INVITE_TTL
        if not 60 <= ttl <= 7 * 86400:
            raise InviteError(f"an invite lives between 60 s and a week, not {ttl} s")
        token, record = make_invite(self.identity.id, self.peer_address, ttl, time.time())

        def store() -> None:
            with self.state.change() as s:
                s.invites[record.invite_id] = record.to_dict()

        await asyncio.to_thread(store)
        return {"token": token, "expires": record.expires}

    async def _join(self, sender: str, invite_id: str, body: Any) -> Any:
        def admit() -> list[str]:
            with self.state.change() as s:
                if sender in s.members:
                    raise InviteError(f"the swarm already has a member named {sender}")
                records = {k: InviteRecord.from_dict(v) for k, v in s.invites.items()}
                s.invites[invite_id] = redeem(records, invite_id, time.time(), sender).to_dict()
                s.members[sender] = Member(
                    name=sender,
                    memory_mb=int(body["memory_mb"]),
                    cpus=float(body["cpus"]),
                    max_apps=int(body["max_apps"]),
                    address=str(body["address"]),
                    raft=str(body["raft"]),
                )
                return [m.raft for m in s.members.values() if m.name != sender]

        partners = await asyncio.to_thread(admit)
        log.info("%s joined the swarm", sender)
        return {
            "id": self.identity.id,
            "name": self.identity.name,
            "secret": self.identity.secret,
            "swarm_key": self.identity.swarm_key,
            "partners": partners,
            "sponsor": self.peer_address,
            "sponsor_name": self.me,
        }

    async def _admit(self, sender: str, body: Any) -> Any:
        """A joined node's daemon runs: make it a Raft member (it must be up for
        the change to commit)."""
        member = self.state.read().members.get(sender)
        if member is None or member.raft != body.get("raft"):
            raise InviteError(f"{sender} has not joined with that address: `pc swarm join` first")
        if member.raft not in self.state.members():
            await asyncio.to_thread(self.state.add_member, member.raft, 15)
            log.info("%s (%s) is now a Raft member", sender, member.raft)
        return {"ok": True}

    async def seek_admission(self) -> None:
        """Ask the sponsor to admit this node until it does (see SwarmIdentity.sponsor)."""
        body = {"raft": self.raft_address}
        while True:
            try:
                sponsor = self.identity.sponsor_name
                await self.client.call(sponsor, self.identity.sponsor, "admit", body, timeout=30)
            except PeerError as e:
                if not self.identity.sponsor_name:  # joined with an older version
                    log.error("swarm.json names no sponsor: `pc swarm join` again with a new token")
                log.info("not admitted yet: %s", e)
                await asyncio.sleep(2)
                continue
            self.identity = replace(self.identity, sponsor="", sponsor_name="")
            self.identity.save(self.settings.swarm_file)
            log.info("admitted to swarm %s", self.identity.name)
            return

    async def _leave(self, sender: str, body: Any) -> Any:
        """`sender` is leaving: placement gives it nothing new and moves its instances."""

        def mark() -> None:
            for attempt in range(5):  # its lease renewal may write the same entry
                try:
                    with self.state.change() as s:
                        s.members[sender].leaving = True
                    return
                except Conflict:
                    if attempt == 4:
                        raise

        await asyncio.to_thread(mark)
        return {"ok": True}

    async def _step_down(self, sender: str, body: Any) -> Any:
        await asyncio.to_thread(self.state.step_down)
        return {"leader": self.state.leader()}

    async def _remove(self, sender: str, body: Any) -> Any:
        """Take a leaving member out of the swarm once nothing of it runs (asked of
        another member: Raft does not let a member remove itself)."""
        snap = self.state.read()
        member = snap.members.get(sender)
        if member is None or not member.leaving:
            raise InviteError(f"{sender} is not leaving: `pc swarm leave` on it first")
        placed = [p for a in snap.apps.values() for p, n in a.placement.items() if n == sender]
        running = [k for k, o in snap.observed.get(sender, {}).items() if o.get("running")]
        if placed or running:
            raise InviteError(f"{sender} still runs {len(placed) or len(running)} instance(s)")

        def remove() -> None:
            for attempt in range(5):  # the leaver may still write its own entries
                try:
                    with self.state.change() as s:
                        s.members.pop(sender, None)
                        s.observed.pop(sender, None)
                        s.held.pop(sender, None)
                        s.pins = {c: [n for n in ns if n != sender] for c, ns in s.pins.items()}
                    break
                except Conflict:
                    if attempt == 4:
                        raise
            if member.raft in self.state.members():
                self.state.remove_member(member.raft, 15)

        await asyncio.to_thread(remove)
        log.info("%s left the swarm", sender)
        return {"ok": True}

    async def _user_add(self, sender: str, body: Any) -> Any:
        """`pc user add` on this node: the swarm's users live in its replicated state."""
        if sender != self.me:
            raise Forbidden("users are added by a node's host with `pc user add` on that node")
        name = check_user_name(str(body["name"]))
        key = check_public_key(str(body["key"]), "the key")

        def add() -> None:
            with self.state.change() as s:
                s.add_user_key(name, key, bool(body.get("admin")))

        await asyncio.to_thread(add)
        log.info("user %s added (a key)", name)
        return {"ok": True}

    async def _users(self, sender: str, body: Any) -> Any:
        return {"users": [asdict(u) for u in self.state.read().users.values()]}

    async def _repo(self, sender: str, body: Any) -> AsyncIterator[bytes]:
        """An app's bare git repo, as a tar (see swarm/repos.py)."""
        app = check_app_name(str(body["app"]))
        repo = self.settings.repos_dir / f"{app}.git"
        if not repo.is_dir():
            raise NotFound(f"{self.me} holds no git history of {app}")
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        archive = self.settings.tmp_dir / f"repo-{app}-{secrets.token_hex(4)}.tar"
        try:
            await asyncio.to_thread(tar_repo, repo, archive)
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
        return _send_file(archive)  # (a copy left by a broken stream goes at restart)

    def sync_repo(self, app: str, commit: str, pushed_to: str, dest: Path) -> None:
        """From a worker thread: make the repo at `dest` hold `commit`, copying it
        from the member the release was pushed to, else from any other that has
        it. Raises PCError when none can."""
        assert self.loop is not None, "the daemon sets the loop when it starts"
        copy = asyncio.run_coroutine_threadsafe(
            self._copy_repo(app, commit, pushed_to, dest), self.loop
        )
        try:
            copied = copy.result(REPO_TIMEOUT)
        except TimeoutError:
            copy.cancel()
            copied = False
        if not copied:
            raise PCError(
                f"no member could give this node the git history of {app} ({commit[:7]}, "
                f"pushed to {pushed_to or 'another node'}): try again later, or use that node"
            )

    async def _copy_repo(self, app: str, commit: str, pushed_to: str, dest: Path) -> bool:
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

    async def _status(self, sender: str, body: Any) -> Any:
        return self.swarm_status()

    def swarm_status(self) -> dict[str, Any]:
        snap = self.state.read()
        now = time.time()
        placed = [(a.name, n) for a in snap.apps.values() for n in a.placement.values()]
        rows = []
        for m in sorted(snap.members.values(), key=lambda m: m.name):
            seen = snap.observed.get(m.name, {}).values()
            instances = sum(1 for _, n in placed if n == m.name)  # placed there
            rows.append(
                {
                    **asdict(m),
                    "state": member_state(m, now, self.settings.swarm.margin_seconds),
                    "instances": instances,
                    # What placement counts against its shares.
                    "used_mb": instances * self.settings.shares.instance_memory_mb,
                    "used_cpus": instances * self.settings.shares.instance_cpus,
                    "apps": len({a for a, n in placed if n == m.name}),
                    "running": sum(1 for o in seen if o.get("running")),  # as it reports
                }
            )
        return {
            "id": self.identity.id,
            "name": self.identity.name,
            "leader": self.state.leader(),
            "members": rows,
        }

    async def _logs(self, sender: str, body: Any) -> AsyncIterator[bytes]:
        app, lines, ptype = str(body["app"]), int(body["lines"]), body.get("ptype")
        if not body.get("follow"):
            tail = await asyncio.to_thread(self.logbus.tail, app, lines, ptype)
            return _iterate([(line + "\n").encode() for line in tail])
        return _encode(self.logbus.follow(app, ptype, backlog=lines))

    async def _restart(self, sender: str, body: Any) -> Any:
        await asyncio.to_thread(self.reconciler.restart, str(body["app"]), body.get("ptype"))
        return {"ok": True}

    # --- asking siblings ------------------------------------------------------------
    def remote_instances(self) -> dict[tuple[str, str], InstanceStatus]:
        """What the other members last reported of their instances."""
        return instances_elsewhere(self.state.read(), self.me, time.time())

    def sibling_routers(self, app: str) -> list[str]:
        """The routers of the other members that run a web instance of `app`.
        Asked for every web request: worked out again at most once a second, and
        only when the state changed, not from a copy of it each time."""
        version = (self.state.version, int(time.time()))  # leases also end with no change
        if self._routers[0] != version:
            snap, now = self.state.read(), time.time()
            routers = {
                name: [
                    snap.members[n].router
                    for n in sorted(web_nodes_elsewhere(snap, self.me, now, name))
                    if snap.members[n].router
                ]
                for name in snap.apps
            }
            self._routers = (version, routers)
        return self._routers[1].get(app, [])

    def failed_elsewhere(self, app: str, process: str) -> str:
        """Why the member `process` is placed on reports it cannot start it."""
        return failure_elsewhere(self.state.read(), self.me, app, process, time.time())

    def restart_everywhere(self, app: str, ptype: str | None) -> None:
        """From a worker thread: ask the siblings that run `app` to restart it."""
        assert self.loop is not None, "the daemon sets the loop when it starts"
        future = asyncio.run_coroutine_threadsafe(self.restart_elsewhere(app, ptype), self.loop)
        future.result(timeout=60)

    def nodes_of(self, app: str) -> list[Member]:
        """The other members that run instances of `app`."""
        snap = self.state.read()
        names = set(snap.apps[app].placement.values()) if app in snap.apps else set()
        return [snap.members[n] for n in sorted(names - {self.me}) if n in snap.members]

    async def sibling_logs(
        self, app: str, lines: int, ptype: str | None, follow: bool
    ) -> list[AsyncIterator[bytes]]:
        body = {"app": app, "lines": lines, "ptype": ptype, "follow": follow}
        wait = None if follow else LOGS_READ_TIMEOUT  # a frozen sibling must not hang `logs`
        return [
            self.client.stream(m.name, m.address, "logs", body, read_timeout=wait)
            for m in self.nodes_of(app)
        ]

    async def restart_elsewhere(self, app: str, ptype: str | None) -> None:
        for m in self.nodes_of(app):
            try:
                await self.client.call(m.name, m.address, "restart", {"app": app, "ptype": ptype})
            except PeerError as e:
                log.warning("restart of %s on %s: %s", app, m.name, e)


async def _send_file(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes, then the file is gone."""
    try:
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 16):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


async def _iterate(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _encode(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield (line + "\n").encode()
