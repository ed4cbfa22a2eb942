"""Bounds on what one user can make the node do, and secrets at rest: each test
fails when its protection is removed. Unit tests on a real Node (real state,
store, reconciler and deployer; an in-memory runtime) and real small servers."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

import gitserver.commands.logs
import peoplescloud.deploy
from builder import BuildError, HostExecutor, checkout
from gitserver.commands import dispatch
from peoplescloud.deploy import Deployer
from peoplescloud.desired import within_limit
from peoplescloud.errors import PCError, UsageError
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceSpec
from peoplescloud.service import Node
from peoplescloud.settings import BuildSettings, Settings, Shares
from peoplescloud.state import App, State, User
from peoplescloud.store import LocalStore
from tests.fakes import FakeBus, FakeCluster, FakeRuntime, release
from tests.test_builder import FILE, make_repo
from tests.test_commands import FakeChannel
from tests.test_commands import FakeNode as FakeCommandNode

# --- a Node with small limits -------------------------------------------------------


class BlockingRuntime(FakeRuntime):
    """`run` blocks until `release` is set (a one-off that takes its time)."""

    def __init__(self) -> None:
        super().__init__()
        self.running = threading.Semaphore(0)
        self.release = threading.Event()

    def run(
        self, spec: InstanceSpec, argv: list[str], output: Callable, stdin, cancel, terminal=None
    ) -> int:
        self.running.release()
        self.release.wait(30)
        return 0


def make_node(tmp_path: Path, **limits: int) -> Node:
    """Apps "annbot" (deployed, bot=1) and "bobbot" (deployed, bot=1)."""
    build = {k: v for k, v in limits.items() if k in BuildSettings.__dataclass_fields__}
    shares = {k: v for k, v in limits.items() if k in Shares.__dataclass_fields__}
    settings = Settings(
        home=tmp_path, name="n1", build=BuildSettings(**build), shares=Shares(**shares)
    )
    state = State(settings.state_file)
    store = LocalStore(settings.store_dir)
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text("")
    cid = store.add(slug)
    store.pin(cid)
    with state.change() as s:
        s.users["ann"] = User(name="ann", keys=["ssh-ed25519 A"])
        s.users["bob"] = User(name="bob", keys=["ssh-ed25519 B"])
        for name, owner in (("annbot", "ann"), ("bobbot", "bob")):
            app = App(name=name, owner=owner, created="t", scale={"bot": 1})
            app.releases.append(release(1, cid))
            app.current = 1
            s.apps[name] = app
    runtime, bus, cluster = BlockingRuntime(), FakeBus(), FakeCluster(state, store)
    reconciler = Reconciler(settings, cluster, runtime, bus)  # type: ignore[arg-type]
    deployer = Deployer(settings, cluster, reconciler, bus, HostExecutor())  # type: ignore[arg-type]
    return Node(settings, cluster, runtime, reconciler, deployer, bus)  # type: ignore[arg-type]


# --- what a push unpacks to (the push itself: tests/test_gitserver.py) ---------------


def test_a_checkout_bigger_than_max_tree_is_refused(tmp_path: Path) -> None:
    """Pushes under the limit each can add up: the checkout counts the whole tree."""
    sha = make_repo(tmp_path / "repo.git", {"a": (FILE, b"x" * 600), "b/c": (FILE, b"y" * 600)})
    with pytest.raises(BuildError, match=r"more than 0 MB, this node's \[build\] max_tree_mb"):
        checkout(tmp_path / "repo.git", sha, tmp_path / "src", max_bytes=1000)
    checkout(tmp_path / "repo.git", sha, tmp_path / "ok", max_bytes=1200)


# --- process types and instances ---------------------------------------------------


def test_a_procfile_of_10000_types_is_refused_before_anything_starts(tmp_path: Path) -> None:
    node = make_node(tmp_path / "home", max_process_types=20)
    procfile = "".join(f"p{i}: sleep 1000\n" for i in range(10_000)).encode()
    sha = make_repo(tmp_path / "repo.git", {"Procfile": (FILE, procfile)})
    with pytest.raises(PCError, match=r"10000 process types, more than .* limit of 20"):
        node.deployer.deploy("ann", "annbot", tmp_path / "repo.git", sha, lambda _: None)
    assert [r.version for r in node.state.read().app("annbot").releases] == [1]
    assert not any(s[0] == "annbot" and s[2] != "v1" for s in node.runtime.started)  # type: ignore[attr-defined]


def test_scale_over_the_nodes_instance_limit_is_refused(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_instances=5)
    node.scale("ann", "annbot", {"bot": 4})  # 4 + bobbot's 1: at the limit
    with pytest.raises(PCError, match=r"6 instances in all: .* at most 5 \(\[shares\] max_inst"):
        node.scale("bob", "bobbot", {"bot": 2})
    assert node.state.read().app("bobbot").scale == {"bot": 1}
    node.scale("ann", "annbot", {"bot": 3})  # down always goes


def test_instances_beyond_the_limit_are_not_started_and_ps_says_why(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_instances=2)
    node.reconciler.reconcile()
    with node.state.change() as s:  # more than the limit, as a deploy can ask
        s.apps["annbot"].scale = {"bot": 3}
    node.reconciler.reconcile()
    running = sorted(p for (app, p) in node.runtime.instances)  # type: ignore[attr-defined]
    assert running == ["bot.1", "bot.1"]  # bobbot's and annbot's that ran first
    rows = {r.process: r for r in node.ps("ann", "annbot")}
    assert rows["bot.1"].state == "up"
    assert rows["bot.2"].state == "starting"
    assert "this node runs 2 instances, its limit ([shares] max_instances)" in rows["bot.2"].why


def test_within_limit_keeps_what_runs() -> None:
    want = {("a", f"w.{i}"): i for i in range(5)}
    kept, over = within_limit(want, [("a", "w.4")], 2)  # type: ignore[arg-type]
    assert list(kept) == [("a", "w.4"), ("a", "w.0")]
    assert set(over) == {("a", "w.1"), ("a", "w.2"), ("a", "w.3")}


# --- config vars ---------------------------------------------------------------------


def test_config_values_are_bounded_one_by_one_and_in_all(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_config_value_kb=32, max_config_total_kb=64)
    with pytest.raises(PCError, match=r"BIG is 204800 bytes, .* 32 KB a value"):
        node.config_set("ann", "annbot", {"BIG": "x" * 200 * 1024})
    node.config_set("ann", "annbot", {"A": "x" * 30_000, "B": "y" * 30_000})
    with pytest.raises(PCError, match=r"annbot's config vars would take \d+ bytes.* 64 KB"):
        node.config_set("ann", "annbot", {"C": "z" * 10_000})
    assert set(node.config("ann", "annbot")) == {"A", "B"}
    node.config_set("ann", "annbot", {"A": "short"})  # replacing a value frees its room
    node.config_set("ann", "annbot", {"C": "z" * 10_000})


@pytest.mark.parametrize(
    "key",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "ld_audit",
        "DYLD_INSERT_LIBRARIES",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "BASH_ENV",
    ],
)
def test_config_names_that_load_code_are_refused(tmp_path: Path, key: str) -> None:
    node = make_node(tmp_path)
    with pytest.raises(UsageError, match=f"{key} would change how programs load code"):
        node.config_set("ann", "annbot", {key: "/tmp/evil.so"})
    assert node.config("ann", "annbot") == {}


def test_interpreter_paths_stay_allowed(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    node.config_set(
        "ann", "annbot", {"PYTHONPATH": "src", "NODE_OPTIONS": "--max-old-space-size=256"}
    )


# --- concurrent builds and one-offs ---------------------------------------------------


def test_builds_beyond_max_concurrent_wait_then_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(peoplescloud.deploy, "BUILD_WAIT", 0.2)
    node = make_node(tmp_path, max_concurrent=1)
    said: list[str] = []
    busy = r"building 1 apps, its limit \(\[build\] max_concurrent\); try again"
    slot = node.deployer._build_slot
    with slot(said.append), pytest.raises(PCError, match=busy), slot(said.append):  # one runs
        pass
    assert said == ["-----> Waiting: this node is building 1 apps, its limit"]
    with node.deployer._build_slot(said.append):  # free again
        pass


def test_a_build_slot_frees_up_while_a_push_waits(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_concurrent=1)
    done = threading.Event()

    def first() -> None:
        with node.deployer._build_slot(lambda _: None):
            done.wait(5)

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.1)
    threading.Timer(0.3, done.set).start()
    with node.deployer._build_slot(lambda _: None):  # waits for the first, then goes
        pass
    t.join(5)


def test_one_offs_beyond_max_oneoffs_are_refused(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_oneoffs=2)
    runtime: BlockingRuntime = node.runtime  # type: ignore[assignment]
    threads = [
        threading.Thread(target=node.run, args=("ann", "annbot", ["sleep"], lambda _: None, None))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for _ in threads:
        assert runtime.running.acquire(timeout=10)
    try:
        with pytest.raises(
            PCError, match=r"runs 2 one-off processes, its limit \(\[shares\] max_oneoffs\)"
        ):
            node.run("bob", "bobbot", ["sleep"], lambda _: None, None)
    finally:
        runtime.release.set()
        for t in threads:
            t.join(10)
    assert node.run("bob", "bobbot", ["true"], lambda _: None, None) == 0  # slots free again


# --- a first push that deploys nothing leaves nothing --------------------------------


def test_a_push_session_that_deploys_nothing_leaves_no_app(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_apps=3)
    for _ in range(3):  # e.g. `git-receive-pack newbot` with nothing pushed, three times
        repo = node.repo_for("bob", "newbot", write=True)
        assert repo.is_dir() and "newbot" in node.state.read().apps
        node.push_ended("bob", "newbot")
        assert "newbot" not in node.state.read().apps and not repo.exists()
    node.repo_for("ann", "other", write=True)  # the slot is still free
    node.push_ended("ann", "annbot")  # a deployed app stays
    assert "annbot" in node.state.read().apps


# --- logs -f back-pressure --------------------------------------------------------------


class StuckChannel(FakeChannel):
    """A client that stops reading: drain never returns. Counts what the node
    buffered for it (`buffered`)."""

    buffered = 0

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    async def drain(self) -> None:
        await asyncio.Event().wait()


class FloodNode(FakeCommandNode):
    async def logs(  # type: ignore[override]
        self, user: str, app: str, lines: int, ptype: str | None, follow: bool
    ) -> AsyncIterator[str]:
        for i in range(100_000):
            yield f"line {i} " + "x" * 100
        await asyncio.Event().wait()


def test_logs_follow_drops_a_client_that_stops_reading(monkeypatch) -> None:
    monkeypatch.setattr(gitserver.commands.logs, "FOLLOW_TIMEOUT", 0.3)
    channel = StuckChannel()

    async def main() -> int:
        return await asyncio.wait_for(
            dispatch(FloodNode(), "alice", ["logs", "mybot", "-f"], channel), 10
        )

    assert asyncio.run(main()) == 1
    assert channel.buffered < 1000  # one line waited for the client, not the whole flood
    assert b"this client took no log line for 0.3 s" in channel.stderr


# --- secrets at rest -------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pc_init_makes_the_home_and_its_secrets_private(tmp_path: Path, user_key: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PC_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "peoplescloud.cli", "init", "--admin-key", f"{user_key}.pub"],
        env=env,
        capture_output=True,
        check=True,
    )
    assert mode(home) == 0o700
    assert mode(home / "logs") == 0o700
    for name in ("state.json", "config.toml", "ssh_host_ed25519_key"):
        assert mode(home / name) == 0o600, name


def test_the_state_is_written_0600_and_an_old_home_is_tightened(tmp_path: Path) -> None:
    from peoplescloud.private import make_private

    os.umask(0o022)
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir(mode=0o755)
    with State(settings.state_file).change() as s:
        s.users["ann"] = User(name="ann", keys=["k"])
    assert mode(settings.state_file) == 0o600
    settings.config_file.write_text("")
    settings.config_file.chmod(0o644)
    (settings.home / "raft").mkdir(mode=0o755)
    (settings.home / "raft" / "raft.journal").write_text("")
    (settings.home / "raft" / "raft.journal").chmod(0o644)
    make_private(settings)
    assert mode(settings.home) == 0o700 and mode(settings.home / "raft") == 0o700
    assert mode(settings.config_file) == 0o600
    assert mode(settings.home / "raft" / "raft.journal") == 0o600
    assert mode(settings.logs_dir) == 0o700


def test_settings_refuse_bounds_below_one() -> None:
    with pytest.raises(PCError, match=r"\[shares\] max_instances must be at least 1"):
        Shares(max_instances=0)
    with pytest.raises(PCError, match=r"\[build\] max_tree_mb must be a number"):
        BuildSettings(max_tree_mb="lots")  # type: ignore[arg-type]
    assert replace(Shares(), max_oneoffs="3").max_oneoffs == 3  # type: ignore[arg-type]
