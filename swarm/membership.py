"""Who is a member: the first member seeds the swarm, a member invites, a new
node joins with the invite and is admitted once its daemon runs, a member
leaves (marked leaving, emptied, then removed by another member), and a member
that died for good is removed by the host of a live one (`pc swarm remove`).

The `*_route` methods answer the peer API (swarm/routes.py serves them);
`seed_when_elected` and `seek_admission` run on this node when its daemon starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from peoplescloud.errors import Forbidden, UsageError
from peoplescloud.settings import Settings
from peoplescloud.state import Member, Snapshot, State
from swarm.identity import SwarmIdentity
from swarm.invite import InviteError, InviteRecord, make_invite, redeem, usable
from swarm.me import Me
from swarm.peer import PeerError
from swarm.peer_client import PeerClient
from swarm.placement import DOWN, member_state
from swarm.raft import Conflict, NoQuorum
from swarm.replicated import ReplicatedState

log = logging.getLogger(__name__)

INVITE_TTL = 3600  # seconds an invite token stays usable
RAFT_CHANGE_TIMEOUT = 15  # seconds adding or removing a Raft member may take
SEED_TIMEOUT = 30.0  # seconds a new swarm's first member may take to elect itself
ADMIT_RETRY = 2.0  # seconds between asks to be admitted


class Membership:
    """The membership routes of the peer API."""

    def __init__(self, me: Me, identity: SwarmIdentity, state: ReplicatedState) -> None:
        self.me = me
        self.identity = identity
        self.state = state

    def invite_key(self, invite_id: str) -> bytes:
        """The key a join request with this invite is signed with (PCError: unusable)."""
        records = {k: InviteRecord.from_dict(v) for k, v in self.state.read().invites.items()}
        return usable(records, invite_id, time.time()).key

    async def invite_route(self, sender: str, body: Any) -> Any:
        ttl = int(body.get("ttl", INVITE_TTL)) if isinstance(body, dict) else INVITE_TTL
        if not 60 <= ttl <= 7 * 86400:
            raise InviteError(f"an invite lives between 60 s and a week, not {ttl} s")
        token, record = make_invite(self.identity.id, self.me.peer, ttl, time.time())

        def store() -> None:
            with self.state.change() as s:
                s.invites[record.invite_id] = record.to_dict()

        await asyncio.to_thread(store)
        return {"token": token, "expires": record.expires}

    async def join_route(self, sender: str, invite_id: str, body: Any) -> Any:
        """A new node redeems its invite: it becomes a member (not yet in Raft) and
        gets the swarm's secrets."""

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
            "sponsor": self.me.peer,
            "sponsor_name": self.me.name,
        }

    async def admit_route(self, sender: str, body: Any) -> Any:
        """A joined node's daemon runs: make it a Raft member (it must be up for
        the change to commit)."""
        member = self.state.read().members.get(sender)
        if member is None or member.raft != body.get("raft"):
            raise InviteError(f"{sender} has not joined with that address: `pc swarm join` first")
        if member.raft not in self.state.members():
            await asyncio.to_thread(self.state.add_member, member.raft, RAFT_CHANGE_TIMEOUT)
            log.info("%s (%s) is now a Raft member", sender, member.raft)
        return {"ok": True}

    async def leave_route(self, sender: str, body: Any) -> Any:
        """`sender` is leaving: placement gives it nothing new and moves its instances."""

        def mark(s: Snapshot) -> None:
            s.members[sender].leaving = True

        # Its lease renewal may write the same entry.
        await asyncio.to_thread(_retry_conflicts, self.state, mark)
        return {"ok": True}

    async def expel_route(self, sender: str, body: Any) -> Any:
        """`pc swarm remove NODE` on this node (its host, through its own daemon)."""
        if sender != self.me.name:
            raise Forbidden("a dead member is removed by a host with `pc swarm remove` on its node")
        node, margin = str(body.get("node", "")), self.me.settings.swarm.margin_seconds
        await asyncio.to_thread(expel, self.state, node, self.me.name, margin, time.time())
        log.info("%s removed from the swarm (dead for good)", node)
        return {"ok": True}

    async def step_down_route(self, sender: str, body: Any) -> Any:
        await asyncio.to_thread(self.state.step_down)
        return {"leader": self.state.leader()}

    async def remove_route(self, sender: str, body: Any) -> Any:
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

        def forget(s: Snapshot) -> None:
            s.members.pop(sender, None)
            s.observed.pop(sender, None)
            s.held.pop(sender, None)
            s.pins = {c: [n for n in ns if n != sender] for c, ns in s.pins.items()}

        def remove() -> None:
            _retry_conflicts(self.state, forget)  # the leaver may still write its own entries
            if member.raft in self.state.members():
                self.state.remove_member(member.raft, RAFT_CHANGE_TIMEOUT)

        await asyncio.to_thread(remove)
        log.info("%s left the swarm", sender)
        return {"ok": True}


NO_MAJORITY_HELP = (
    "a dead member is removed only while a majority of the members answer, so remove "
    "dead members one at a time, while most are alive; if most are gone already, start "
    "one of them again (its home, on a machine that has its advertise address) and "
    "remove the others once it answers"
)


def expel(state: ReplicatedState, node: str, me: str, margin: float, now: float) -> None:
    """Take a member that died for good out of the swarm: out of Raft (the
    majority is then counted without it), then out of the state (its pins, what
    it reported); its instances are placed elsewhere, its router is no longer
    asked. Refused for a member whose lease may still hold."""
    snap = state.read()
    member = snap.members.get(node)
    if member is None:
        raise UsageError(f"the swarm has no member named {node!r}: `pc swarm status` lists them")
    if node == me:
        raise UsageError("a node does not remove itself: `pc swarm leave` moves its apps first")
    if (what := member_state(member, now, margin)) != DOWN:
        raise UsageError(
            f"{node} is {what}: only a member whose lease has surely ended is removed "
            f"(a live one leaves with `pc swarm leave` on it)"
        )
    try:
        if member.raft in state.members():
            state.remove_member(member.raft, RAFT_CHANGE_TIMEOUT)

        def forget(s: Snapshot) -> None:
            s.members.pop(node, None)
            s.observed.pop(node, None)
            s.held.pop(node, None)
            s.pins = {c: [n for n in ns if n != node] for c, ns in s.pins.items()}
            s.add_event("", "", f"swarm:remove {node} (pc swarm remove on {me})")

        _retry_conflicts(state, forget)
    except NoQuorum as e:
        raise NoQuorum(f"{e}. {NO_MAJORITY_HELP}") from None


def _retry_conflicts(
    state: ReplicatedState, edit: Callable[[Snapshot], None], attempts: int = 5
) -> None:
    """`edit` in a change, tried again when another change to the same entry won."""
    for attempt in range(attempts):
        try:
            with state.change() as s:
                edit(s)
            return
        except Conflict:
            if attempt == attempts - 1:
                raise


def seed(state: ReplicatedState, me: Me, local: Snapshot) -> None:
    """The first member: bring the lone node's users and apps into the swarm,
    and make itself a member."""
    with state.change() as s:
        if not s.users:
            s.users.update(local.users)
            s.apps.update(local.apps)
        s.members.setdefault(me.name, me.entry(s.members.get(me.name)))


def seed_when_elected(
    state: ReplicatedState,
    me: Me,
    local: State,
    stopping: Callable[[], bool] = bool,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """A one-member swarm elects itself within a few seconds; then seed it."""
    deadline = time.monotonic() + SEED_TIMEOUT
    while not stopping():
        try:
            seed(state, me, local.read())
            return
        except (NoQuorum, Conflict):
            if time.monotonic() > deadline:
                raise
            sleep(0.5)


async def seek_admission(
    settings: Settings, identity: SwarmIdentity, me: Me, client: PeerClient
) -> SwarmIdentity:
    """Ask the sponsor to admit this node until it does (see SwarmIdentity.sponsor);
    then forget the sponsor. The identity saved."""
    body = {"raft": me.raft}
    while True:
        try:
            sponsor = identity.sponsor_name
            await client.call(sponsor, identity.sponsor, "admit", body, timeout=30)
        except PeerError as e:
            if not identity.sponsor_name:  # joined with an older version
                log.error("swarm.json names no sponsor: `pc swarm join` again with a new token")
            log.info("not admitted yet: %s", e)
            await asyncio.sleep(ADMIT_RETRY)
            continue
        identity = replace(identity, sponsor="", sponsor_name="")
        identity.save(settings.swarm_file)
        log.info("admitted to swarm %s", identity.name)
        return identity
