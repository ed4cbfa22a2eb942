"""The node's nginx front, supervised by the daemon (as dashboard_process does
gunicorn): started with the node, started again when it dies, stopped with it.
A killed daemon's nginx is stopped at the next start.

nginx serves the router port; the Python router listens on a loopback port
behind it (router/front.py writes the config). The daemon checks the routes
every WATCH_EVERY seconds and, when they changed, writes the config again
(atomically), has `nginx -t` check it, and reloads nginx (SIGHUP: requests
under way finish on the old workers). A config nginx rejects is logged and
the last good one kept. Access lines arrive as syslog datagrams on a Unix
socket in the front's directory and go to the app's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from peoplescloud import leftovers
from router.front import TAG, Front, config

log = logging.getLogger("pc.front")

Routes = dict[str, tuple[list[str], list[str]]]  # app -> (host names, addresses)
WATCH_EVERY = 0.5  # seconds between looks at the routes: at most 2 reloads a second
START_WAIT = 5.0  # seconds nginx may take to listen
STOP_WAIT = 5.0
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
_TIME = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def find_nginx() -> str | None:
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return shutil.which("nginx")


def choose(front: str, router_port: int) -> str | None:
    """The nginx binary to put in front, or None for the Python router alone."""
    if front == "none" or router_port == 0:  # nginx needs a port it is told
        return None
    binary = find_nginx()
    if binary is None and front == "nginx":
        raise RuntimeError('[router] front = "nginx" but nginx is not installed: apt install nginx')
    return binary


def log_line(message: str) -> tuple[str, str] | None:
    """An access datagram -> (app, the router's Heroku-style line)."""
    _, found, body = message.partition(f"{TAG}: ")
    parts = body.rstrip("\n").split("|", 3)
    if not found or len(parts) != 4 or not parts[0]:
        return None
    app, connect_s, response_s, rest = parts
    connect = sum(float(t) for t in _TIME.findall(connect_s)) * 1000
    response = sum(float(t) for t in _TIME.findall(response_s)) * 1000
    fields, _, tail = rest.partition(" status=")
    line = (
        f"{fields} connect={round(connect)}ms service={round(max(0.0, response - connect))}ms"
        f" status={tail} protocol=http"
    )
    return app, line


class FrontProcess:
    """nginx at `front.listen:front.port`, routes from `routes()`, access lines to `on_line`."""

    def __init__(
        self,
        binary: str,
        front: Front,
        routes: Callable[[], Routes],
        on_line: Callable[[str, str], None],
    ) -> None:
        self.binary = binary
        self.front = front
        self.routes = routes
        self.on_line = on_line
        self.conf = front.work / "nginx.conf"
        self.current: Routes | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None

    def prepare(self) -> None:
        """The front's directory, its log socket and a first config (checked)."""
        work = self.front.work
        stop_leftover(work / "nginx.pid", self.conf)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        if self.front.logs:
            (work / "log.sock").unlink(missing_ok=True)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(str(work / "log.sock"))
            self.sock.setblocking(False)
        routes = self.routes()
        why = self.write(routes)
        if why:
            raise RuntimeError(f"nginx rejected the front's config: {why}")
        self.current = routes

    def write(self, routes: Routes) -> str | None:
        """Write the config for `routes` if nginx accepts it; else why not."""
        text = config(self.front, routes)
        new = self.conf.with_suffix(".new")
        new.write_text(text)
        check = subprocess.run(
            [self.binary, "-t", "-q", *self._paths(new)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            new.unlink(missing_ok=True)
            lines = (check.stderr or check.stdout).strip().splitlines()
            return lines[-1] if lines else f"nginx -t exited with {check.returncode}"
        new.replace(self.conf)
        return None

    def _paths(self, conf: Path) -> list[str]:
        work = self.front.work
        return ["-c", str(conf), "-p", str(work), "-e", str(work / "error.log")]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *self._paths(self.conf),
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline and self.proc.returncode is None:
            listens = await asyncio.to_thread(_listens, self.front.listen, self.front.port)
            if listens and (self.front.work / "nginx.pid").exists():  # a next daemon's to find
                return
            await asyncio.sleep(0.05)
        where = self.front.work / "error.log"
        raise RuntimeError(f"nginx did not listen on port {self.front.port}: see {where}")

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: read access lines, reload on new routes, restart a dead nginx."""
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            loop.add_reader(self.sock.fileno(), self._read)
        backoff = FIRST_BACKOFF
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WATCH_EVERY)
                if stop.is_set():
                    break
                assert self.proc is not None
                if self.proc.returncode is not None:
                    log.warning("nginx exited (code %s); starting it again", self.proc.returncode)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    with contextlib.suppress(RuntimeError):
                        await self.start()
                        backoff = FIRST_BACKOFF
                    continue
                await self.refresh()
        finally:
            if self.sock is not None:
                loop.remove_reader(self.sock.fileno())
                self.sock.close()
            await self.stop()

    async def refresh(self) -> None:
        routes = self.routes()
        if routes == self.current or self.proc is None:
            return
        why = await asyncio.to_thread(self.write, routes)
        self.current = routes  # a rejected config is not tried again until routes change
        if why:
            log.warning("nginx rejected the new routes, kept the last good config: %s", why)
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGHUP)

    def _read(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # then let the loop breathe
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            entry = log_line(data.decode("utf-8", "replace"))
            if entry is not None:
                self.on_line(*entry)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # fast shutdown: the router stops too
        try:
            await asyncio.wait_for(proc.wait(), STOP_WAIT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.info("nginx front stopped")


def _listens(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        socket.create_connection((target, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def stop_leftover(pidfile: Path, conf: Path) -> None:
    """The nginx a killed daemon left (it holds the port): stopped, if its pid
    file names an nginx master started with this config."""
    leftovers.stop_leftover(pidfile, (b"nginx", str(conf).encode()), "nginx front", STOP_WAIT)
