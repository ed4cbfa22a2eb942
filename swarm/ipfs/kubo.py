"""kubo (the Go IPFS daemon) as a child process of a node, kept off the public network.

A node's kubo belongs to the swarm's private network (a shared swarm.key, enforced
with LIBP2P_FORCE_PNET=1) and dials only the peers it is told about: no public
bootstrap list, no MDNS, no DHT, no relays, no AutoNAT, no AutoTLS, no telemetry.
`QUIET_CONFIG` (swarm/ipfs/config.py) is the whole list; `init()` writes it on
every start so an old repo cannot drift back to kubo's defaults.

`KuboNode` is what the node uses of a kubo, whoever runs it: `Kubo` here (the
node's own child), or `ExternalKubo` (swarm/ipfs/external.py, one the operator
runs). Both talk to kubo through `KuboAPI` (swarm/ipfs/api.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from peoplescloud.errors import ConfigError, RuntimeFailure
from swarm.ipfs.api import KuboAPI, KuboError
from swarm.ipfs.config import (
    LOW_MEMORY_ENV,
    QUIET_CONFIG,
    set_dotted,
    split_multiaddr,
    swarm_key_file,
)

CACHED_BIN = Path.home() / ".cache" / "peoplescloud" / "bin" / "ipfs"
START_TIMEOUT = 60.0  # seconds kubo may take until its API answers
STOP_TIMEOUT = 20.0
DIAL_TIMEOUT = 5  # seconds one dial of a known peer may take at start
KUBO_VERSION = "v0.38.1"  # the version scripts/install-kubo builds
CHILD_ENV = {"LIBP2P_FORCE_PNET": "1", "IPFS_TELEMETRY": "off"}


def find_binary() -> Path:
    """`$PC_IPFS_BIN`, else the one scripts/install-kubo builds, else `ipfs` on PATH."""
    env = os.environ.get("PC_IPFS_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise ConfigError(f"PC_IPFS_BIN={env} is not an executable file")
        return Path(env)
    if CACHED_BIN.exists():
        return CACHED_BIN
    found = shutil.which("ipfs")
    if found:
        return Path(found)
    raise ConfigError("kubo is not installed: run scripts/install-kubo or set PC_IPFS_BIN")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int) -> None:
    """Stop a process that is not our child: SIGTERM, then SIGKILL after STOP_TIMEOUT."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


class KuboNode(ABC):
    """What a node uses of its kubo, whoever runs it: `Kubo` (the node's own
    child) or `ExternalKubo` (one the operator runs). Peers are dialled through
    the RPC API in both cases."""

    api: KuboAPI

    @property
    @abstractmethod
    def api_url(self) -> str: ...

    @property
    @abstractmethod
    def peer_id(self) -> str: ...

    @property
    @abstractmethod
    def multiaddr(self) -> str:
        """The address siblings dial to reach this kubo (with its peer id)."""

    @property
    @abstractmethod
    def running(self) -> bool: ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def connect(self, addr: str) -> None:
        """Connect to a peer now and keep reconnecting while kubo runs."""
        split_multiaddr(addr)
        self.api.call("swarm/connect", addr)
        self.api.call("swarm/peering/add", addr)
        self._remember(addr)

    @abstractmethod
    def _remember(self, addr: str) -> None:
        """Keep a peer across kubo restarts, where kubo's config is ours to write."""

    def connected_peers(self) -> set[str]:
        """Peer ids this kubo is connected to now."""
        found = self.api.json("swarm/peers").get("Peers") or []
        return {p["Peer"] for p in found}


class Kubo(KuboNode):
    """One kubo daemon with its own repo, owned by this process.

    `peers` are full multiaddrs (`/ip4/.../tcp/PORT/p2p/ID`) kubo keeps connected
    (its Peering list). The API and gateway never listen beyond loopback; the
    swarm listens on `host`, which is loopback unless the node says otherwise.
    """

    def __init__(
        self,
        repo: Path,
        swarm_key: str,
        api_port: int,
        swarm_port: int,
        peers: Sequence[str] = (),
        host: str = "127.0.0.1",
        binary: Path | None = None,
    ) -> None:
        self.repo = Path(repo)
        self._swarm_key = swarm_key_file(swarm_key)
        self.api_port = api_port
        self.swarm_port = swarm_port
        self.host = host
        self._peers = list(peers)
        for addr in self._peers:
            split_multiaddr(addr)
        self.binary = binary or find_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None  # a kubo an earlier node process started
        self._peer_id: str | None = None
        self.api = KuboAPI(self.api_url)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_file(self) -> Path:
        return self.repo / "daemon.log"

    @property
    def pid_file(self) -> Path:
        return self.repo / "daemon.pid"

    @property
    def peer_id(self) -> str:
        if self._peer_id is None:
            self._peer_id = self.config_show()["Identity"]["PeerID"]
        return self._peer_id

    @property
    def multiaddr(self) -> str:
        """The address siblings dial to reach this kubo (with its peer id)."""
        return f"/ip4/{self.host}/tcp/{self.swarm_port}/p2p/{self.peer_id}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, **CHILD_ENV, "IPFS_PATH": str(self.repo)}

    def _run(self, *args: str) -> bytes:
        """Run an `ipfs` command on this repo (while the daemon is down, or through it)."""
        done = subprocess.run(
            [str(self.binary), *args], env=self._env(), capture_output=True, timeout=60
        )
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip()
            raise RuntimeFailure(f"ipfs {' '.join(args[:2])}: {reason}")
        return done.stdout

    def config_show(self) -> dict[str, Any]:
        """The repo's config as kubo reads it (without the private key)."""
        return json.loads(self._run("config", "show"))

    def _config(self) -> dict[str, Any]:
        values = dict(QUIET_CONFIG)
        values["Addresses.API"] = [f"/ip4/127.0.0.1/tcp/{self.api_port}"]
        values["Addresses.Swarm"] = [f"/ip4/{self.host}/tcp/{self.swarm_port}"]
        values["Peering.Peers"] = [
            {"ID": peer, "Addrs": [transport]}
            for transport, peer in map(split_multiaddr, self._peers)
        ]
        return values

    def init(self) -> None:
        """Create the repo if needed, then (re)write the quiet config and swarm.key.
        Safe to call again on an existing repo (before each start)."""
        self.repo.mkdir(parents=True, exist_ok=True)
        if not (self.repo / "config").exists():
            self._run("init", "--empty-repo", "--profile=test")
        config = self.config_show()
        # Peers given now come first; peers a past connect() saved are kept.
        known = {split_multiaddr(addr)[1] for addr in self._peers}
        for saved in (config.get("Peering") or {}).get("Peers") or []:
            if saved["ID"] not in known and saved.get("Addrs"):
                self._peers.append(f"{saved['Addrs'][0]}/p2p/{saved['ID']}")
        for key, value in self._config().items():
            set_dotted(config, key, value)
        new = self.repo / "config.new"
        new.write_text(json.dumps(config, indent=2))
        try:
            self._run("config", "replace", str(new))
        finally:
            new.unlink(missing_ok=True)
        key_file = self.repo / "swarm.key"
        key_file.write_text(self._swarm_key)
        key_file.chmod(0o600)

    def start(self) -> None:
        """Start the daemon, wait until its API answers, dial the known peers.
        A no-op while it runs; after it died, this is how the node restarts it.
        A kubo of this repo left running by an earlier node process is adopted."""
        if self.running:
            return
        if self._this_repo_answers():
            self._adopt()
            self._dial_peers()
            return
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "daemon", "--enable-gc", "--migrate=false"],
                env={**LOW_MEMORY_ENV, **self._env()},  # the host's own GOMEMLIMIT wins
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeFailure(f"kubo exited at start: {self._log_tail()}")
            try:
                self._peer_id = self.api.json("id")["ID"]
            except KuboError:
                time.sleep(0.1)
                continue
            self._dial_peers()
            return
        self.stop()
        raise RuntimeFailure(f"kubo's API did not answer within {START_TIMEOUT:.0f}s")

    def _dial_peers(self) -> None:
        """Connect to the known peers now: kubo's Peering waits a few seconds before
        its first try. A peer that does not answer is left to Peering's retries."""
        for addr in self._peers:
            with suppress(KuboError):
                self.api.call("swarm/connect", addr, timeout=f"{DIAL_TIMEOUT}s")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _this_repo_answers(self) -> bool:
        try:
            return self.api.json("id", timeout="2s")["ID"] == self.peer_id
        except KuboError:
            return False

    def _adopt(self) -> None:
        """Take over the kubo an earlier process of this node started (its pid file)."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            raise RuntimeFailure(
                f"a kubo this node did not start runs on {self.repo}: stop it first"
            ) from None
        self._adopted_pid = pid

    @property
    def running(self) -> bool:
        if self._adopted_pid is not None:
            return _alive(self._adopted_pid)
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the daemon: SIGTERM, then SIGKILL after STOP_TIMEOUT."""
        if self._adopted_pid is not None:
            pid, self._adopted_pid = self._adopted_pid, None
            _terminate(pid)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def _remember(self, addr: str) -> None:
        """In the repo's Peering.Peers, so kubo reconnects after a restart."""
        transport, peer = split_multiaddr(addr)
        peers = list(self.api.json("config", "Peering.Peers").get("Value") or [])
        if not any(p.get("ID") == peer for p in peers):
            peers.append({"ID": peer, "Addrs": [transport]})
            self.api.call("config", "Peering.Peers", json.dumps(peers), json=True)
        if addr not in self._peers:
            self._peers.append(addr)
