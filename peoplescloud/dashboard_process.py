"""The dashboard's gunicorn, supervised by the daemon: started with the node,
stopped with it, started again (with back-off) when it dies.

gunicorn's workers are processes of their own: they reach the node only
through the daemon's local API (`peoplescloud.dashboard_api`, a Unix socket
whose path they get in PC_DASHBOARD_API), never the state files. Its access
log shows the path without the query string (`%(U)s`): a login link's token
never reaches the daemon's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import dashboard
from peoplescloud import leftovers
from peoplescloud.settings import Settings

log = logging.getLogger("pc.dashboard")

WORKERS = 2
FIRST_BACKOFF = 1.0  # seconds before starting a dead gunicorn again, doubled each time
MAX_BACKOFF = 60.0
HEALTHY_AFTER = 60.0  # a gunicorn that ran this long starts again at once when it dies
STOP_WAIT = 10.0  # seconds gunicorn may take to stop before it is killed
ACCESS_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s'  # %(U)s: the path, no query string


def command(settings: Settings, api_socket: Path) -> list[str]:
    host = settings.dashboard_listen
    bind = (
        f"[{host}]:{settings.dashboard_port}"
        if ":" in host
        else f"{host}:{settings.dashboard_port}"
    )
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers", str(WORKERS),
        "--bind", bind,
        "--access-logfile", "-",
        "--access-logformat", ACCESS_FORMAT,
        "--error-logfile", "-",
        "--graceful-timeout", "5",
        "--worker-tmp-dir", str(settings.run_dir),
        "--pid", str(pidfile(settings)),
        "dashboard.app:create_app()",
    ]  # fmt: skip


def pidfile(settings: Settings) -> Path:
    return settings.run_dir / "dashboard.pid"


def stop_leftover(path: Path) -> None:
    """A gunicorn a killed daemon left running (it holds the port): stopped, if the
    pid in its pid file is still a dashboard's gunicorn."""
    markers = (b"gunicorn", b"dashboard.app:create_app()")
    leftovers.stop_leftover(path, markers, "dashboard", STOP_WAIT / 2)


def environment(settings: Settings, api_socket: Path) -> dict[str, str]:
    # The workers import this checkout's `dashboard` package, as the daemon does.
    source = str(Path(dashboard.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PC_DASHBOARD_API": str(api_socket),
        "PYTHONPATH": f"{source}{os.pathsep}{path}" if path else source,
    }


async def supervise(settings: Settings, api_socket: Path, stop: asyncio.Event) -> None:
    """Run gunicorn until `stop` is set; start it again when it dies."""
    await asyncio.to_thread(stop_leftover, pidfile(settings))
    backoff = FIRST_BACKOFF
    while not stop.is_set():
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *command(settings, api_socket),
            env=environment(settings, api_socket),
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a ^C to the daemon's terminal is the daemon's to pass on
        )
        log.info(
            "dashboard on http://%s:%d/ (gunicorn pid %d)",
            settings.dashboard_listen,
            settings.dashboard_port,
            proc.pid,
        )
        waiting = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if stop.is_set():
            await _stop(proc, waiting)
            return
        if time.monotonic() - started >= HEALTHY_AFTER:
            backoff = FIRST_BACKOFF
        log.warning(
            "the dashboard's gunicorn exited with code %s; starting it again in %g s",
            proc.returncode,
            backoff,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


async def _stop(proc: asyncio.subprocess.Process, waiting: asyncio.Future[int]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # gunicorn's graceful stop, workers too
        try:
            await asyncio.wait_for(asyncio.shield(waiting), STOP_WAIT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await waiting
    log.info("dashboard stopped")
