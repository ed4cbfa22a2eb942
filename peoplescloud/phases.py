"""The commands a new release runs once, each as a one-off process in its slug
with its config (the runtime's `run`: the same limits and sandbox as `run APP`):

- before any instance of it starts: app.json's `scripts.dokku.predeploy`, then
  the Procfile's `release` type (Heroku's release phase). A non-zero exit stops
  the deploy: the release is not made current, the one before runs on;
- once it runs: app.json's postdeploy (`scripts.dokku.postdeploy`, or Heroku's
  `scripts.postdeploy`). As on Dokku, its failure fails the push but the
  release stays: it already serves.

Their output goes to the pusher (indented, as the build's) and into the app's
log as `app[release]`, `app[predeploy]`, `app[postdeploy]`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from peoplescloud.desired import instance_spec
from peoplescloud.errors import PCError
from peoplescloud.logbus import LogBus
from peoplescloud.reconciler import Reconciler
from peoplescloud.settings import Settings
from peoplescloud.state import App

PHASE_TIMEOUT = 30 * 60.0  # seconds one phase may run: a hung one must not hold the deploy
MAX_LINE = 8192  # bytes of one output line; a longer one is cut (a binary dump, say)


class Phases:
    def __init__(
        self,
        settings: Settings,
        reconciler: Reconciler,
        logbus: LogBus,
        timeout: float = PHASE_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.reconciler = reconciler
        self.logbus = logbus
        self.timeout = timeout

    def before(self, app: App, version: int, say: Callable[[str], None]) -> None:
        """Run `version`'s predeploy and release commands, with `app.config`.
        Raises PCError at the first that fails."""
        release = app.release(version)
        steps = (("predeploy", release.predeploy), ("release", release.release_command))
        for phase, command in steps:
            if not command:
                continue
            code = self.run(app, version, phase, command, say)
            if code != 0:
                event = f"{release.name}'s {phase} command failed (exit {code})"
                self.logbus.event(app.name, event)
                raise PCError(
                    f"{phase} command failed (exit {code}): {command}; "
                    "the previous release keeps running"
                )

    def after(self, app: App, version: int, say: Callable[[str], None]) -> None:
        """Run `version`'s postdeploy command, once it is current. Raises PCError
        when it fails; the release stays current."""
        release = app.release(version)
        if not release.postdeploy:
            return
        code = self.run(app, version, "postdeploy", release.postdeploy, say)
        if code != 0:
            self.logbus.event(app.name, f"{release.name}'s postdeploy command failed (exit {code})")
            raise PCError(
                f"postdeploy command failed (exit {code}): {release.postdeploy}; "
                f"{release.name} runs on (it is the current release)"
            )

    def run(
        self, app: App, version: int, source: str, command: str, say: Callable[[str], None]
    ) -> int:
        """Run `command` through the app's shell in `version`'s slug; its exit code."""
        say(f"-----> Running {source} command: {command}")
        spec = instance_spec(app, version, source, command, self.settings.name, self.settings)
        lines = LineSplitter(lambda line: self._line(app.name, source, line, say))
        cancel = threading.Event()
        timer = threading.Timer(self.timeout, cancel.set)
        timer.daemon = True
        timer.start()
        try:
            with self.reconciler.holding(spec):
                code = self.reconciler.runtime.run(
                    spec, ["sh", "-c", command], lines.feed, None, cancel
                )
        finally:
            timer.cancel()
            lines.flush()
        if cancel.is_set():
            say(f"       ({source} stopped after {self.timeout:.0f} s)")
            return code or 124
        return code

    def _line(self, app: str, source: str, line: str, say: Callable[[str], None]) -> None:
        say(f"       {line}")
        self.logbus.line(app, source, line)


class LineSplitter:
    """Bytes as they come -> whole lines (decoded, each at most MAX_LINE bytes)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *whole, self.buffer = self.buffer.split(b"\n")
        for line in whole:
            self._emit(line)
        while len(self.buffer) > MAX_LINE:
            self._emit(self.buffer[:MAX_LINE])
            self.buffer = self.buffer[MAX_LINE:]

    def flush(self) -> None:
        if self.buffer:
            self._emit(self.buffer)
            self.buffer = b""

    def _emit(self, line: bytes) -> None:
        self.emit(line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"))
