"""Slugs held where the leader wants them: this member pins its share, lets go
of the rest (never the last copy), and reports what it holds; a push waits until
its slug is held on as many members as the leader asked for."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from peoplescloud.state import Snapshot
from swarm.ipfs.store import IpfsStore
from swarm.raft import Conflict, NoQuorum
from swarm.replicated import ReplicatedState

log = logging.getLogger(__name__)

REPLICATION_WAIT = 90.0  # seconds a push waits for its slug's holders before going on


def hold_pins(state: ReplicatedState, store: IpfsStore, me: str, snap: Snapshot) -> None:
    """Pin the slugs `snap.pins` gives `me`, unpin the release slugs others hold
    instead, and write what is held into `snap.held[me]`."""
    pinned = store.pinned()  # one look at kubo a round, not one per slug
    mine = {c for c, n in snap.pins.items() if me in n}
    for cid in sorted(mine - pinned):
        try:
            store.pin(cid)
            pinned.add(cid)
            log.info("pinned %s", cid)
        except Exception as e:  # no holder up yet: next round
            log.info("cannot pin %s yet: %s", cid, e)
    # Let go of the release slugs that are not this node's to hold: given to
    # others, or of releases too old to keep. A slug no release names yet (a
    # push here just added it) stays until the leader decides.
    known = {r.slug for a in snap.apps.values() for r in a.releases}
    held_elsewhere = {c for n, cids in snap.held.items() if n != me for c in cids}
    for cid in (pinned & known & held_elsewhere) - mine:
        store.unpin(cid)  # never the last copy: another node holds it
        pinned.discard(cid)
    held = sorted(pinned & known)
    if snap.held.get(me) != held:  # what `releases` shows and a push waits for
        try:
            with state.change() as s:
                s.held[me] = held
        except (NoQuorum, Conflict):
            pass


def holders_of(snap: Snapshot, cid: str) -> list[str]:
    """The members that report pinning `cid`."""
    return sorted(n for n, cids in snap.held.items() if cid in cids)


def wait_replicated(
    state: ReplicatedState,
    cid: str,
    say: Callable[[str], None],
    timeout: float = REPLICATION_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until the slug is pinned on as many nodes as placement wants (a push
    reports it); after `timeout` the push goes on and says so."""
    deadline = time.monotonic() + timeout
    while True:
        snap = state.read()
        want = len(snap.pins.get(cid, [])) or None
        have = holders_of(snap, cid)
        if want and len(have) >= want:
            say(f"-----> Slug pinned on {len(have)} nodes: {', '.join(have)}")
            return
        if time.monotonic() > deadline:
            say(f"-----> Slug pinned on {len(have)} node(s) so far: {', '.join(have)}")
            return
        sleep(0.3)
