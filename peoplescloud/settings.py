"""One typed settings object: defaults <- TOML file <- environment <- flags.

Values are validated when they are set (here), never when they are used.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from peoplescloud.errors import ConfigError
from peoplescloud.runtime import lease as lease_watchdog
from router.limits import RouterLimits

NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
RUNTIMES = ("auto", "docker", "process")
STORES = ("local", "ipfs")


def default_home() -> Path:
    """`$PC_HOME`, else the platform data dir (XDG on Linux)."""
    if os.environ.get("PC_HOME"):
        return Path(os.environ["PC_HOME"]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(data) / "peoplescloud").resolve()


def _numbers(obj: Any, section: str, **specs: tuple[type, float]) -> None:
    """Convert each named field to its type (values from the environment are text)
    and refuse one below its minimum, with the setting's name in the message."""
    for attr, (kind, minimum) in specs.items():
        value = getattr(obj, attr)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"[{section}] {attr} must be a number, not {value!r}") from None
        if number < minimum:
            raise ConfigError(f"[{section}] {attr} must be at least {minimum}, not {number}")
        object.__setattr__(obj, attr, number)


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a port number, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} must be between 0 and 65535, not {port}")
    return port


@dataclass(frozen=True)
class BuildSettings:
    stack_image: str = "peoplescloud/stack:bookworm"
    # The host's CA bundle, mounted into build containers so pip and npm trust a
    # proxy that re-signs TLS. Empty string: mount nothing.
    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    timeout: int = 900  # seconds one build may take
    max_push_mb: int = 200  # a pack bigger than this is refused while it arrives
    memory_mb: int = 1024  # memory (and /tmp) of one build step's container
    pids: int = 512  # processes one build step may run at once
    max_slug_mb: int = 1024  # a built app (source + dependencies) bigger than this is refused
    # What a push's objects unpack to, and the tree a build checks out: a small
    # pack of zeros can unpack to gigabytes.
    max_tree_mb: int = 500
    max_process_types: int = 20  # process types one app's Procfile may declare
    max_concurrent: int = 2  # builds this node runs at once; more pushes are refused

    def __post_init__(self) -> None:
        _numbers(
            self,
            "build",
            timeout=(int, 1),
            max_push_mb=(int, 1),
            max_tree_mb=(int, 1),
            max_process_types=(int, 1),
            max_concurrent=(int, 1),
        )
        _numbers(self, "build", memory_mb=(int, 64), pids=(int, 16), max_slug_mb=(int, 1))


@dataclass(frozen=True)
class Shares:
    """What this host agreed to share with the swarm."""

    memory_mb: int = 2048
    cpus: float = 1.0
    max_apps: int = 20
    instance_memory_mb: int = 512  # limit of one process instance
    instance_cpus: float = 0.25  # CPU limit of one instance (docker); placement counts it
    log_mb: int = 10  # an instance's log (process runtime) rotates at this size; 1 old file kept
    # The process runtime's sandbox (bubblewrap): the host uid its apps and builds
    # run as when the daemon is root, and what they may use (see runtime/sandbox.py).
    sandbox_uid: int = 65534
    sandbox_pids: int = 1024  # processes and threads of all sandboxed apps and builds together
    sandbox_tmp_mb: int = 256  # each sandbox's private /tmp
    sandbox_file_mb: int = 1024  # the largest file a sandboxed process may write
    max_instances: int = 100  # process instances this node runs, all apps together
    max_oneoffs: int = 4  # one-off `run` processes at once on this node
    max_config_value_kb: int = 32  # one config var's value
    max_config_total_kb: int = 64  # all of one app's config vars, names and values
    # The most `resources:set` may give one instance of an app (its default: the
    # instance_* figures above).
    max_instance_memory_mb: int = 1024
    max_instance_cpus: float = 1.0

    def __post_init__(self) -> None:
        _numbers(
            self,
            "shares",
            memory_mb=(int, 64),
            cpus=(float, 0.1),
            max_apps=(int, 1),
            instance_memory_mb=(int, 16),
            instance_cpus=(float, 0.01),
            log_mb=(int, 1),
            sandbox_uid=(int, 1),
            sandbox_pids=(int, 16),
            sandbox_tmp_mb=(int, 1),
            sandbox_file_mb=(int, 1),
            max_instances=(int, 1),
            max_oneoffs=(int, 1),
            max_config_value_kb=(int, 1),
            max_config_total_kb=(int, 1),
            max_instance_memory_mb=(int, 16),
            max_instance_cpus=(float, 0.01),
        )


@dataclass(frozen=True)
class Quotas:
    """What one user may have or run at once, unless an admin set theirs
    (`quota:set USER NAME=N`)."""

    apps: int = 5  # apps the user owns
    instances: int = 10  # process instances of their apps (the scale of all of them)
    runs: int = 2  # one-off `run` processes at once, on one node
    builds: int = 1  # builds at once, on one node

    def __post_init__(self) -> None:
        _numbers(self, "quotas", apps=(int, 0), instances=(int, 0), runs=(int, 0), builds=(int, 0))


QUOTA_NAMES = tuple(f.name for f in fields(Quotas))


def _kubo_api_url(value: Any) -> str:
    """The base URL of a kubo RPC API (like http://127.0.0.1:5001), or "" for none."""
    url = str(value).strip().rstrip("/")
    if not url:
        return ""
    why = 'use a URL like http://127.0.0.1:5001, or "" to let the node start its own kubo'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"[ipfs] api {url!r} is not a URL ({e}): {why}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"[ipfs] api {url!r} must start with http:// or https://: {why}")
    if not parts.hostname or not port:
        raise ConfigError(f"[ipfs] api {url!r} needs a host and a port: {why}")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"[ipfs] api {url!r} must be only scheme, host and port: {why}")
    return url


@dataclass(frozen=True)
class IpfsSettings:
    """The swarm node's kubo: the daemon starts and supervises its own (repo in
    $PC_HOME/ipfs, on `api_port` and `swarm_port`) unless `api` names a kubo the
    operator runs."""

    # The RPC API of a kubo the operator runs, e.g. "http://127.0.0.1:5001"; "" = own kubo.
    api: str = ""
    api_port: int = 5001
    swarm_port: int = 4001  # libp2p, on `listen`; only the swarm's private network uses it

    def __post_init__(self) -> None:
        object.__setattr__(self, "api", _kubo_api_url(self.api))
        for attr in ("api_port", "swarm_port"):
            object.__setattr__(self, attr, _port(getattr(self, attr), f"[ipfs] {attr}"))


# How long past its node's lease an instance may still run (even with the daemon
# frozen): pc-shim sends SIGKILL at the lease's end, so only its lag is left.
WATCHDOG_SECONDS = lease_watchdog.KILL_LAG
CLOCK_SLACK = 0.5  # seconds the members' clocks may disagree
# Renewals start every quarter lease and wait at most that long: a node whose
# renewals go through has half a lease on file, which must outlast pc-shim's GRACE.
LEASE_MIN = 2 * lease_watchdog.GRACE + 0.5


@dataclass(frozen=True)
class SwarmSettings:
    """How the swarm decides: leases, failover, replication."""

    # Shorter fails over sooner, but instances must ride out an election (pysyncobj
    # has no pre-vote): the first renewal after `election_max` must be agreed before
    # pc-shim's SIGTERM: 1.5 + 0.75 <= 3 - GRACE. 2.5 s fails (1.5 + 0.625 > 2.0).
    lease_seconds: float = 3.0
    # Failover waits the lease's end plus this: a cut-off or frozen node's instances
    # are gone by its end (give or take WATCHDOG_SECONDS), and CLOCK_SLACK covers
    # the clocks of the node that wrote the end and of the one that reads it.
    margin_seconds: float = WATCHDOG_SECONDS + CLOCK_SLACK
    replication: int = 3  # nodes that pin each slug (fewer when the swarm is smaller)

    def __post_init__(self) -> None:
        _numbers(
            self,
            "swarm",
            lease_seconds=(float, LEASE_MIN),
            margin_seconds=(float, WATCHDOG_SECONDS),  # must outlast the watchdog
            replication=(int, 1),
        )

    @property
    def renew_every(self) -> float:
        """Seconds between renewals: a few tries before the lease runs out."""
        return self.lease_seconds / 4


def _bool(value: Any, what: str) -> bool:
    """true/false, from TOML or from the environment's text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{what} must be true or false, not {value!r}")


@dataclass(frozen=True)
class RouterSettings(RouterLimits):
    """The HTTP router: its timeouts and header limits (see router/limits.py for
    what each means), and whether each request gets a line in its app's log."""

    logs: bool = True  # "app[router]: method=GET path=... status=200 ..." in `logs APP`
    # What serves the router port: "nginx" (in front of this router, which then
    # listens on loopback), "none" (this router alone), "auto" (nginx if installed).
    front: str = "auto"

    def __post_init__(self) -> None:
        # Every limit: seconds (floats) at least 0.1, sizes and counts (ints) at least 1.
        limits = {f.name: f.default for f in fields(RouterLimits)}
        _numbers(
            self,
            "router",
            **{k: (type(v), 0.1 if isinstance(v, float) else 1) for k, v in limits.items()},
        )
        object.__setattr__(self, "logs", _bool(self.logs, "[router] logs"))
        if self.front not in ("auto", "nginx", "none"):
            choices = '"auto", "nginx" or "none"'
            raise ConfigError(f"[router] front must be {choices}, not {self.front!r}")


@dataclass(frozen=True)
class TlsSettings:
    """HTTPS on the router, with certificates for custom domains from an ACME CA
    (HTTP-01: the CA must reach the router's HTTP port as port 80 of each domain)."""

    port: int = 0  # the router's HTTPS port; 0: no TLS, and no certificate is ordered here
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    contact: str = ""  # an email address the CA may write to about the certificates
    renew_days: int = 30  # renew a certificate that many days before it expires
    ca_bundle: str = ""  # PEM file to trust the ACME server with; "": the system's

    def __post_init__(self) -> None:
        object.__setattr__(self, "port", _port(self.port, "[tls] port"))
        _numbers(self, "tls", renew_days=(int, 1))
        url = urlsplit(str(self.acme_directory))
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConfigError(
                f"[tls] acme_directory {self.acme_directory!r} must be a URL like "
                "https://acme-v02.api.letsencrypt.org/directory"
            )
        if self.contact and not re.fullmatch(r"[^@\s:]+@[^@\s:]+\.[^@\s:]+", self.contact):
            raise ConfigError(f"[tls] contact {self.contact!r} must be an email address, or empty")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise ConfigError(
                f'[tls] ca_bundle {self.ca_bundle} is no file: give a PEM file, or ""'
            )


@dataclass(frozen=True)
class WebSettings:
    """Zero-downtime deploys: how a new web instance is checked before it takes
    requests (app.json `healthchecks` override it), how long a replaced one drains."""

    drain_seconds: float = 10.0  # a replaced instance gets no new requests, then is stopped
    check_attempts: int = 20  # tries of a health check before the release fails
    check_timeout: float = 3.0  # seconds one try may take
    check_wait: float = 0.5  # seconds between tries

    def __post_init__(self) -> None:
        _numbers(
            self,
            "web",
            drain_seconds=(float, 0.0),
            check_attempts=(int, 1),
            check_timeout=(float, 0.1),
            check_wait=(float, 0.0),
        )


@dataclass(frozen=True)
class Settings:
    name: str = "node1"
    home: Path = field(default_factory=default_home)
    listen: str = "0.0.0.0"  # address of the SSH server and router
    ssh_port: int = 2222
    router_port: int = 8080
    dashboard_port: int = 8800  # 0: no dashboard
    dashboard_listen: str = "127.0.0.1"  # the dashboard's address (gunicorn binds it)
    peer_port: int = 7001  # node-to-node API (signed with the swarm secret)
    raft_port: int = 7002  # the swarm's consensus (pysyncobj, encrypted with the swarm secret)
    advertise: str = ""  # address siblings reach this node at; "" = `listen`, or 127.0.0.1
    domain: str = "localhost"  # web apps answer at <app>.<domain>
    runtime: str = "auto"
    store: str = "local"
    build: BuildSettings = field(default_factory=BuildSettings)
    shares: Shares = field(default_factory=Shares)
    ipfs: IpfsSettings = field(default_factory=IpfsSettings)
    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    quotas: Quotas = field(default_factory=Quotas)
    tls: TlsSettings = field(default_factory=TlsSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    web: WebSettings = field(default_factory=WebSettings)

    def __post_init__(self) -> None:
        if not NODE_NAME_RE.fullmatch(self.name):
            raise ConfigError(f"invalid node name {self.name!r}: lowercase letters, digits, '-'")
        for attr in ("ssh_port", "router_port", "dashboard_port", "peer_port", "raft_port"):
            object.__setattr__(self, attr, _port(getattr(self, attr), attr.replace("_", "-")))
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.store not in STORES:
            raise ConfigError(f"store must be one of {', '.join(STORES)}, not {self.store!r}")
        object.__setattr__(self, "home", Path(self.home))

    # Paths inside the node's home: one place names them all.
    @property
    def advertised(self) -> str:
        """The host siblings dial to reach this node."""
        if self.advertise:
            return self.advertise
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::", "") else self.listen

    @property
    def swarm_file(self) -> Path:
        return self.home / "swarm.json"  # the swarm's id and secrets, once created or joined

    @property
    def ipfs_dir(self) -> Path:
        return self.home / "ipfs"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def host_key(self) -> Path:
        return self.home / "ssh_host_ed25519_key"

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    @property
    def tmp_dir(self) -> Path:
        """Work files (builds, repo copies); emptied when the daemon starts."""
        return self.home / "tmp"

    @property
    def repos_dir(self) -> Path:
        return self.home / "repos"

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def slugs_dir(self) -> Path:
        return self.home / "slugs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def tls_dir(self) -> Path:
        """Where a certificate's key is written for the instant `ssl` loads it."""
        return self.run_dir / "tls"

    @property
    def lease_dir(self) -> Path:
        """Where the node's lease is written, and its runtimes' watchdogs read it."""
        return self.run_dir / "lease"

    # Per-app paths.
    def repo_path(self, app: str) -> Path:
        return self.repos_dir / f"{app}.git"

    @property
    def ready_slugs_dir(self) -> Path:
        """In a swarm: slugs this node pins, unpacked ahead of a failover to it."""
        return self.home / "slugs-ready"

    def slug_path(self, cid: str) -> Path:
        """The working copy of a slug on this node (the store keeps the original)."""
        return self.slugs_dir / cid


ENV_PREFIX = "PC_"
_SECTIONS = {
    "build": BuildSettings,
    "shares": Shares,
    "ipfs": IpfsSettings,
    "swarm": SwarmSettings,
    "quotas": Quotas,
    "tls": TlsSettings,
    "router": RouterSettings,
    "web": WebSettings,
}


def _typed(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    return cls(**data)


def load(home: Path | None = None, **flags: Any) -> Settings:
    """Settings for the node at `home`: defaults <- config.toml <- PC_* env <- flags."""
    home = Path(home) if home else default_home()
    data: dict[str, Any] = {}
    cfg = home / "config.toml"
    if cfg.exists():
        try:
            data = tomllib.loads(cfg.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{cfg}: {e}") from None
    node = dict(data.pop("node", {}))
    sections = {name: dict(data.pop(name, {})) for name in _SECTIONS}
    if data:
        raise ConfigError(f"unknown section(s) in {cfg}: {', '.join(sorted(data))}")
    # Environment: PC_SSH_PORT=2223, PC_RUNTIME=process, PC_BUILD_STACK_IMAGE=...
    for f in fields(Settings):
        if f.name in ("home", *_SECTIONS):
            continue
        env = os.environ.get(ENV_PREFIX + f.name.upper())
        if env is not None:
            node[f.name] = env
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            env = os.environ.get(f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}")
            if env is not None:
                sections[section][f.name] = env  # converted and checked by the section
    node.update({k: v for k, v in flags.items() if v is not None})
    built = {name: _typed(cls, sections[name], f"[{name}]") for name, cls in _SECTIONS.items()}
    return _typed(Settings, {**node, **built, "home": home}, "[node]")


def to_toml(s: Settings) -> str:
    """The config file `pc init` writes: every setting, so hosts see what they can change."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["# People's Cloud node settings. Environment PC_<KEY> overrides a value.", "[node]"]
    for f in fields(Settings):
        if f.name in ("home", *_SECTIONS):
            continue
        lines.append(f"{f.name} = {val(getattr(s, f.name))}")
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        obj = getattr(s, section)
        lines += [f"{f.name} = {val(getattr(obj, f.name))}" for f in fields(obj)]
    return "\n".join(lines) + "\n"
