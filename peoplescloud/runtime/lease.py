"""The lease, enforced next to the process: an instance runs only while it holds.

A node of a swarm may run its instances only until its lease ends. The daemon
renews the lease through the consensus and writes its end (epoch seconds) into
`<lease dir>/lease`, atomically. A frozen daemon cannot stop anything, so
whatever supervises each instance (the process runtime's shim, the docker
runtime's watchdog inside the container) reads that file every second and ends
the app once the lease has passed, with no help from the daemon. No lease file:
no enforcement (a node alone, which needs no lease).

This module uses only the standard library: the docker runtime runs its source
with `python3 -c` inside the container, as `watchdog_main`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

LEASE_FILE = "lease"
LEASE_EXIT = 75  # the exit code of an instance ended because its lease passed
CHECK_EVERY = 1.0  # seconds between looks at the lease
GRACE = 3.0  # seconds between SIGTERM and SIGKILL when the lease passes


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


def passed(lease_dir: Path | str | None) -> float | None:
    """The lease's end if it has passed; None while it holds or when there is none."""
    until = read_lease(lease_dir) if lease_dir else None
    return until if until is not None and time.time() > until else None


def expiry_message(until: float, process: str) -> str:
    """The last line an instance ended by its lease logs."""
    at = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"lease expired at {at}: this node may no longer run {process}"


def guard(lease_dir: Path | str | None, child: subprocess.Popen[bytes]) -> float | None:
    """Block until `child` exits. Should the lease pass first, end our process group:
    SIGTERM (the caller ignores it, to outlive the app), SIGKILL to the rest after
    GRACE seconds. Returns the lease's end if it ended the child, else None."""
    while child.poll() is None:
        until = passed(lease_dir)
        if until is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(CHECK_EVERY)
            continue
        # Wait for the group, not the child: under bwrap the child ends at once.
        os.killpg(os.getpgrp(), signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while _rest_of_group() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in _rest_of_group():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.wait()
        return until
    return None


def _rest_of_group() -> list[int]:
    return [pid for pid in group_members(os.getpgrp()) if pid != os.getpid()]


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


def ignore_stop_signals() -> None:
    """Survive SIGTERM/INT/HUP sent to the group, to outlive the app and report its
    exit. A handler, not SIG_IGN, so the app gets the default back at exec."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)


def exit_status(code: int) -> int:
    """A Popen return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def watchdog_main(argv: list[str]) -> int:
    """A container's main process: `<lease dir> <process> <command...>`. Runs the
    command while the lease holds; returns its exit status, or LEASE_EXIT (after
    logging why) when the lease ended it or had passed before it could start.
    `docker stop` signals the whole group (tini's TINI_KILL_PROCESS_GROUP), so the
    app gets its SIGTERM straight from tini; the watchdog only waits it out."""
    lease_dir, process, command = argv[0] or None, argv[1], argv[2:]
    ignore_stop_signals()
    until = passed(lease_dir)
    if until is None:
        child = subprocess.Popen(command)
        until = guard(lease_dir, child)
        if until is None:
            return exit_status(child.returncode)
    print(expiry_message(until, process), flush=True)
    return LEASE_EXIT
