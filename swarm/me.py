"""This node as its swarm knows it: its name, and the addresses it gives the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peoplescloud.settings import Settings
from peoplescloud.state import Member


@dataclass(frozen=True)
class Me:
    """Who this node is to the others. `ipfs()` gives its kubo's multiaddr, asked
    each time (a kubo the operator runs may come back on another address)."""

    settings: Settings
    ipfs: Callable[[], str]

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def raft(self) -> str:
        return f"{self.settings.advertised}:{self.settings.raft_port}"

    @property
    def peer(self) -> str:
        return f"{self.settings.advertised}:{self.settings.peer_port}"

    @property
    def router(self) -> str:
        return f"{self.settings.advertised}:{self.settings.router_port}"

    def entry(self, old: Member | None) -> Member:
        """This node's entry in the state's members: what it shares and where to
        reach it, keeping the lease and the leaving mark of its `old` entry."""
        shares = self.settings.shares
        return Member(
            name=self.name,
            memory_mb=shares.memory_mb,
            cpus=shares.cpus,
            max_apps=shares.max_apps,
            lease_expires=old.lease_expires if old else 0.0,
            leaving=old.leaving if old else False,
            address=self.peer,
            raft=self.raft,
            ipfs=self.ipfs(),
            router=self.router,
        )
