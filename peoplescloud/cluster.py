"""The one interface between a node and its swarm.

The core (this package) never imports the swarm package: it asks a `Cluster`.
A node alone gets `LoneNode`, which keeps its state in a JSON file and its
slugs in a local directory, runs everything it is asked to and has no
siblings. A node in a swarm (its home holds `swarm.json`) gets the swarm
package's cluster, loaded by name only then (`open_cluster`), which keeps the
state in Raft and the slugs in IPFS, and answers for the siblings.

The daemon opens the cluster first (it holds the state and the store), builds
the node's parts on them, then `start`s the cluster with those parts.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from gitserver.service import NodeRow
from peoplescloud.errors import PCError
from peoplescloud.runtime.base import InstanceKey, InstanceStatus, Runtime
from peoplescloud.runtime.lease import clear_lease
from peoplescloud.settings import Settings
from peoplescloud.state import Release, Snapshot, State, StateStore
from peoplescloud.store import LocalStore, Store

if TYPE_CHECKING:
    from peoplescloud.logbus import LogBus
    from peoplescloud.reconciler import Reconciler

# The package that adds the swarm, loaded only by name: a node alone never
# imports it, and the core works without it.
SWARM_ENTRY = "swarm.entry"

Slot = tuple[str, str]  # (app, process): one place an instance of some release fills


@dataclass(frozen=True)
class LocalParts:
    """What this node runs, handed to the cluster when it starts: its siblings ask
    for logs and restarts, and its lease stops what runs here."""

    settings: Settings
    runtime: Runtime
    reconciler: Reconciler
    logbus: LogBus


Loop = Coroutine[Any, Any, None]


class Cluster(Protocol):
    """What the node asks of its swarm. Methods called from worker threads may
    block; the `async` ones run on the daemon's loop."""

    # Read-only, so a cluster may hold a more precise kind of each (a swarm's
    # ReplicatedState and IpfsStore).
    @property
    def state(self) -> StateStore:
        """The desired state: a file alone, agreed by Raft in a swarm."""

    @property
    def store(self) -> Store:
        """Where slugs are kept."""

    # --- the reconciler's questions ------------------------------------------------
    def may_run(self) -> bool:
        """Whether this node may run instances now (a swarm member: while its lease holds)."""

    def instances_elsewhere(self) -> dict[InstanceKey, InstanceStatus]:
        """What the siblings last reported running (or exited) where placement puts it."""

    def busy_elsewhere(self, snap: Snapshot) -> set[Slot]:
        """Slots another member still runs: this node waits before starting its copy."""

    def failed_elsewhere(self, app: str, process: str) -> str:
        """Why the sibling an instance is placed on cannot start it ("" if it can)."""

    # --- pushes and git --------------------------------------------------------------
    def wait_replicated(self, cid: str, say: Callable[[str], None]) -> None:
        """Until the slug is held where the swarm wants it (a worker thread)."""

    def sync_repo(self, app: str, release: Release, repo: Path) -> None:
        """Make `repo` hold the release's commit, copying the history from a sibling
        when it was pushed elsewhere (a worker thread). Raises PCError when no
        member can give it."""

    # --- commands that reach the siblings ---------------------------------------------
    def restart_elsewhere(self, app: str, ptype: str | None) -> None:
        """Ask the siblings that run `app` to restart it (a worker thread)."""

    def sibling_logs(
        self, app: str, lines: int, ptype: str | None, follow: bool
    ) -> list[AsyncIterator[str]]:
        """The log lines of `app` on each sibling that runs it."""

    def members(self) -> list[NodeRow]:
        """The swarm's members; PCError on a node that is in no swarm."""

    def sibling_routers(self, app: str) -> list[str]:
        """The routers ("host:port") of siblings that run a web instance of `app`."""

    def hop_key(self) -> bytes:
        """The key a router signs a request it passes to a sibling's router with."""

    # --- life ----------------------------------------------------------------------------
    async def start(
        self, local: LocalParts, stop: asyncio.Event, wake: Callable[[], None]
    ) -> list[Loop]:
        """Serve the swarm's ports and return its loops (they end when `stop` is set);
        `wake` asks the reconciler for a pass at once (what to run changed)."""

    async def close(self) -> None:
        """Stop taking part; apps keep running."""

    def describe(self) -> str:
        """For the daemon's ready line: "" alone, else the swarm and its peer port."""


class LoneNode:
    """A node in no swarm: a JSON state file, a local store, no siblings, no lease."""

    def __init__(self, settings: Settings) -> None:
        clear_lease(settings.lease_dir)  # alone (again): no lease to enforce
        self.state: StateStore = State(settings.state_file)
        self.store: Store = LocalStore(settings.store_dir)

    def may_run(self) -> bool:
        return True

    def instances_elsewhere(self) -> dict[InstanceKey, InstanceStatus]:
        return {}

    def busy_elsewhere(self, snap: Snapshot) -> set[Slot]:
        return set()

    def failed_elsewhere(self, app: str, process: str) -> str:
        return ""

    def wait_replicated(self, cid: str, say: Callable[[str], None]) -> None:
        return None

    def sync_repo(self, app: str, release: Release, repo: Path) -> None:
        return None  # every push to a lone node lands here

    def restart_elsewhere(self, app: str, ptype: str | None) -> None:
        return None

    def sibling_logs(
        self, app: str, lines: int, ptype: str | None, follow: bool
    ) -> list[AsyncIterator[str]]:
        return []

    def members(self) -> list[NodeRow]:
        raise PCError("this node is in no swarm (`pc swarm create` makes one)")

    def sibling_routers(self, app: str) -> list[str]:
        return []

    def hop_key(self) -> bytes:
        return b""

    async def start(
        self, local: LocalParts, stop: asyncio.Event, wake: Callable[[], None]
    ) -> list[Loop]:
        return []

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return ""


def swarm_entry() -> ModuleType:
    """The swarm package's entry points (`open_cluster`, `add_commands`, `checks`)."""
    try:
        return importlib.import_module(SWARM_ENTRY)
    except ModuleNotFoundError as e:
        if e.name not in ("swarm", SWARM_ENTRY):
            raise
        raise PCError("this install has no swarm package: reinstall People's Cloud") from None


def in_swarm(settings: Settings) -> bool:
    return settings.swarm_file.exists()


def open_cluster(settings: Settings) -> Cluster:
    """The node's cluster: the swarm's when its home says it is in one, else alone.
    Blocking (a swarm node starts its kubo and Raft): call it off the event loop."""
    if not in_swarm(settings):
        return LoneNode(settings)
    cluster: Cluster = swarm_entry().open_cluster(settings)
    return cluster
