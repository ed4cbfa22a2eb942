"""The swarm package's entry points, the only names the core loads (by name, through
`peoplescloud.cluster.swarm_entry`): the cluster of a swarm node, the `pc swarm`
commands, a request to this node's daemon, and the doctor's checks.

Heavy imports (Raft, kubo) wait until they are needed: `pc` loads this
module on every run to register its commands.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from peoplescloud.errors import ConfigError, PCError
from peoplescloud.settings import Settings
from swarm import cli

if TYPE_CHECKING:
    from peoplescloud.doctor import Check
    from swarm.cluster import SwarmCluster

log = logging.getLogger("pc")

PIN_TIMEOUT = 20.0  # one try at fetching a slug; the next round tries again


def open_cluster(settings: Settings) -> SwarmCluster:
    """The cluster of a node whose home holds swarm.json: its kubo started (or the
    operator's checked), its Raft node up. Blocking. Whatever was opened is closed
    again if a later step fails: no kubo or Raft node outlives a failed start."""
    from swarm.cluster import SwarmCluster
    from swarm.identity import SwarmIdentity
    from swarm.ipfs.external import ExternalKubo
    from swarm.ipfs.kubo import Kubo, KuboNode
    from swarm.ipfs.store import IpfsStore
    from swarm.replicated import ReplicatedState

    identity = SwarmIdentity.load(settings.swarm_file)
    if identity is None:
        raise PCError(f"{settings.swarm_file} is gone: this node is in no swarm")
    with contextlib.ExitStack() as opened:
        kubo: KuboNode
        if settings.ipfs.api:  # a kubo the operator runs: checked, never started or stopped
            kubo = ExternalKubo(
                settings.ipfs.api,
                identity.swarm_key,
                settings.home / "swarm.key",  # for the operator to put in that kubo's repo
                host=settings.advertised,
            )
        else:
            kubo = Kubo(
                settings.ipfs_dir,
                identity.swarm_key,
                settings.ipfs.api_port,
                settings.ipfs.swarm_port,
                host=settings.advertised,
            )
            kubo.init()
        kubo.start()
        opened.callback(kubo.stop)
        store = IpfsStore(kubo.api_url, PIN_TIMEOUT, ready_dir=settings.ready_slugs_dir)
        state = ReplicatedState(
            f"{settings.advertised}:{settings.raft_port}",
            identity.partners,
            identity.secret,
            settings.home / "raft",
        )
        opened.callback(state.close)
        cluster = SwarmCluster(settings, identity, state, kubo, store)
        opened.pop_all()  # opened: the daemon closes them when it stops
        return cluster


def add_commands(subparsers: Any) -> None:
    """Register `pc swarm create|invite|join|leave|status`."""
    cli.add_commands(subparsers)


def ask_daemon(settings: Settings, route: str, body: dict) -> Any:
    """A signed peer request to this node's own daemon (`pc user add` in a swarm)."""
    return cli.ask_daemon(settings, route, body)


def checks(settings: Settings) -> list[Check]:
    """What a swarm node needs beyond a lone one: kubo."""
    return [check_kubo()]


def check_kubo() -> Check:
    """kubo, found the way a swarm node finds it (PC_IPFS_BIN, the cached build, PATH)."""
    from peoplescloud.doctor import Check
    from swarm.ipfs.kubo import KUBO_VERSION, find_binary

    try:
        found = find_binary()
    except ConfigError:
        return Check(
            "ipfs",
            False,
            "kubo not found (a swarm needs it; a lone node with the local store does not)",
            f"bash scripts/install-kubo  (builds kubo {KUBO_VERSION} into ~/.cache/peoplescloud)",
            required=False,
        )
    return Check("ipfs", True, f"{found} (kubo, the IPFS store of a swarm)", required=False)
