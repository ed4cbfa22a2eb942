"""Drive real nodes the way a user does: `pc init` and `pc daemon` in
subprocesses, each node with its own home and ports on loopback, reached with
the system `git` and `ssh` clients.

The benchmarks use this, and so do the tests (tests/conftest.py imports it and
wraps it in pytest fixtures): one copy, no pytest here.

    key = keygen(tmp / "id_ed25519")
    node = init_node(tmp, key, "process")   # `pc init` with free ports
    node.start()                            # `pc daemon`, waits until it listens
    work = make_repo(tmp, "python-bot")     # a committed copy of tests/apps/python-bot
    node.git(work, "push", node.remote("bot"), "main")
    node.stop()
    cleanup_instances(node.home, node.runtime)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarm.ipfs.kubo import Kubo

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "tests" / "apps"  # the sample apps (data, not code)


def free_port() -> int:
    """A TCP port free on loopback right now: the OS picks it, or, with
    PC_BENCH_PORTS=LOW-HIGH, the next free one in that range (several people
    running benchmarks on one machine keep to ranges of their own)."""
    span = os.environ.get("PC_BENCH_PORTS", "")
    low, _, high = span.partition("-")
    ports = range(int(low), int(high) + 1) if span else [0]
    for port in ports:
        if span and port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _given.add(s.getsockname()[1])
            return s.getsockname()[1]
    raise SystemExit(f"no free port left in PC_BENCH_PORTS={span}")


_given: set[int] = set()  # handed out already (a node may not listen on them yet)


def keygen(path: Path) -> Path:
    """A new ed25519 key pair at `path` (private) and `path`.pub; returns `path`."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def wait_for(predicate, what: str = "condition", timeout: float = 60, interval: float = 0.3):
    """Poll until `predicate()` is truthy; return its value. Not a timing assertion:
    the timeout only bounds how long a broken build hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class NodeProc:
    """A node home plus its daemon process, and the user's git and ssh."""

    home: Path
    name: str
    ssh_port: int
    router_port: int
    key: Path
    runtime: str
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)
    peer_port: int = 0
    raft_port: int = 0

    def __post_init__(self) -> None:
        self.log = self.home / "daemon.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PC_HOME": str(self.home)}

    def pc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "peoplescloud.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "peoplescloud.cli", "daemon"],
            env=self.env,
            stdout=open(self.log, "a"),  # noqa: SIM115 - the daemon owns it
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"daemon did not listen:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    @property
    def ssh_command(self) -> str:
        return (
            f"ssh -i {self.key} -p {self.ssh_port} -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )

    def ssh(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
        """`ssh -p PORT pc@127.0.0.1 ARGS...` with the system client."""
        return subprocess.run(
            [*self.ssh_command.split(), "pc@127.0.0.1", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def git(self, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "GIT_SSH_COMMAND": self.ssh_command,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.org",
        }
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    def remote(self, app: str) -> str:
        return f"ssh://pc@127.0.0.1:{self.ssh_port}/{app}"

    def kubo_pids(self) -> list[int]:
        """The kubo daemons of this node (found by their repo)."""
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"IPFS_PATH={self.home / 'ipfs'}".encode() in environ.read_bytes().split(b"\0"):
                    pids.append(int(environ.parent.name))
            except OSError:
                continue
        return pids

    def dashboard_pids(self) -> list[int]:
        """The node's gunicorn master (its workers end with it)."""
        try:
            pid = int((self.home / "run" / "dashboard.pid").read_text().strip())
            alive = b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return []
        return [pid] if alive else []

    def front_pids(self) -> list[int]:
        """The node's nginx front: its master, then its workers."""
        try:
            pid = int((self.home / "run" / "front" / "nginx.pid").read_text().strip())
            alive = b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes()
            workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (OSError, ValueError):
            return []
        return [pid, *map(int, workers)] if alive else []

    def kill(self) -> None:
        """The machine dies: its daemon, its kubo, its dashboard, its nginx front and its
        containers, at once."""
        import docker

        for pid in [self.proc.pid] if self.proc else []:
            os.kill(pid, signal.SIGKILL)
        for pid in [*self.kubo_pids(), *self.dashboard_pids(), *self.front_pids()]:
            os.kill(pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()
            self.proc = None
        client = docker.from_env()
        for c in client.containers.list(
            all=True, filters={"label": f"peoplescloud.node={self.name}"}
        ):
            c.remove(force=True)

    def signal_all(self, sig: int) -> None:
        """SIGSTOP / SIGCONT the daemon and its kubo (a frozen machine)."""
        assert self.proc is not None
        for pid in [self.proc.pid, *self.kubo_pids(), *self.front_pids()]:
            os.kill(pid, sig)


def make_repo(tmp: Path, sample: str) -> Path:
    """A git work tree holding a copy of tests/apps/<sample>, committed on main."""
    work = tmp / f"{sample}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(APPS / sample, work)
    run = lambda *a: subprocess.run(["git", *a], cwd=work, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    run("-c", "user.name=t", "-c", "user.email=t@example.org", "add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "first")
    return work


def commit_all(work: Path, message: str) -> None:
    for args in (["add", "-A"], ["commit", "-qm", message]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=work,
            check=True,
            capture_output=True,
        )


def cleanup_instances(home: Path, runtime: str) -> None:
    """Stop whatever the node left running: tests and benchmarks own their instances."""
    from peoplescloud.dashboard_process import pidfile, stop_leftover
    from peoplescloud.runtime.select import open_runtime
    from peoplescloud.settings import load

    settings = load(home, runtime=runtime)
    stop_leftover(pidfile(settings))  # the dashboard of a daemon that was killed
    rt = open_runtime(settings, lambda _msg: None)
    for s in rt.status():
        rt.stop(s.key, timeout=2)
    from peoplescloud.runtime import firewall
    from peoplescloud.runtime.docker import DockerRuntime

    if isinstance(rt, DockerRuntime):  # its network, and the rules its daemon made
        rt.sweep_network()
        if firewall.missing() is None:
            firewall.remove(settings.name)


def init_node(root: Path, key: Path, runtime: str) -> NodeProc:
    """`pc init` a node with free ports on loopback under `root` (not started)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    node = NodeProc(
        home=root / name,
        name=name,
        ssh_port=free_port(),
        router_port=free_port(),
        key=key,
        runtime=runtime,
        peer_port=free_port(),
        raft_port=free_port(),
    )
    node.pc(
        "init",
        "--name", name,
        "--admin-key", f"{key}.pub",
        "--ssh-port", str(node.ssh_port),
        "--router-port", str(node.router_port),
        "--dashboard-port", str(free_port()),
        "--runtime", runtime,
        "--listen", "127.0.0.1",
        "--peer-port", str(node.peer_port),
        "--raft-port", str(node.raft_port),
        "--ipfs-api-port", str(free_port()),
        "--ipfs-swarm-port", str(free_port()),
    )  # fmt: skip
    return node


def new_kubo(
    repo: Path, swarm_key: str, peers: Sequence[str] = (), binary: Path | None = None
) -> Kubo:
    """An initialised, started kubo on loopback with ports of its own (`binary`:
    the kubo to run, found as the node finds it when None)."""
    from swarm.ipfs.kubo import Kubo

    kubo = Kubo(repo, swarm_key, free_port(), free_port(), peers=peers, binary=binary)
    kubo.init()
    kubo.start()
    return kubo


@contextmanager
def bot_swarm(root: Path, key: Path, swarm: str, app: str) -> Iterator[list[NodeProc]]:
    """Three docker nodes in a swarm named `swarm`, the sample python bot pushed
    to the first as `app`; afterwards every node, kubo and container is gone."""
    nodes = [init_node(root, key, "docker") for _ in range(3)]
    try:
        first = nodes[0]
        first.pc("swarm", "create", "--name", swarm)
        first.start()
        for node in nodes[1:]:
            token = first.pc("swarm", "invite").stdout.strip().splitlines()[-1]
            node.pc("swarm", "join", token)
            node.start()
        up = lambda: first.pc("swarm", "status").stdout.count(" up ") == 3  # noqa: E731
        wait_for(up, "three members up", timeout=120, interval=0.2)
        work = make_repo(root, "python-bot")
        r = first.git(work, "push", first.remote(app), "main")
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        yield nodes
    finally:
        for n in nodes:
            n.stop()
            for pid in n.kubo_pids():
                os.kill(pid, signal.SIGKILL)
            cleanup_instances(n.home, n.runtime)


def runs_on(node: NodeProc, app: str) -> str | None:
    """The node `app`'s bot.1 is up on, as `ps` on `node` says."""
    for line in node.ssh("ps", app).stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["bot.1", "up"]:
            return fields[3]
    return None
