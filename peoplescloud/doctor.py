"""What this host has and lacks for running a node, each gap with the command that fixes it.

`checks` only looks; it changes nothing and prints nothing. The CLI shows the
result (`pc doctor`) and decides the exit code from the required checks.
"""

from __future__ import annotations

import errno
import shutil
import socket
from dataclasses import dataclass

import docker

from peoplescloud.cluster import swarm_entry
from peoplescloud.docker_engine import connect
from peoplescloud.errors import PCError
from peoplescloud.front_process import choose
from peoplescloud.runtime import firewall
from peoplescloud.runtime.base import Capabilities
from peoplescloud.runtime.process import SHARED_NETWORK
from peoplescloud.runtime.sandbox import probe
from peoplescloud.settings import Settings
from peoplescloud.stack import DEFAULT_STACK, STACKS, image_exists, image_of


@dataclass(frozen=True)
class Check:
    """One thing the node needs: whether the host has it, what was seen, and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""  # the exact command (or setting) that makes this check pass; "" when ok
    required: bool = True  # False: the node works without it, with less


# Binaries the node runs: (name on PATH, what it is for, fix, required).
BINARIES = (
    ("git", "git client (tests, app checkouts)", "apt-get install -y git", True),
    ("ssh", "ssh client (tests, swarm admin)", "apt-get install -y openssh-client", True),
    (
        "bwrap",
        "bubblewrap, the sandbox of the process runtime",
        "apt-get install -y bubblewrap",
        False,
    ),
)


def swarm_checks(settings: Settings) -> list[Check]:
    """What the swarm package checks (kubo); nothing when it is not installed."""
    try:
        entry = swarm_entry()
    except PCError:
        return []
    found: list[Check] = entry.checks(settings)
    return found


def checks(settings: Settings) -> list[Check]:
    """Every check, in the order a host should fix them."""
    client = connect(timeout=10)
    try:
        result = [check_docker(client), check_stack_image(client, settings.build.stack_image)]
        result.append(check_other_stacks(client, settings.build.stack_image))
        result.append(check_tenants(settings, client is not None))
    finally:
        if client is not None:
            client.close()
    result += [check_binary(*spec) for spec in BINARIES]
    result.append(check_firewall())
    result.append(check_front(settings))
    result += swarm_checks(settings)
    result += [
        check_port(what, host, port)
        for what, host, port in (
            ("ssh_port", settings.listen, settings.ssh_port),
            ("router_port", settings.listen, settings.router_port),
            ("dashboard_port", settings.dashboard_listen, settings.dashboard_port),
        )
    ]
    return result


def check_docker(client: docker.DockerClient | None) -> Check:
    """The Docker engine answers (the docker runtime and builds need it)."""
    name = "docker engine"
    if client is not None:
        return Check(name, True, f"Docker {client.version().get('Version', '?')} answers")
    if not shutil.which("dockerd"):
        return Check(name, False, "Docker is not installed", "apt-get install -y docker.io")
    return Check(name, False, "dockerd is installed but no engine answers", "scripts/start-dockerd")


def check_tenants(settings: Settings, engine: bool) -> Check:
    """Whether this node may run other people's apps: only where its runtime keeps
    them apart from the host and each other (docker); else only its host's apps."""
    name = "tenants"
    if engine and settings.runtime != "process":
        return Check(name, True, "other users' apps run in Docker containers")
    box, why = probe(settings.shares.sandbox_uid)
    caps = Capabilities(False, SHARED_NETWORK if box else why)
    fix = "install Docker (apt-get install -y docker.io) and set runtime = auto"
    return Check(name, False, caps.owner_only(), fix, required=False)


def check_stack_image(client: docker.DockerClient | None, image: str) -> Check:
    """The stack image that builds and apps run in is on the engine."""
    name = "stack image"
    if client is None:
        return Check(name, False, f"cannot look for {image}: no Docker engine", "pc stack build")
    if image_exists(client, image):
        return Check(name, True, f"{image} is present")
    return Check(name, False, f"{image} is missing", "pc stack build")


def check_other_stacks(client: docker.DockerClient | None, default_image: str) -> Check:
    """The stacks apps may ask for by version: optional, as a push or an instance
    placed here builds a missing one, but that takes minutes (a failover waits)."""
    name = "other stacks"
    others = [n for n in STACKS if n != DEFAULT_STACK]
    if client is None:
        return Check(name, False, "no Docker engine", "pc stack build --all", required=False)
    missing = [n for n in others if not image_exists(client, image_of(default_image, n))]
    if not missing:
        return Check(name, True, f"{', '.join(others)} are present")
    detail = f"{', '.join(missing)} missing (a push that asks for one builds it)"
    return Check(name, False, detail, "pc stack build --all", required=False)


def check_firewall() -> Check:
    """The daemon can keep the docker runtime's containers away from the node's ports."""
    name = "container firewall"
    why = firewall.missing()
    if why is None:
        detail = f"{firewall.version()}: containers reach only the router port on this host"
        return Check(name, True, detail, required=False)
    detail = (
        f"{why}: containers of the docker runtime can reach the node's SSH, peer and Raft ports"
    )
    fix = "run `pc daemon` as root, as scripts/start-node does (iptables: apt-get install iptables)"
    return Check(name, False, detail, fix, required=False)


def check_front(settings: Settings) -> Check:
    """What serves the router port: nginx in front of the Python router, or the latter alone."""
    name = "router data path"
    try:
        nginx = choose(settings.router.front, settings.router_port)
    except RuntimeError as e:
        return Check(name, False, str(e), "apt-get install -y nginx")
    if nginx:
        return Check(name, True, f"nginx ({nginx}) in front of the Python router", required=False)
    why = "router_port is 0" if settings.router_port == 0 else f"front = {settings.router.front!r}"
    if settings.router.front == "auto" and settings.router_port:
        why = "nginx is not installed"
    detail = f"the Python router alone ({why}): about 0.4x nginx's requests/s"
    return Check(name, settings.router.front == "none", detail, "apt-get install -y nginx", False)


def check_binary(binary: str, purpose: str, fix: str, required: bool = True) -> Check:
    """`binary` is on PATH."""
    path = shutil.which(binary)
    if path:
        return Check(binary, True, f"{path} ({purpose})", required=required)
    return Check(binary, False, f"{binary} not found on PATH ({purpose})", fix, required)


def check_port(setting: str, host: str, port: int) -> Check:
    """Nothing listens on `host:port` yet, so the node can (port 0 means any free port)."""
    name = f"{setting} {host}:{port}"
    if port == 0:
        return Check(name, True, "port 0: the system picks a free port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option the servers set, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                detail = f"port {port} is in use on {host} (a running node holds it too)"
            else:
                detail = f"cannot bind {host}:{port}: {e.strerror}"
            fix = (
                f"free it (ss -ltnp 'sport = :{port}' shows who holds it) or choose another: "
                f"PC_{setting.upper()}=<port>, or {setting} in config.toml [node]"
            )
            return Check(name, False, detail, fix)
    return Check(name, True, "free")
