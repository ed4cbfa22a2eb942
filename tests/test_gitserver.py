"""The SSH server for real: asyncssh on 127.0.0.1 port 0 with a generated host key,
driven by the system `git` and `ssh` clients; the node is a fake whose deploy says
a few lines and fails for a commit whose tree holds a file named FAIL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dulwich.repo import Repo

from gitserver.git import app_from_path
from gitserver.server import start_server
from gitserver.service import AppRow
from peoplescloud.errors import ConfigError, NotFound, PCError
from tests.conftest import keygen, wait_for

MAX_PUSH = 256 * 1024
MAX_UNPACKED = 8 * 1024 * 1024


@dataclass
class FakeNode:
    """A NodeService with one user, "alice", and repos under `root`."""

    root: Path
    alice_key: str
    node_name: str = "testnode"
    deployed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # apps whose push session ended
    refused: list[str] = field(default_factory=list)  # keys of refused logins

    def user_for_key(self, openssh_public_key: str) -> str | None:
        return "alice" if openssh_public_key.split()[:2] == self.alice_key.split()[:2] else None

    def repo_for(self, user: str, app: str, write: bool) -> Path:
        if not app.isalnum():
            raise ConfigError(f"invalid app name {app!r}")
        path = self.root / f"{app}.git"
        if not path.exists():
            if not write:
                raise NotFound(f"no app named {app!r}")
            Repo.init_bare(str(path), mkdir=True)
        return path

    def deploy(self, user: str, app: str, commit: str, say: Callable[[str], None]) -> str:
        say("-----> Building " + commit[:7])
        time.sleep(0.2)
        say("-----> Still building")
        time.sleep(0.2)
        with Repo(str(self.repo_for(user, app, write=False))) as repo:
            names = [entry.path for entry in repo[repo[commit.encode()].tree].items()]
        if b"FAIL" in names:
            raise PCError("build failed: the tree holds FAIL")
        self.deployed.append(commit)
        say(f"-----> Release v{len(self.deployed)} running")
        return f"v{len(self.deployed)}"

    def refused_login(self, openssh_public_key: str) -> None:
        self.refused.append(openssh_public_key)

    def push_ended(self, user: str, app: str) -> None:
        self.ended.append(app)

    def apps(self, user: str) -> list[AppRow]:
        return [AppRow("mybot", "alice", "v1", "running", "bot=1")]

    async def logs(
        self, user: str, app: str, lines: int, ptype: str | None, follow: bool
    ) -> AsyncIterator[str]:
        yield "2026-11-23T21:00:03Z app[bot.1]: hello"


class ServerThread:
    """The asyncssh server on an event loop of its own thread, so the system
    clients that the test runs (blocking) can talk to it."""

    def __init__(self, node: FakeNode, host_key: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = start_server(
            node,
            "127.0.0.1",
            0,
            host_key,
            max_push_bytes=MAX_PUSH,
            max_unpacked_bytes=MAX_UNPACKED,
        )
        self.acceptor = asyncio.run_coroutine_threadsafe(start, self.loop).result(30)
        self.port = self.acceptor.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            self.acceptor.close()
            await self.acceptor.wait_closed()

        done: Future = asyncio.run_coroutine_threadsafe(stop(), self.loop)
        done.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@dataclass
class Client:
    """The user's `ssh` and `git`, pointed at the test server."""

    port: int
    key: Path

    @property
    def ssh_command(self) -> str:
        return (
            f"ssh -i {self.key} -p {self.port} -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )

    def ssh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_command.split(), "pc@127.0.0.1", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def git(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GIT_SSH_COMMAND": self.ssh_command, "LC_ALL": "C"}
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )

    def remote(self, app: str) -> str:
        return f"ssh://pc@127.0.0.1:{self.port}/{app}"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeNode, Client]]:
    key = keygen(tmp_path / "alice")
    node = FakeNode(tmp_path / "repos", (tmp_path / "alice.pub").read_text())
    node.root.mkdir()
    server = ServerThread(node, tmp_path / "host" / "ssh_host_ed25519_key")
    try:
        yield node, Client(server.port, key)
    finally:
        server.close()


def work_tree(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    """A git work tree with `files` committed on main."""
    work = tmp_path / "work"
    work.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=work, check=True)
    commit(work, files)
    return work


def commit(work: Path, files: dict[str, str | bytes]) -> str:
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (work / name).write_bytes(data)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "change"], cwd=work, check=True)
    return head(work)


def head(work: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True)
    return out.stdout.strip()


def server_ref(node: FakeNode, app: str, ref: bytes) -> str | None:
    with Repo(str(node.root / f"{app}.git")) as repo:
        refs = repo.get_refs()
        return refs[ref].decode() if ref in refs else None


def test_host_key_is_generated_private(setup, tmp_path: Path):
    key = tmp_path / "host" / "ssh_host_ed25519_key"
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600


def test_push_to_main_deploys_and_streams_its_output(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "print('hi')\n"})
    r = client.git(work, "push", client.remote("mybot"), "main")
    assert r.returncode == 0, r.stderr
    assert "remote: -----> Building" in r.stderr
    assert "remote: -----> Still building" in r.stderr
    assert "remote: -----> Release v1 running" in r.stderr
    assert node.deployed == [head(work)]
    assert server_ref(node, "mybot", b"refs/heads/main") == head(work)

    # The second push deploys too, and the ref follows.
    commit(work, {"bot.py": "print('hi again')\n"})
    r = client.git(work, "push", client.remote("mybot"), "main")
    assert r.returncode == 0, r.stderr
    assert "Release v2 running" in r.stderr
    assert server_ref(node, "mybot", b"refs/heads/main") == head(work)


def test_output_reaches_the_pusher_while_the_deploy_runs(setup, tmp_path: Path):
    """The first line shows while the deploy still runs; meanwhile a second push to
    the same app is turned away."""
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    release = threading.Event()
    original = node.deploy

    def held_deploy(user: str, app: str, commit: str, say: Callable[[str], None]) -> str:
        say("-----> first line")
        release.wait(60)  # held until the pusher has shown the first line
        return original(user, app, commit, say)

    node.deploy = held_deploy  # type: ignore[method-assign]
    env = {**os.environ, "GIT_SSH_COMMAND": client.ssh_command, "LC_ALL": "C"}
    pusher = subprocess.Popen(
        ["git", "push", client.remote("mybot"), "main"],
        cwd=work,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pusher.stderr is not None
        for line in pusher.stderr:
            if "remote: -----> first line" in line:
                break
        second = client.git(work, "push", client.remote("mybot"), "main")
    finally:
        release.set()
    assert second.returncode != 0 and "another push to mybot is under way" in second.stderr
    rest = pusher.stderr.read()
    pusher.stderr.close()
    assert pusher.wait(60) == 0, rest
    assert "Release v1 running" in rest
    assert node.deployed == [head(work)]


def test_failed_deploy_fails_the_push_and_keeps_the_ref(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "ok\n"})
    assert client.git(work, "push", client.remote("mybot"), "main").returncode == 0
    good = head(work)

    commit(work, {"FAIL": "boom\n"})
    r = client.git(work, "push", client.remote("mybot"), "main")
    assert r.returncode != 0
    assert "remote: -----> Building" in r.stderr  # the output came before the refusal
    assert "build failed: the tree holds FAIL" in r.stderr
    assert "[remote rejected]" in r.stderr
    assert server_ref(node, "mybot", b"refs/heads/main") == good
    assert node.deployed == [good]


def test_first_push_failing_creates_no_branch(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"FAIL": "x\n"})
    r = client.git(work, "push", client.remote("mybot"), "main")
    assert r.returncode != 0 and "build failed" in r.stderr
    assert client.git(work, "ls-remote", client.remote("mybot")).stdout.strip() == ""


def test_push_to_another_branch_is_stored_not_deployed(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    assert client.git(work, "push", client.remote("mybot"), "main").returncode == 0
    deployed = head(work)
    commit(work, {"FAIL": "not built\n"})
    r = client.git(work, "push", client.remote("mybot"), "main:feature")
    assert r.returncode == 0, r.stderr
    assert "stored" in r.stderr.lower() and "not deployed" in r.stderr
    assert node.deployed == [deployed]
    assert server_ref(node, "mybot", b"refs/heads/feature") == head(work)
    assert server_ref(node, "mybot", b"refs/heads/main") == deployed


def test_first_push_to_another_branch_is_refused(setup, tmp_path: Path):
    """A new app exists once it deploys: a first push of another branch cannot
    create it (nor hold one of the node's app slots), and the session ends."""
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    r = client.git(work, "push", client.remote("newbot"), "main:feature")
    assert r.returncode != 0
    assert "push main first: newbot has no deployed branch yet" in r.stderr
    assert server_ref(node, "newbot", b"refs/heads/feature") is None
    assert node.deployed == [] and node.ended == ["newbot"]


def test_deleting_main_is_refused(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    assert client.git(work, "push", client.remote("mybot"), "main").returncode == 0
    r = client.git(work, "push", client.remote("mybot"), ":main")
    assert r.returncode != 0 and "cannot be deleted" in r.stderr
    assert server_ref(node, "mybot", b"refs/heads/main") == head(work)


def test_oversized_push_is_refused_and_leaves_the_repo_unchanged(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    assert client.git(work, "push", client.remote("mybot"), "main").returncode == 0
    good = head(work)
    objects = node.root / "mybot.git" / "objects"
    before = sorted(p.relative_to(objects) for p in objects.rglob("*"))

    commit(
        work, {"big.bin": os.urandom(16 * MAX_PUSH)}
    )  # random: no compression; more than an SSH window
    r = client.git(work, "push", client.remote("mybot"), "main")
    assert r.returncode != 0
    assert "larger than this node's limit" in r.stderr
    assert server_ref(node, "mybot", b"refs/heads/main") == good
    assert sorted(p.relative_to(objects) for p in objects.rglob("*")) == before
    assert node.deployed == [good]


def test_compressible_push_is_refused_by_what_it_unpacks_to(setup, tmp_path: Path):
    """A few KB of pack holding 64 MB of zeros: refused while it arrives (before
    dulwich inflates it), the ref and the objects as they were, nothing built."""
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    assert client.git(work, "push", client.remote("mybot"), "main").returncode == 0
    good = head(work)
    objects = node.root / "mybot.git" / "objects"
    before = sorted(p.relative_to(objects) for p in objects.rglob("*"))

    commit(work, {"zeros.bin": bytes(8 * MAX_UNPACKED)})
    r = client.git(work, "push", client.remote("mybot"), "main")
    assert r.returncode != 0
    assert "unpack to more than 8 MB" in r.stderr and "max_tree_mb" in r.stderr
    assert server_ref(node, "mybot", b"refs/heads/main") == good
    assert sorted(p.relative_to(objects) for p in objects.rglob("*")) == before
    assert node.deployed == [good]

    # Under the limit, such a file goes through.
    work2 = tmp_path / "second"
    work2.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=work2, check=True)
    commit(work2, {"zeros.bin": bytes(MAX_UNPACKED // 2)})
    r = client.git(work2, "push", client.remote("other"), "main")
    assert r.returncode == 0, r.stderr


def test_clone_gets_what_was_pushed(setup, tmp_path: Path):
    node, client = setup
    work = work_tree(tmp_path, {"bot.py": "print('hi')\n"})
    assert client.git(work, "push", client.remote("mybot"), "main").returncode == 0
    r = client.git(tmp_path, "clone", client.remote("mybot"), "copy")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "copy" / "bot.py").read_text() == "print('hi')\n"
    assert head(tmp_path / "copy") == head(work)


def test_refusals_from_the_node_reach_git(setup, tmp_path: Path):
    node, client = setup
    r = client.git(tmp_path, "clone", client.remote("nosuchapp"), "x")
    assert r.returncode != 0 and "no app named 'nosuchapp'" in r.stderr
    work = work_tree(tmp_path, {"bot.py": "x\n"})
    r = client.git(work, "push", client.remote("Bad_Name"), "main")
    assert r.returncode != 0 and "invalid app name" in r.stderr


def test_unknown_key_is_refused(setup, tmp_path: Path):
    node, client = setup
    stranger = Client(client.port, keygen(tmp_path / "stranger"))
    r = stranger.ssh("apps")
    assert r.returncode == 255 and "Permission denied" in r.stderr
    stranger_key = (tmp_path / "stranger.pub").read_text().split()[:2]
    wait_for(  # for the audit trail, once the connection is gone
        lambda: [k.split()[:2] for k in node.refused] == [stranger_key], what="refused login"
    )
    # A client that offers an unknown key first, then its own, logs in: not refused.
    both = subprocess.run(
        [*stranger.ssh_command.split(), "-i", str(client.key), "pc@127.0.0.1", "apps"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 0, both.stderr
    time.sleep(0.5)
    assert len(node.refused) == 1


def test_commands_over_ssh(setup):
    node, client = setup
    r = client.ssh("apps")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[1].split() == ["mybot", "alice", "-", "v1", "running", "bot=1"]

    r = client.ssh("frobnicate")
    assert r.returncode == 2 and "help" in r.stderr

    r = client.ssh("logs")
    assert r.returncode == 2 and "usage: logs APP" in r.stderr

    r = client.ssh("logs", "mybot")
    assert r.returncode == 0 and "app[bot.1]: hello" in r.stdout


def test_a_shell_is_refused_with_a_hint(setup):
    node, client = setup
    r = subprocess.run(
        [*client.ssh_command.split(), "-T", "pc@127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1 and "help" in r.stderr


@pytest.mark.parametrize("path", ["/mybot", "mybot", "/mybot.git", "mybot.git/", "/mybot/"])
def test_app_from_the_path_git_sends(path: str):
    assert app_from_path(path) == "mybot"


def test_a_git_client_that_takes_nothing_is_treated_as_gone(monkeypatch: pytest.MonkeyPatch):
    """A pusher that stops reading must not hold its push (and the app) open.
    (A unit test of ChannelIO with a channel that never drains.)"""
    from gitserver import server

    monkeypatch.setattr(server, "WRITE_TIMEOUT", 0.2)

    class Stuck:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            await asyncio.Event().wait()  # the client's window never opens again

    class Process:
        stdout = Stuck()

        def get_terminal_type(self) -> None:
            return None  # no pty asked for

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        io = server.ChannelIO(Process(), loop)  # type: ignore[arg-type]
        with pytest.raises(ConnectionError, match="took nothing for 0.2 s"):
            io.write_blocking(b"remote: -----> building\n")
    finally:
        loop.call_soon_threadsafe(loop.stop)
