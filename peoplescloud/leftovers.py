"""Helper processes a killed daemon left running (the dashboard's gunicorn, the
nginx front): found by their pid file and stopped, so the next daemon can take
their ports. A pid is only signalled while its command line still names what
the pid file was written for: pids are reused."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def stop_leftover(pidfile: Path, markers: tuple[bytes, ...], what: str, wait: float) -> None:
    """SIGTERM, then SIGKILL after `wait` seconds, the process `pidfile` names, if
    its command line holds every one of `markers`."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if not all(marker in cmdline for marker in markers):
        return
    log.info("stopping the %s a previous daemon left running (pid %d)", what, pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if not alive(pid):
            return


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
