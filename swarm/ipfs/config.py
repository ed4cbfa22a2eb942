"""The config every kubo of a node gets, and what an operator's kubo must have off.

`QUIET_CONFIG` keeps a node's own kubo off the public network; `PUBLIC_SWITCHES`
are the settings checked on a kubo the operator runs. Pure data and helpers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from peoplescloud.errors import ConfigError

SWARM_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


# Dotted config keys and the values every kubo of a node gets. Addresses and
# peers are added per node by `Kubo._config()`.
QUIET_CONFIG: dict[str, Any] = {
    "Bootstrap": [],
    "Discovery.MDNS.Enabled": False,
    "AutoConf.Enabled": False,
    "AutoTLS.Enabled": False,
    "AutoNAT.ServiceMode": "disabled",
    "Routing.Type": "none",
    "Routing.DelegatedRouters": [],
    "Ipns.DelegatedPublishers": [],
    "DNS.Resolvers": {},
    "Provide.Enabled": False,  # no routing to announce to: peers find blocks by bitswap
    "HTTPRetrieval.Enabled": False,
    "Pubsub.Enabled": False,
    "Swarm.DisableNatPortMap": True,
    "Swarm.EnableHolePunching": False,
    "Swarm.RelayClient.Enabled": False,
    "Swarm.RelayService.Enabled": False,
    # A private network runs over TCP only (libp2p's PSK does not cover QUIC & co).
    "Swarm.Transports.Network.TCP": True,
    "Swarm.Transports.Network.QUIC": False,
    "Swarm.Transports.Network.Websocket": False,
    "Swarm.Transports.Network.WebTransport": False,
    "Swarm.Transports.Network.WebRTCDirect": False,
    "Swarm.Transports.Network.Relay": False,
    "Plugins.Plugins.telemetry.Disabled": True,
    "Plugins.Plugins.telemetry.Config": {"Mode": "off"},
    "Addresses.Gateway": [],
    "Addresses.Announce": [],
    "Addresses.AppendAnnounce": [],
    # Small: a node's kubo serves a private network of a few members, on a host
    # that may be a Raspberry Pi. Kubo's `lowpower` profile's connection limits
    # (members are Peering peers, never trimmed), and fewer of its workers and
    # buffers; GOMEMLIMIT (LOW_MEMORY_ENV) makes its Go runtime collect sooner.
    "Swarm.ConnMgr.Type": "basic",
    "Swarm.ConnMgr.LowWater": 20,
    "Swarm.ConnMgr.HighWater": 40,
    "Swarm.ConnMgr.GracePeriod": "1m0s",
    "Swarm.ResourceMgr.MaxMemory": "64MB",
    "Swarm.DisableBandwidthMetrics": True,
    "Datastore.BlockKeyCacheSize": 4096,
    "Internal.Bitswap.EngineBlockstoreWorkerCount": 16,
    "Internal.Bitswap.EngineTaskWorkerCount": 4,
    "Internal.Bitswap.TaskWorkerCount": 4,
}

# The environment a node's own kubo runs with: a soft memory limit for Go's
# collector (it collects harder near it; it never refuses memory).
LOW_MEMORY_ENV = {"GOMEMLIMIT": "48MiB"}

# What an operator's kubo must have off, as QUIET_CONFIG has it: each of these
# reaches the public network whatever swarm.key says (bootstrap peers, routing,
# HTTP fetches of kubo's autoconf, AutoTLS registration, telemetry) or the LAN
# (MDNS). Dotted key -> (a test that its value, None when missing, is quiet; the
# command that makes it so). A missing key means kubo's default, which is not quiet.
PUBLIC_SWITCHES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "Bootstrap": (lambda v: not v, "ipfs bootstrap rm --all"),
    "Discovery.MDNS.Enabled": (
        lambda v: v is False,
        "ipfs config --json Discovery.MDNS.Enabled false",
    ),
    "Routing.Type": (lambda v: v == "none", "ipfs config Routing.Type none"),
    "AutoConf.Enabled": (lambda v: v is False, "ipfs config --json AutoConf.Enabled false"),
    "AutoTLS.Enabled": (lambda v: v is False, "ipfs config --json AutoTLS.Enabled false"),
    "Plugins.Plugins.telemetry.Disabled": (
        lambda v: v is True,
        "ipfs config --json Plugins.Plugins.telemetry.Disabled true",
    ),
}
NOT_PNET = ("/quic", "/webtransport", "/webrtc-direct")  # transports a private network lacks
PEER_ADDR_RE = re.compile(r"^/(?:ip4|ip6|dns|dns4|dns6)/([^/]+)/tcp/\d+/p2p/[^/]+$")


def swarm_key_file(key: str) -> str:
    """The swarm.key text for a 64-hex-digit pre-shared key."""
    if not SWARM_KEY_RE.match(key):
        raise ConfigError("a swarm key is 64 lowercase hex digits (32 random bytes)")
    return f"/key/swarm/psk/1.0.0/\n/base16/\n{key}\n"


def split_multiaddr(addr: str) -> tuple[str, str]:
    """`/ip4/1.2.3.4/tcp/4001/p2p/<id>` -> (`/ip4/1.2.3.4/tcp/4001`, `<id>`)."""
    transport, sep, peer = addr.rpartition("/p2p/")
    if not sep or not transport or not peer or "/" in peer:
        raise ConfigError(f"{addr!r} is not a peer address like /ip4/ADDR/tcp/PORT/p2p/ID")
    return transport, peer


def get_dotted(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted key, or None where any part is missing."""
    node: Any = config
    for name in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(name)
    return node


def public_switches_on(config: dict[str, Any]) -> dict[str, str]:
    """The PUBLIC_SWITCHES that this kubo config leaves on, each with its fix."""
    return {
        key: fix
        for key, (quiet, fix) in PUBLIC_SWITCHES.items()
        if not quiet(get_dotted(config, key))
    }


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = config
    for name in parents:
        if not isinstance(node.get(name), dict):  # absent, or null in kubo's JSON
            node[name] = {}
        node = node[name]
    node[last] = value
