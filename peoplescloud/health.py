"""Whether a new web instance is ready to take requests.

The reconciler runs these checks on each web instance it starts (a push, a
rollback, a config change, a restart, a failover) and routes requests to it
only once they pass. Without app.json `healthchecks` the check is that the
instance's port answers (any answer to a `HEAD /`: a bare connect is not
enough, Docker's port proxy accepts for a container that does not listen and
holds the connection while it tries to reach it); with them, each startup
check in turn (`GET path`, a 2xx answer holding `content`). Every try first
asks whether the process still runs: one that exited fails at once.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from builder.appjson import HealthCheck
from peoplescloud.settings import WebSettings

BODY_LIMIT = 64 * 1024  # bytes of an answer searched for `content`


@dataclass(frozen=True)
class Check:
    """A check with every value decided (app.json's, else the node's [web] defaults)."""

    name: str
    path: str  # "" -> the port must answer (any answer)
    content: str
    attempts: int
    timeout: float
    wait: float
    initial_delay: float

    def describe(self) -> str:
        what = f"GET {self.path}" if self.path else "the port answers"
        return f'health check "{self.name}" ({what})' if self.name else f"health check ({what})"


def resolve(checks: Sequence[HealthCheck], web: WebSettings) -> list[Check]:
    """The checks to run: app.json's with the node's defaults filled in, or the
    default one (the port answers) when the app declares none."""
    return [
        Check(
            name=c.name,
            path=c.path,
            content=c.content,
            attempts=c.attempts if c.attempts is not None else web.check_attempts,
            timeout=c.timeout if c.timeout is not None else web.check_timeout,
            wait=c.wait if c.wait is not None else web.check_wait,
            initial_delay=c.initial_delay,
        )
        for c in (checks or [HealthCheck()])
    ]


def budget(checks: Sequence[Check]) -> float:
    """The longest the checks can take, in seconds."""
    return sum(c.initial_delay + c.attempts * (c.timeout + c.wait) for c in checks)


def run_checks(
    address: str,
    host: str,
    checks: Sequence[Check],
    alive: Callable[[], bool],
    cancel: threading.Event | None = None,
) -> str:
    """ "" once every check passed at `address` ("host:port"), else why not (one
    line). `host` is the Host header of HTTP checks; `alive` says whether the
    instance's process still runs; setting `cancel` ends the checks early."""
    cancel = cancel or threading.Event()
    for check in checks:
        why = _run(address, host, check, alive, cancel)
        if why:
            return why
    return ""


def _run(
    address: str, host: str, check: Check, alive: Callable[[], bool], cancel: threading.Event
) -> str:
    if cancel.wait(check.initial_delay):
        return "cancelled"
    last = ""
    for attempt in range(check.attempts):
        if attempt and cancel.wait(check.wait):
            return "cancelled"
        if not alive():
            return f"{check.describe()}: the process exited"
        last = _try(address, host, check)
        if not last:
            return ""
    tries = f"{check.attempts} attempt{'s' if check.attempts != 1 else ''}"
    return f"{check.describe()} failed {tries}: {last}"


def _try(address: str, host: str, check: Check) -> str:
    """One try: "" if it passed, else what went wrong."""
    name, _, port = address.rpartition(":")
    if not check.path:
        return _answers(name, int(port), check.timeout)
    conn = http.client.HTTPConnection(name, int(port), timeout=check.timeout)
    try:
        conn.request("GET", check.path, headers={"Host": host, "User-Agent": "pc-healthcheck"})
        answer = conn.getresponse()
        body = answer.read(BODY_LIMIT).decode("utf-8", "replace")
    except http.client.RemoteDisconnected:
        return "the connection was closed without an answer (does it listen on $PORT?)"
    except (OSError, http.client.HTTPException) as e:
        return _reason(e)
    finally:
        conn.close()
    if not 200 <= answer.status < 300:
        return f"answered {answer.status}, not 2xx"
    if check.content not in body:
        return f"answered {answer.status} without {check.content!r} in its body"
    return ""


def _answers(name: str, port: int, timeout: float) -> str:
    """Whether anything answers a HEAD request (its first byte, whatever it says)."""
    try:
        with socket.create_connection((name, port), timeout=timeout) as conn:
            conn.sendall(b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            if conn.recv(1) == b"":
                return "the connection was closed without an answer (does it listen on $PORT?)"
    except OSError as e:
        return _reason(e)
    return ""


def _reason(error: Exception) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (does it listen on $PORT?)"
    if isinstance(error, ConnectionResetError):  # Docker's port proxy, for a closed port
        return "the connection was reset (does it listen on $PORT?)"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__
