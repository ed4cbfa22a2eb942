"""What a node's containers may reach on the host: its router's public port, nothing else.

The docker runtime puts a node's containers on one network whose Linux bridge
is named for the node (`bridge_name`). Traffic from that bridge to the host
itself (any of its addresses: the bridge's gateway, its LAN address) goes
through the node's own chain, jumped to from INPUT: replies to what the host
started pass, new connections only to the router port, the rest is dropped —
so a tenant's code cannot reach the node's SSH, peer API, Raft, kubo, dashboard
or another app's published port (those are on 127.0.0.1 only). A port some
container publishes on every address is DNATed to that container, so the
traffic is forwarded, not input: docker drops it (its isolation between
networks, and `enable_icc=false` within the node's), as it drops traffic from
one container to another. Bots keep the internet: the network is not `internal`.

Rules need root and iptables (the binary docker uses, nft or legacy alike); they
are made again, idempotently, at every daemon start. Argument lists, never a
shell.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from peoplescloud.errors import PCError

# Where iptables lives, even when the daemon's PATH lacks the sbin dirs.
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
WAIT = ["-w", "5"]  # wait for the xtables lock (docker changes rules too)


class FirewallError(PCError):
    """The host cannot keep containers away from the node's ports."""


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def bridge_name(node: str) -> str:
    """The Linux bridge of `node`'s network (the kernel allows 15 characters)."""
    return "pc-" + _digest(node, 10)


def chain_name(node: str) -> str:
    """The node's own chain in the filter table (iptables allows 28 characters)."""
    return "PC-IN-" + _digest(node, 10)


def iptables() -> str | None:
    """The iptables binary docker would use, or None."""
    return shutil.which("iptables", path=os.environ.get("PATH", "") + ":" + SBIN)


def missing() -> str | None:
    """Why the rules cannot be installed here (None: they can)."""
    if iptables() is None:
        return "iptables is not installed (apt-get install -y iptables)"
    if os.geteuid() != 0:
        return "the daemon does not run as root, so it cannot install iptables rules"
    return None


def version() -> str:
    """`iptables v1.8.9 (nf_tables)`, or why there is none."""
    binary = iptables()
    if binary is None:
        return "no iptables"
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or done.stderr.strip()


def _run(args: list[str], check: bool = True) -> bool:
    binary = iptables()
    if binary is None:
        raise FirewallError(missing() or "no iptables")
    done = subprocess.run([binary, *WAIT, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        why = done.stderr.strip() or f"exit status {done.returncode}"
        raise FirewallError(f"iptables {' '.join(args)}: {why}")
    return done.returncode == 0


def _jump(node: str) -> list[str]:
    """The rule in INPUT that sends what the node's bridge brings to the node's chain."""
    return ["-i", bridge_name(node), "-j", chain_name(node)]


def install(node: str, router_port: int) -> None:
    """Containers on `node`'s network reach the host only at `router_port`."""
    if why := missing():
        raise FirewallError(why)
    chain = chain_name(node)
    _run(["-N", chain], check=False)  # exists already after a restart
    _run(["-F", chain])
    _run(["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])
    if router_port:
        _run(["-A", chain, "-p", "tcp", "--dport", str(router_port), "-j", "ACCEPT"])
    _run(["-A", chain, "-j", "DROP"])
    if not _run(["-C", "INPUT", *_jump(node)], check=False):
        _run(["-I", "INPUT", "1", *_jump(node)])  # first: no earlier ACCEPT may win


def installed(node: str) -> bool:
    """The node's chain is there and INPUT jumps to it."""
    return iptables() is not None and _run(["-C", "INPUT", *_jump(node)], check=False)


def remove(node: str) -> None:
    """Undo `install` (nothing if absent)."""
    while _run(["-D", "INPUT", *_jump(node)], check=False):
        pass
    _run(["-F", chain_name(node)], check=False)
    _run(["-X", chain_name(node)], check=False)


def protect(node: str, router_port: int) -> str | None:
    """`install`, at the daemon's start; what keeps it from protecting the host, or None."""
    try:
        install(node, router_port)
    except FirewallError as e:
        return str(e)
    return None
