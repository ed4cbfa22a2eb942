"""kubo (the Go IPFS daemon) as a child process of a node, kept off the public network.

A node's kubo belongs to the swarm's private network (a shared swarm.key, enforced
with LIBP2P_FORCE_PNET=1) and dials only the peers it is told about: no public
bootstrap list, no MDNS, no DHT, no relays, no AutoNAT, no AutoTLS, no telemetry.
`QUIET_CONFIG` is the whole list; `init()` writes it on every start so an old repo
cannot drift back to kubo's defaults.

`KuboAPI` is the one way this project talks to kubo: a thin httpx client of its
HTTP RPC API (`POST /api/v0/<command>`).

`ExternalKubo` is the other case: a kubo the operator runs (`[ipfs] api`). Its
config is not ours to write, so the node reads it through the API and refuses
one that would talk to the public network (`PUBLIC_SWITCHES`). Whether it runs
on the swarm's private network cannot be checked: no RPC command tells whether
kubo loaded a swarm.key (kubo prints its fingerprint only on the daemon's
stdout). The operator must give it the swarm's swarm.key; the node writes a
copy for that and says where.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from swarm.errors import ConfigError, PCError, RuntimeFailure

log = logging.getLogger("pc")

CACHED_BIN = Path.home() / ".cache" / "peoplescloud" / "bin" / "ipfs"
SWARM_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
START_TIMEOUT = 60.0  # seconds kubo may take until its API answers
STOP_TIMEOUT = 20.0
DIAL_TIMEOUT = 5  # seconds one dial of a known peer may take at start

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
}
CHILD_ENV = {"LIBP2P_FORCE_PNET": "1", "IPFS_TELEMETRY": "off"}

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


class KuboError(PCError):
    """kubo refused a request."""


class KuboUnreachable(KuboError):
    """kubo's API did not answer (not running, or it broke the connection)."""


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


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


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


class KuboAPI:
    """kubo's RPC API: `call("pin/add", cid, recursive=True)` -> response."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.url + "/api/v0")

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _params(args: Sequence[str], options: dict[str, Any]) -> list[tuple[str, str]]:
        params = [("arg", a) for a in args]
        for name, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            params.append((name.replace("_", "-"), str(value)))
        return params

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.is_success:
            return
        response.read()
        try:
            message = response.json()["Message"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        raise KuboError(f"kubo {response.request.url.path}: {message}")

    @staticmethod
    def _http_timeout(options: dict[str, Any], default: float | None) -> float | None:
        """kubo's own `timeout` option (e.g. "30s") bounds the wait, plus a margin."""
        limit = options.get("timeout")
        return default if limit is None else float(str(limit).removesuffix("s")) + 10

    def call(self, command: str, *args: str, **options: Any) -> httpx.Response:
        """POST a command and return its whole (successful) response."""
        try:
            response = self._client.post(
                command,
                params=self._params(args, options),
                timeout=self._http_timeout(options, self.timeout),
            )
        except httpx.HTTPError as e:
            raise KuboUnreachable(f"kubo at {self.url} did not answer {command}: {e}") from None
        self._check(response)
        return response

    def json(self, command: str, *args: str, **options: Any) -> Any:
        return self.call(command, *args, **options).json()

    @contextmanager
    def stream(
        self,
        command: str,
        *args: str,
        content: Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> Iterator[httpx.Response]:
        """POST a command (optionally streaming a body) and stream its response.
        Without a kubo `timeout` option, a stream may take as long as it needs."""
        try:
            with self._client.stream(
                "POST",
                command,
                params=self._params(args, options),
                content=content,
                headers=headers,
                timeout=self._http_timeout(options, None),
            ) as response:
                self._check(response)
                yield response
        except httpx.HTTPError as e:
            raise KuboUnreachable(f"kubo at {self.url} failed during {command}: {e}") from None


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
                env=self._env(),
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
        """Nothing: its config is the operator's (Membership connects again after a restart)."""

    def stop(self) -> None:
        """Nothing to stop: the operator runs this kubo."""
