"""The process runtime: instances as plain child processes, for nodes without Docker.

Each instance runs in its own session (so it outlives the daemon) under
`pc-shim` (`runtime.shim`: a small static program, not a Python interpreter),
itself the session leader, that:
  - timestamps every line of the app's stdout+stderr into `<process>.<n>.log`, so
    logs carry the time they were written, like docker's; at `log_mb` it goes on
    in `<n+1>` and removes `<n-1>`: one old file is kept;
  - waits for the app and writes its exit code to `<process>.exit`. The daemon
    is not the parent of an instance it re-adopted after a restart, so it cannot
    `wait()` for it; the exit file is how it still learns the code;
  - ends the app once the node's lease passes (`peoplescloud.runtime.lease`).
A handle file `<process>.json` (pid and kernel start time of the shim, to tell
a reused pid apart, release, port, ...) is what `status()` re-adopts. The shim
starts with a clean environment: the app's (config vars included) reaches it
through an unnamed file it reads by descriptor, and goes to the app alone.
Where bubblewrap works, the app runs in its sandbox (`runtime.sandbox`):
only the system and its slug, read-only, a private /tmp, a user namespace, not
root on the host, with limits. The network is the host's: see `capabilities`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime import lease, sandbox, shim
from peoplescloud.runtime.base import (
    Capabilities,
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    LogLine,
    Terminal,
    on_set,
    search_path,
    shell_script,
)
from peoplescloud.runtime.handles import Handles, Watch

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
POLL = 0.2  # seconds between looks at a growing log or a dying process group
# A quiet log is looked at less and less often, up to this: fifty idle bots'
# followers would otherwise keep the daemon busy at rest (issue 12's density).
POLL_IDLE = 2.0
SHARED_NETWORK = "apps share the host's network and reach its local services"


class ProcessRuntime:
    """Instances as process groups of this host, for node `node`; state under `run_dir`."""

    name = "process"

    def __init__(
        self,
        run_dir: Path,
        node: str,
        lease_dir: Path | None = None,
        uid: int = 65534,
        limits: sandbox.Limits = sandbox.Limits(pids=1024, file_mb=1024),  # noqa: B008 (frozen)
        log_mb: int = 10,
    ) -> None:
        """`lease_dir`: where the daemon keeps the node's lease (None: never enforced).
        `uid`: the host uid sandboxed apps run as (when the daemon is root); `limits`:
        what each may use (its memory comes from its spec); `log_mb`: where a log rotates."""
        self.run_dir = Path(run_dir)
        self.node = node
        self.lease_dir = lease_dir
        self.limits = limits
        self.log_bytes = log_mb << 20
        self.sandbox, self._why = sandbox.probe(uid)
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # to reap what we started
        self._handles = Handles(self.run_dir, _alive)  # status()'s reads, cached

    @property
    def capabilities(self) -> Capabilities:
        """Never isolates tenants: even sandboxed, apps share the host's network (a
        network namespace with a user-mode stack is what it would take)."""
        return Capabilities(False, SHARED_NETWORK if self.sandbox else self._why)

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        if spec.image:
            raise RuntimeFailure(f"{spec.app} is built from a Dockerfile: it runs only on Docker")
        files = self._files(spec.key)
        for path in files["dir"].glob(f"{spec.process}@*.json"):  # this slot, any release
            handle = _read_json(path)
            if handle is None or _alive(handle):
                if handle is not None and handle["release"] == spec.release:
                    raise RuntimeFailure(f"{spec.key} is already running")
                continue
            self._forget(_key(handle))  # exited, of this release or an older one
        files["dir"].mkdir(parents=True, exist_ok=True)
        _log_file(files["log"], 0).write_bytes(b"")  # logs() may follow it at once
        port = _free_port() if spec.web else None
        program = str(shim.binary())  # built on first use: may say what to install
        cwd, limits = spec.slug.resolve(), self._limits(spec)
        argv = ["sh", "-c", shell_script(spec.command)]  # see `shell_script`
        env = self._env(spec, port)
        if self.sandbox:
            launch = self.sandbox.launch(argv, env, cwd, limits, [cwd])
        else:
            launch = sandbox.plain(argv, env, limits)
        # What the command gets (the app's environment when not sandboxed, else the
        # setup programs' clean one); the shim itself runs with a clean one.
        environ = sandbox.data_file(
            b"".join(f"{k}={v}\0".encode("utf-8", "surrogateescape") for k, v in launch.env.items())
        )
        lease_dir = str(self.lease_dir.resolve()) if self.lease_dir else ""
        command = shim.command(
            program,
            spec.process,
            lease_dir,
            log=files["log"],
            first_log=max(_log_numbers(files["log"]), default=0),
            log_bytes=self.log_bytes,
            exit_file=files["exit"],
            env_fd=environ.fileno(),
        )
        try:
            child = subprocess.Popen(
                [*command, *launch.argv],
                cwd=cwd,
                env=dict(sandbox.CLEAN_ENV),  # the app's own reaches the app alone
                pass_fds=(*launch.fds, environ.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise RuntimeFailure(f"could not start {spec.key}: {e}") from None
        finally:
            launch.close()
            environ.close()
        self._children[child.pid] = child
        handle = {
            "id": uuid.uuid4().hex,
            "node": self.node,
            "app": spec.app,
            "process": spec.process,
            "release": spec.release,
            "pid": child.pid,
            "pid_start": _start_time(child.pid),
            "port": port,
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": spec.command,
        }
        tmp = files["handle"].with_suffix(".tmp")
        tmp.write_text(json.dumps(handle))
        tmp.replace(files["handle"])
        return self._status(handle)

    def stop(self, key: InstanceKey, timeout: float = 10) -> None:
        handle = self._handle(key)
        if handle and _alive(handle):
            pgid = handle["pid"]
            _killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(POLL / 4)
            _killpg(pgid, signal.SIGKILL)
            self._reap()
        self._forget(key)

    def status(self) -> list[InstanceStatus]:
        self._reap()
        handles = [h for h in self._handles.read() if h.get("node") == self.node]
        running = self._handles.running(handles)
        return [self._status(h, running[h["id"]]) for h in handles]

    def logs(self, key: InstanceKey, follow: bool, cursor: str | None) -> Iterator[LogLine]:
        """The instance's log files, oldest first. The cursor is '<instance id>:<file
        number>:<byte offset>', so it survives a rotation, and a cursor of an earlier
        instance of the same process starts the new one from its oldest file."""
        handle = self._handle(key)
        if handle is None:
            return
        files = self._files(key)
        watch = Watch(files["handle"], handle, lambda: self._is_current(handle)) if follow else None
        try:
            yield from self._read_logs(files["log"], handle, cursor, watch)
        finally:
            if watch is not None:
                watch.close()

    def _read_logs(
        self, base: Path, handle: dict[str, Any], cursor: str | None, watch: Watch | None
    ) -> Iterator[LogLine]:
        """`logs()`'s reading; following while `watch()` says the instance runs."""
        number, start = _parse_cursor(cursor, handle["id"])
        kept = _log_numbers(base)
        if not kept:
            return
        if number not in kept:  # rotated away meanwhile, or another instance's
            number, start = kept[0], 0
        while True:
            try:
                log = open(_log_file(base, number), "rb")  # noqa: SIM115 (closed below)
            except FileNotFoundError:  # removed by the rotation after the next one
                kept = _log_numbers(base)
                if not kept:
                    return
                number, start = max(number + 1, kept[0]), 0
                continue
            with log:
                log.seek(start)
                pending = b""
                wait = POLL
                while True:
                    # Whatever the shim wrote here came before it opened the next file
                    # or before the instance ended: look first, then read once more.
                    rotated = _log_file(base, number + 1).exists()
                    gone = watch is None or not watch()
                    pending += log.read()
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        start += len(raw) + 1
                        yield _log_line(raw, f"{handle['id']}:{number}:{start}")
                    if rotated:
                        break
                    if gone:
                        return
                    if lines:
                        wait = POLL
                    else:
                        time.sleep(wait)
                        wait = min(wait * 2, POLL_IDLE)
            number, start = number + 1, 0

    def run(
        self,
        spec: InstanceSpec,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None = None,
        cancel: threading.Event | None = None,
        terminal: Terminal | None = None,  # not given here: its one-offs have pipes, no pty
    ) -> int:
        env, limits = self._env(spec, None), self._limits(spec)
        if self.sandbox:  # a one-off ends with the daemon that reads it
            launch = self.sandbox.launch(argv, env, spec.slug, limits, [spec.slug], (), True)
        else:
            launch = sandbox.plain(argv, env, limits)
        try:
            child = subprocess.Popen(
                launch.argv,
                cwd=spec.slug,
                env=launch.env,
                pass_fds=launch.fds,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: `cancel` ends all it started
            )
        except OSError as e:
            raise RuntimeFailure(f"could not run {argv[:1]} for {spec.app}: {e}") from None
        finally:
            launch.close()
        if cancel is not None:

            def kill() -> None:
                if child.poll() is None:
                    _killpg(child.pid, signal.SIGKILL)

            on_set(cancel, kill)
        if stdin is not None and child.stdin is not None:
            threading.Thread(target=_feed, args=(child.stdin, stdin), daemon=True).start()
        # a binary pipe with the default buffering: a BufferedReader, which has read1
        stdout = cast(io.BufferedReader, child.stdout)
        while data := stdout.read1(65536):
            output(data)
        return child.wait()

    # -- helpers --

    def _files(self, key: InstanceKey) -> dict[str, Path]:
        d = self.run_dir / key.app
        name = f"{key.process}@{key.release}"
        return {
            "dir": d,
            "handle": d / f"{name}.json",
            "log": d / name,  # the files are `<name>.<n>.log` (see `_log_file`)
            "exit": d / f"{name}.exit",
        }

    def _handle(self, key: InstanceKey) -> dict[str, Any] | None:
        return _read_json(self._files(key)["handle"])

    def _is_current(self, handle: dict[str, Any]) -> bool:
        """The instance of `handle` still runs and was not replaced. (No reaping
        here: a zombie reads as gone, and every log follower asks this often.)"""
        now = self._handle(_key(handle))
        return bool(now and now["id"] == handle["id"] and _alive(now))

    def _forget(self, key: InstanceKey) -> None:
        for what, path in self._files(key).items():
            if what == "log":
                for number in _log_numbers(path):
                    _log_file(path, number).unlink(missing_ok=True)
            elif what != "dir":
                path.unlink(missing_ok=True)

    def _status(self, handle: dict[str, Any], running: bool | None = None) -> InstanceStatus:
        running = _alive(handle) if running is None else running
        exit_code = None
        if not running:
            text = _read_text(self._files(_key(handle))["exit"])
            exit_code = int(text) if text and text.strip().lstrip("-").isdigit() else None
        port = handle.get("port")
        return InstanceStatus(
            app=handle["app"],
            process=handle["process"],
            release=handle["release"],
            running=running,
            exit_code=exit_code,
            started_at=handle["started_at"],
            address=f"127.0.0.1:{port}" if running and port else None,
            detail=f"pid {handle['pid']}" + (" (bwrap)" if self.sandbox else ""),
        )

    def _env(self, spec: InstanceSpec, port: int | None) -> dict[str, str]:
        """A clean environment: the daemon's own variables never reach apps."""
        path = search_path(spec.slug.resolve(), spec.path, SYSTEM_PATH)
        return {"LANG": "C.UTF-8", **spec.environment(port), "PATH": path}

    def _limits(self, spec: InstanceSpec) -> sandbox.Limits:
        return sandbox.Limits(**{**self.limits.__dict__, "memory_mb": spec.memory_mb})

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(pid, None)  # pumps' threads reap too

    def _group_alive(self, pgid: int) -> bool:
        """Whether a live (not zombie) process is left in the group. A zombie is
        dead: one re-parented to init can wait a second or more to be reaped."""
        self._reap()
        return bool(lease.group_members(pgid))


def _log_file(base: Path, number: int) -> Path:
    return base.with_name(f"{base.name}.{number}.log")


def _log_numbers(base: Path) -> list[int]:
    """The numbers of the log files of `base` that exist, oldest first."""
    found = []
    for path in base.parent.glob(f"{base.name}.*.log"):
        number = path.name[len(base.name) + 1 : -len(".log")]
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def _parse_cursor(cursor: str | None, instance: str) -> tuple[int, int]:
    """(file number, offset) of a cursor of `instance`; (-1, 0) for another's or none.
    A cursor of before rotation ('<id>:<offset>') is one into file 0."""
    parts = (cursor or "").split(":")
    if parts[0] != instance or not all(p.isdigit() for p in parts[1:]):
        return -1, 0
    if len(parts) == 2:
        return 0, int(parts[1])
    if len(parts) == 3:
        return int(parts[1]), int(parts[2])
    return -1, 0


def _log_line(raw: bytes, cursor: str) -> LogLine:
    stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
    return LogLine(cursor=cursor, timestamp=stamp[:19] + "Z", text=text.rstrip("\r"))


def _key(handle: dict[str, Any]) -> InstanceKey:
    return InstanceKey(handle["app"], handle["process"], handle["release"])


def _start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks after boot); None if it is gone."""
    text = _read_text(Path(f"/proc/{pid}/stat"))
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": the comm may hold spaces
    return None if fields[0] == "Z" else int(fields[19])


def _alive(handle: dict[str, Any]) -> bool:
    start = _start_time(handle["pid"])
    return start is not None and start == handle.get("pid_start")


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _feed(pipe: Any, stdin: Callable[[], bytes]) -> None:
    try:
        while data := stdin():
            pipe.write(data)
            pipe.flush()
        pipe.close()
    except OSError:
        pass  # the command ended first


def _read_json(path: Path) -> dict[str, Any] | None:
    text = _read_text(path)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
