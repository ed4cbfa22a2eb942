"""The slow loop of a member, on its own pace so a lease never waits behind it:
kubo running and connected to the members, this member's pins held, and what
was destroyed on another member forgotten here too."""

from __future__ import annotations

import logging
import shutil

from peoplescloud.logbus import LogBus
from peoplescloud.settings import Settings
from peoplescloud.state import Snapshot
from swarm.ipfs.kubo import KuboNode
from swarm.ipfs.store import IpfsStore
from swarm.pins import hold_pins
from swarm.replicated import ReplicatedState

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        state: ReplicatedState,
        kubo: KuboNode,
        store: IpfsStore,
        logbus: LogBus,
    ) -> None:
        self.settings = settings
        self.me = settings.name
        self.state = state
        self.kubo = kubo
        self.store = store
        self.logbus = logbus

    def maintain(self) -> None:
        """One round (a worker thread; may wait on kubo)."""
        if not self.kubo.running:
            log.warning("kubo is not running: starting it again")
            self.kubo.start()
        snap = self.state.read()
        self.connect_peers(snap)
        hold_pins(self.state, self.store, self.me, snap)
        self.prepare_slugs(self.state.read())
        self.forget_destroyed(snap)

    def prepare_slugs(self, snap: Snapshot) -> None:
        """Keep unpacked the current slugs this member holds and does not run:
        should their instances fail over here, they start without unpacking
        (seconds for a slug with a virtualenv). One copy each, no more: a slug
        that runs here has its working copy already, and others are dropped."""
        held = set(snap.held.get(self.me, []))
        current = {a.release(a.target).slug for a in snap.apps.values() if a.target is not None}
        wanted = {c for c in held & current if not self.settings.slug_path(c).exists()}
        for cid in self.store.prepared() - wanted:
            self.store.discard(cid)
        for cid in sorted(wanted):
            try:
                self.store.prepare(cid)
            except Exception as e:  # kubo busy or the slug unreadable: next round
                log.info("cannot unpack %s ahead of need yet: %s", cid, e)

    def connect_peers(self, snap: Snapshot) -> None:
        """Dial the kubo of every other member this one is not connected to."""
        connected = self.kubo.connected_peers()
        for m in snap.members.values():
            if m.name != self.me and m.ipfs and m.ipfs.rsplit("/", 1)[-1] not in connected:
                try:
                    self.kubo.connect(m.ipfs)
                    log.info("kubo connected to %s", m.name)
                except Exception as e:
                    log.info("kubo cannot reach %s yet: %s", m.name, e)

    def forget_destroyed(self, snap: Snapshot) -> None:
        """An app destroyed on another node: its repo copy and its log here go too.
        Only apps the state says were destroyed: a node that has not caught up
        must never take an app it does not know of yet for a destroyed one."""
        for app in snap.destroyed:
            repo = self.settings.repo_path(app)
            if not (repo.exists() or self.logbus.knows(app)):
                continue
            if app in self.state.read().apps:
                continue  # made again since (a first push takes the name back)
            shutil.rmtree(repo, ignore_errors=True)
            self.logbus.forget(app)
            log.info("forgot %s: it was destroyed", app)
