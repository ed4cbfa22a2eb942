"""The lease, enforced next to the process: an instance runs only while it holds.

A node of a swarm may run its instances only until its lease ends. The daemon
renews the lease through the consensus and writes its end (epoch seconds) into
`<lease dir>/lease`, atomically. A frozen daemon cannot stop anything, so
what supervises each instance (`pc-shim`, see runtime/shim/pc-shim.c: the
process runtime's shim, the docker runtime's container init) ends the app by
the lease's end, with no help from the daemon: it reads that file every
CHECK_EVERY seconds and again GRACE before the end it last read, and if the end
is still that close, SIGTERM then, SIGKILL at the end itself, exit code
LEASE_EXIT. No lease file: no enforcement (a node alone, which needs no lease).
This module writes the file and holds the rules pc-shim applies.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

LEASE_FILE = "lease"
LEASE_EXIT = 75  # the exit code of an instance ended because its lease passed
# A frozen node's instances are gone by its lease's end: pc-shim wakes GRACE
# before the end it knows, reads the file again (the daemon renews every quarter
# lease, so a live node's lease has moved on by then), and if not, SIGTERM, and
# SIGKILL at the end. The periodic look only notices a lease file that appears or
# is replaced by an earlier end; failover does not wait on it. Only a node cut
# off from its swarm gets here, as its daemon stops them itself GRACE before too.
CHECK_EVERY = 0.5  # seconds between looks at the lease
# Seconds between SIGTERM and SIGKILL, which comes at the lease's end. Short: an
# instance is only ever ended so when its node is cut off, and the earlier the
# SIGTERM, the less of the lease is left to ride out a slow commit or election.
GRACE = 0.5
# How late past the lease's end pc-shim's SIGKILL may land, and the killed
# processes be gone, on a busy machine (a wake-up of poll(), a scan of /proc).
KILL_LAG = 0.25


def make_lease_dir(lease_dir: Path) -> Path:
    """Create the lease directory, readable by every user (apps' containers mount it)."""
    lease_dir.mkdir(parents=True, exist_ok=True)
    lease_dir.chmod(0o755)
    return lease_dir


def write_lease(lease_dir: Path, until: float) -> None:
    """Let this node run its instances until `until` (epoch seconds). Atomic (temp +
    rename): a reader never sees half a file. A directory, not a file, is what a
    container mounts, since a mounted file would keep showing the renamed-over inode."""
    make_lease_dir(lease_dir)
    tmp = lease_dir / f".{LEASE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(f"{until:.3f}\n")
    tmp.chmod(0o644)
    tmp.replace(lease_dir / LEASE_FILE)


def read_lease(lease_dir: Path | str) -> float | None:
    """The end of the lease; None when there is no lease file (nothing to enforce).
    A lease file that cannot be read or parsed counts as long expired (0.0)."""
    try:
        text = (Path(lease_dir) / LEASE_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return 0.0
    try:
        return float(text.strip())
    except ValueError:
        return 0.0


def clear_lease(lease_dir: Path) -> None:
    """Remove the lease file: instances then run with no enforcement at all."""
    (lease_dir / LEASE_FILE).unlink(missing_ok=True)


def expiry_message(until: float, process: str) -> str:
    """The last line an instance ended by its lease logs (pc-shim writes it)."""
    at = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"lease expired at {at}: this node may no longer run {process}"


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members
