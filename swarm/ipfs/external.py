"""A kubo the operator runs (`[ipfs] api`): checked through its RPC API, never
started, stopped or configured by the node (see `ExternalKubo`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from peoplescloud.errors import ConfigError, RuntimeFailure
from swarm.ipfs.api import KuboAPI, KuboError
from swarm.ipfs.config import NOT_PNET, PEER_ADDR_RE, public_switches_on, swarm_key_file
from swarm.ipfs.kubo import KuboNode

log = logging.getLogger("pc")


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


class ExternalKubo(KuboNode):
    """A kubo the operator runs and the node only uses, through its RPC API at `url`.

    The node neither starts nor stops it and never writes its config: `start()`
    checks that the API answers and that the config keeps kubo off the public
    network (`PUBLIC_SWITCHES`), and refuses otherwise. The RPC API cannot show
    whether kubo runs on the swarm's private network (a swarm.key in its repo),
    so `start()` writes the swarm's swarm.key to `key_file` and logs a warning
    that the operator must put it in that kubo's repo; a kubo without it cannot
    connect to the other members ("failed to negotiate security protocol").
    Peers are added at run time only (`swarm/peering/add`); the node connects
    them again after that kubo restarts.
    """

    def __init__(self, url: str, swarm_key: str, key_file: Path, host: str = "127.0.0.1") -> None:
        self.url = url.rstrip("/")
        self._swarm_key = swarm_key_file(swarm_key)
        self.key_file = Path(key_file)
        self.host = host  # the node's advertised host: the address to prefer
        self.api = KuboAPI(self.url)
        self._peer_id: str | None = None
        self._multiaddr: str | None = None

    @property
    def api_url(self) -> str:
        return self.url

    def _id(self) -> dict[str, Any]:
        try:
            return self.api.json("id", timeout="5s")
        except KuboError as e:
            raise RuntimeFailure(
                f"the kubo RPC API configured at {self.url} ([ipfs] api) does not answer ({e}): "
                'start that kubo, or set [ipfs] api = "" to let the node start its own'
            ) from None

    @property
    def peer_id(self) -> str:
        if self._peer_id is None:
            self._peer_id = self._id()["ID"]
        return self._peer_id

    @property
    def multiaddr(self) -> str:
        if self._multiaddr is None:
            self._multiaddr = self._pick_address(self._id())
        return self._multiaddr

    def _pick_address(self, ident: dict[str, Any]) -> str:
        """A TCP address from kubo's own list: one on the node's advertised host if
        there is one, else the first."""
        hosts = {}  # address -> its host, for the TCP ones
        for addr in ident.get("Addresses") or []:
            if match := PEER_ADDR_RE.match(addr):
                hosts[addr] = match[1]
        if not hosts:
            raise RuntimeFailure(
                f"the kubo at {self.url} has no TCP address to reach it at "
                f"(its addresses: {ident.get('Addresses') or 'none'}): "
                "give it one in Addresses.Swarm, e.g. /ip4/0.0.0.0/tcp/4001, and restart it"
            )
        on_host = [addr for addr, host in hosts.items() if host == self.host]
        if on_host:
            return on_host[0]
        # Siblings on other machines cannot dial a loopback address.
        reachable = [addr for addr, host in hosts.items() if not _loopback(host)]
        if reachable:
            return reachable[0]
        if _loopback(self.host):  # a swarm on one machine
            return next(iter(hosts))
        raise RuntimeFailure(
            f"the kubo at {self.url} listens on loopback only, so the other members "
            f"cannot reach it at {self.host}: add /ip4/{self.host}/tcp/4001 (or "
            "/ip4/0.0.0.0/tcp/4001) to its Addresses.Swarm and restart it"
        )

    @property
    def running(self) -> bool:
        """The API answers, as the same kubo as at start (else start() looks again)."""
        try:
            answer = self.api.json("id", timeout="2s")["ID"]
        except KuboError:
            return False
        return self._peer_id is None or answer == self._peer_id

    def start(self) -> None:
        """Check the operator's kubo: it answers and stays off the public network."""
        ident = self._id()
        # First: the messages below tell the operator to copy it.
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._swarm_key)
        try:
            config = self.api.json("config/show")
        except KuboError as e:
            raise RuntimeFailure(f"cannot read the config of the kubo at {self.url}: {e}") from None
        loud = public_switches_on(config)
        if loud:
            raise ConfigError(
                f"the kubo at {self.url} would talk to the public network "
                f"({', '.join(loud)}): run {'; '.join(loud.values())}; then restart that kubo "
                '(or set [ipfs] api = "" to let the node start its own)'
            )
        outside = [a for a in ident.get("Addresses") or [] if any(t in a for t in NOT_PNET)]
        if outside:
            # kubo offers these transports only without a swarm.key (libp2p's private
            # network covers TCP alone): this kubo is on the public network.
            raise ConfigError(
                f"the kubo at {self.url} has no swarm key (it listens on {outside[0]}): put "
                f"{self.key_file} in its repo as swarm.key, set Swarm.Transports.Network.QUIC, "
                "WebTransport and WebRTCDirect to false, and restart it with LIBP2P_FORCE_PNET=1"
            )
        self._peer_id = ident["ID"]
        self._multiaddr = self._pick_address(ident)
        log.warning(
            "using the kubo at %s (%s). Its API cannot show whether it runs on the swarm's "
            "private network: its repo needs the swarm's swarm.key (a copy is in %s; best "
            "run it with LIBP2P_FORCE_PNET=1), else it cannot reach the other members",
            self.url,
            self._multiaddr,
            self.key_file,
        )

    def _remember(self, addr: str) -> None:
        """Nothing: its config is the operator's (the upkeep connects again after a restart)."""

    def stop(self) -> None:
        """Nothing to stop: the operator runs this kubo."""
