"""The process runtime: instances as plain child processes, for nodes without Docker.

Each instance runs in its own session (so it outlives the daemon) under a small
python shim, itself the session leader, that:
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
in a file (`<process>.launch`, read and removed at once) and goes to the app
alone. Where bubblewrap works, the app runs in its sandbox (`runtime.sandbox`):
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
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime import lease, sandbox
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

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
POLL = 0.2  # seconds between looks at a growing log or a dying process group
_ROOT = str(Path(__file__).resolve().parents[2])  # makes `swarm` importable for the shim
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
        lease_dir = str(self.lease_dir.resolve()) if self.lease_dir else ""
        what = {
            "sandbox": [self.sandbox.bwrap, self.sandbox.uid] if self.sandbox else None,
            "argv": ["sh", "-c", shell_script(spec.command)],  # see `shell_script`
            "env": self._env(spec, port),
            "cwd": str(spec.slug.resolve()),
            "limits": self._limits(spec).__dict__,
        }
        _write_private(files["launch"], json.dumps(what))
        argv = [sys.executable, "-I", "-c", SHIM, _ROOT, str(files["log"]), str(files["exit"])]
        argv += [lease_dir, spec.process, str(files["launch"]), str(self.log_bytes)]
        try:
            child = subprocess.Popen(
                argv,
                cwd="/",
                env=dict(sandbox.CLEAN_ENV),  # the app's own reaches the app alone
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise RuntimeFailure(f"could not start {spec.key}: {e}") from None
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
        out = []
        for path in sorted(self.run_dir.glob("*/*.json")):
            handle = _read_json(path)
            if handle and handle.get("node") == self.node:
                out.append(self._status(handle))
        return out

    def logs(self, key: InstanceKey, follow: bool, cursor: str | None) -> Iterator[LogLine]:
        """The instance's log files, oldest first. The cursor is '<instance id>:<file
        number>:<byte offset>', so it survives a rotation, and a cursor of an earlier
        instance of the same process starts the new one from its oldest file."""
        handle = self._handle(key)
        if handle is None:
            return
        base = self._files(key)["log"]
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
                while True:
                    # Whatever the shim wrote here came before it opened the next file
                    # or before the instance ended: look first, then read once more.
                    rotated = _log_file(base, number + 1).exists()
                    gone = not follow or not self._is_current(handle)
                    pending += log.read()
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        start += len(raw) + 1
                        yield _log_line(raw, f"{handle['id']}:{number}:{start}")
                    if rotated:
                        break
                    if gone:
                        return
                    if not lines:
                        time.sleep(POLL)
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
            "launch": d / f"{name}.launch",
        }

    def _handle(self, key: InstanceKey) -> dict[str, Any] | None:
        return _read_json(self._files(key)["handle"])

    def _is_current(self, handle: dict[str, Any]) -> bool:
        """The instance of `handle` still runs and was not replaced."""
        self._reap()
        now = self._handle(_key(handle))
        return bool(now and now["id"] == handle["id"] and _alive(now))

    def _forget(self, key: InstanceKey) -> None:
        for what, path in self._files(key).items():
            if what == "log":
                for number in _log_numbers(path):
                    _log_file(path, number).unlink(missing_ok=True)
            elif what != "dir":
                path.unlink(missing_ok=True)

    def _status(self, handle: dict[str, Any]) -> InstanceStatus:
        running = _alive(handle)
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


# The shim (see the module docstring). argv: root log exit_file lease_dir process
# launch_file log_bytes. It survives the SIGTERM sent to the group, which reaches
# the app itself: the shim must outlive the app to record its exit code.
SHIM = """
import sys
sys.path.insert(0, sys.argv[1])
from peoplescloud.runtime.process import shim_main
shim_main(*sys.argv[2:7], int(sys.argv[7]))
"""


def shim_main(
    log_base: str, exit_path: str, lease_dir: str, process: str, launch_file: str, log_bytes: int
) -> None:
    """Run what `launch_file` says while the lease in `lease_dir` ("": none) holds,
    timestamp its output into the log files of `log_base` (rotated at `log_bytes`),
    write its exit code (LEASE_EXIT if the lease ended it) to `exit_path`."""
    lease.ignore_stop_signals()
    what = json.loads(Path(launch_file).read_text())
    os.unlink(launch_file)  # it holds the app's config vars
    limits = sandbox.Limits(**what["limits"])
    cwd = what["cwd"]
    if what["sandbox"]:
        box = sandbox.Sandbox(*what["sandbox"])
        launch = box.launch(what["argv"], what["env"], Path(cwd), limits, [Path(cwd)])
    else:
        launch = sandbox.plain(what["argv"], what["env"], limits)
    log = RotatingLog(Path(log_base), log_bytes)
    try:
        until = lease.passed(lease_dir)
        if until is None:
            child = subprocess.Popen(
                launch.argv,
                cwd=cwd,
                env=launch.env,
                pass_fds=launch.fds,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            launch.close()
            pump = threading.Thread(target=_pump, args=(child.stdout, log))
            pump.start()
            until = lease.guard(lease_dir, child)
            pump.join()
            code = lease.exit_status(child.returncode)
        if until is not None:
            log.write(lease.expiry_message(until, process).encode())
            code = lease.LEASE_EXIT
    finally:
        log.close()
    tmp = exit_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(code))
    os.replace(tmp, exit_path)


class RotatingLog:
    """`<base>.<n>.log`, a timestamp before each line. Past `limit` bytes it goes on in
    `<n+1>` and removes `<n-1>`: one old file is kept, so the log stays under about
    twice the limit. It opens the next file only after its last write to this one,
    which is what lets a reader finish a file once it sees the next."""

    def __init__(self, base: Path, limit: int) -> None:
        self.base, self.limit = base, limit
        self.number = max(_log_numbers(base), default=0)
        self._file = open(_log_file(base, self.number), "ab", buffering=0)  # noqa: SIM115

    def write(self, line: bytes) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        self._file.write(stamp + b" " + line + b"\n")
        if self._file.tell() >= self.limit:
            self._file.close()
            self.number += 1
            self._file = open(_log_file(self.base, self.number), "ab", buffering=0)  # noqa: SIM115
            _log_file(self.base, self.number - 2).unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()


def _pump(out: Any, log: RotatingLog) -> None:
    """Copy the app's output into the log, line by line."""
    for line in iter(lambda: out.readline(65536), b""):
        log.write(line.rstrip(b"\n"))


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


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


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
