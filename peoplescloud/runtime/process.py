"""The process runtime: instances as plain child processes, for nodes without Docker.

Each instance runs in its own session (so it outlives the daemon) under a small
python shim, itself the session leader, that:
  - timestamps every line of the app's stdout+stderr into `<process>.log`, so
    logs carry the time they were written, like docker's;
  - waits for the app and writes its exit code to `<process>.exit`. The daemon
    is not the parent of an instance it re-adopted after a restart, so it cannot
    `wait()` for it; the exit file is how it still learns the code;
  - ends the app once the node's lease passes (`peoplescloud.runtime.lease`).
A handle file `<process>.json` (pid and kernel start time of the shim, to tell
a reused pid apart, release, port, ...) is what `status()` re-adopts. Where
`bwrap` works, the app runs in a bubblewrap sandbox: a read-only view of the
host, the node's own files hidden, a private /tmp and pid namespace, network kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
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
from peoplescloud.runtime import lease
from peoplescloud.runtime.base import (
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    LogLine,
    on_set,
    search_path,
)

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
POLL = 0.2  # seconds between looks at a growing log or a dying process group
SH_PREFIX = "trap : TERM INT HUP; "  # sh waits for the app on SIGTERM (see docker.py)
_ROOT = str(Path(__file__).resolve().parents[2])  # makes `swarm` importable for the shim

ENGINE_SOCKETS = ("/run/docker.sock", "/run/containerd/containerd.sock")


class ProcessRuntime:
    """Instances as process groups of this host, for node `node`; state under `run_dir`."""

    name = "process"

    def __init__(
        self,
        run_dir: Path,
        node: str,
        hidden: tuple[Path, ...] = (),
        lease_dir: Path | None = None,
    ) -> None:
        """`hidden`: host directories the sandbox hides from apps (the node's home).
        `lease_dir`: where the daemon keeps the node's lease (None: never enforced)."""
        self.run_dir = Path(run_dir)
        self.node = node
        self.lease_dir = lease_dir
        self.hidden = (self.run_dir, *hidden)
        self.bwrap = shutil.which("bwrap") if _bwrap_works() else None
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # to reap what we started

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        files = self._files(spec.key)
        for path in files["dir"].glob(f"{spec.process}@*.json"):  # this slot, any release
            handle = _read_json(path)
            if handle is None or _alive(handle):
                if handle is not None and handle["release"] == spec.release:
                    raise RuntimeFailure(f"{spec.key} is already running")
                continue
            self._forget(_key(handle))  # exited, of this release or an older one
        files["dir"].mkdir(parents=True, exist_ok=True)
        files["log"].write_bytes(b"")  # exists from now on: logs() may follow it at once
        port = _free_port() if spec.web else None
        lease_dir = str(self.lease_dir.resolve()) if self.lease_dir else ""
        argv = [sys.executable, "-I", "-c", SHIM, _ROOT, str(files["log"]), str(files["exit"])]
        argv += [lease_dir, spec.process]
        argv += self._sandboxed(spec, ["sh", "-c", SH_PREFIX + spec.command])
        try:
            child = subprocess.Popen(
                argv,
                cwd=spec.slug,
                env=self._env(spec, port),
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
        """The instance's log file; the cursor is '<instance id>:<byte offset>', so a
        cursor of an earlier instance of the same process starts the new one from 0."""
        handle = self._handle(key)
        if handle is None:
            return
        instance, _, offset = (cursor or "").partition(":")
        start = int(offset) if instance == handle["id"] and offset.isdigit() else 0
        try:
            log = open(self._files(key)["log"], "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return
        with log:
            log.seek(start)
            pending = b""
            while True:
                gone = not follow or not self._is_current(handle)  # read once more after
                pending += log.read()
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    start += len(raw) + 1
                    yield _log_line(raw, f"{handle['id']}:{start}")
                if gone:
                    return
                if not lines:
                    time.sleep(POLL)

    def run(
        self,
        spec: InstanceSpec,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        try:
            child = subprocess.Popen(
                self._sandboxed(spec, argv, one_off=True),
                cwd=spec.slug,
                env=self._env(spec, None),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: `cancel` ends all it started
            )
        except OSError as e:
            raise RuntimeFailure(f"could not run {argv[:1]} for {spec.app}: {e}") from None
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
            "log": d / f"{name}.log",
            "exit": d / f"{name}.exit",
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
            if what != "dir":
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
            detail=f"pid {handle['pid']}" + (" (bwrap)" if self.bwrap else ""),
        )

    def _env(self, spec: InstanceSpec, port: int | None) -> dict[str, str]:
        """A clean environment: the daemon's own variables never reach apps."""
        path = search_path(spec.slug.resolve(), spec.path, SYSTEM_PATH)
        return {"LANG": "C.UTF-8", **spec.environment(port), "PATH": path}

    def _sandboxed(self, spec: InstanceSpec, argv: list[str], one_off: bool = False) -> list[str]:
        if not self.bwrap:
            return argv
        slug = str(spec.slug.resolve())
        box = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        box += ["--tmpfs", "/tmp"]
        for path in self.hidden:
            box += ["--tmpfs", str(Path(path).resolve())]
        # A container engine's socket is root on the host: cover it with /dev/null.
        for sock in ENGINE_SOCKETS:
            if Path(sock).exists():
                box += ["--ro-bind", "/dev/null", str(Path(sock).resolve())]
        box += ["--ro-bind", slug, slug, "--chdir", slug]
        # An instance outlives the daemon, and the group's SIGTERM ends bwrap's
        # outer process too while the app must live on to finish its shutdown: no
        # --die-with-parent. A one-off `run` ends with the daemon that reads it.
        box += ["--die-with-parent"] if one_off else []
        box += ["--unshare-ipc", "--unshare-pid", "--"]
        return box + argv

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(pid, None)  # pumps' threads reap too

    def _group_alive(self, pgid: int) -> bool:
        """Whether a live (not zombie) process is left in the group. A zombie is
        dead: one re-parented to init can wait a second or more to be reaped."""
        self._reap()
        return bool(lease.group_members(pgid))


# The shim (see the module docstring). argv: root log exit_file lease_dir process cmd...
# It survives the SIGTERM sent to the group, which reaches the app itself: the
# shim must outlive the app to record its exit code.
SHIM = """
import sys
sys.path.insert(0, sys.argv[1])
from peoplescloud.runtime.process import shim_main
shim_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
"""


def shim_main(log_path: str, exit_path: str, lease_dir: str, process: str, argv: list[str]) -> None:
    """Run `argv` while the lease in `lease_dir` ("": none) holds, timestamp its output
    into `log_path`, write its exit code (LEASE_EXIT if the lease ended it) to `exit_path`."""
    lease.ignore_stop_signals()
    with open(log_path, "ab", buffering=0) as log:
        until = lease.passed(lease_dir)
        if until is None:
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            pump = threading.Thread(target=_pump, args=(child.stdout, log))
            pump.start()
            until = lease.guard(lease_dir, child)
            pump.join()
            code = lease.exit_status(child.returncode)
        if until is not None:
            _stamp(log, lease.expiry_message(until, process).encode())
            code = lease.LEASE_EXIT
    tmp = exit_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(code))
    os.replace(tmp, exit_path)


def _pump(out: Any, log: Any) -> None:
    """Copy the app's output into the log, a timestamp before each line."""
    for line in iter(lambda: out.readline(65536), b""):
        _stamp(log, line.rstrip(b"\n"))


def _stamp(log: Any, line: bytes) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
    log.write(stamp + b" " + line + b"\n")


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


def _bwrap_works() -> bool:
    """bwrap is installed and may make namespaces here (some kernels forbid it)."""
    if not shutil.which("bwrap"):
        return False
    probe = ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


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
