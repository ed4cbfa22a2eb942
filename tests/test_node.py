"""Who may do what, and what a failed deploy leaves behind, on a real Node
(real state, store, reconciler and deployer; an in-memory runtime)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import pytest

from peoplescloud.deploy import Deployer
from peoplescloud.errors import ConfigError, Forbidden, NotFound, PCError, UsageError
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceSpec, InstanceStatus
from peoplescloud.service import Node
from peoplescloud.settings import Settings, Shares
from peoplescloud.state import App, State, User
from peoplescloud.store import LocalStore
from tests.fakes import FakeBus, FakeCluster, FakeRuntime, release


class CrashingRuntime(FakeRuntime):
    """Instances of the releases in `bad` exit at once with code 1; those of the
    releases in `short` run for their first look, then exit with code 0."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: set[str] = set()
        self.bad_types: set[str] = set()  # process types that exit at once
        self.short: set[str] = set()
        self._looked: set[tuple[str, str]] = set()
        self.ran: list[tuple[str, list[str]]] = []  # (spec.command, argv) of one-offs

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        status = super().start(spec)
        if spec.release in self.bad or spec.ptype in self.bad_types:
            self.crash(spec.app, spec.process, 1)
        return status

    def run(
        self, spec: InstanceSpec, argv: list[str], output, stdin=None, cancel=None, terminal=None
    ) -> int:  # type: ignore[no-untyped-def]
        self.ran.append((spec.command, argv))
        return 0

    def status(self) -> list[InstanceStatus]:
        for key, s in list(self.instances.items()):
            if s.release in self.short and s.running:
                if key in self._looked:
                    self.crash(*key, 0)
                self._looked.add(key)
        return super().status()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    settings = Settings(home=tmp_path, name="n1")
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
        s.users["root"] = User(name="root", keys=["ssh-ed25519 R"], admin=True)
        for name, owner in (("annbot", "ann"), ("annbot-copy", "ann")):
            app = App(name=name, owner=owner, created="t", scale={"bot": 1})
            app.releases.append(release(1, cid))
            app.current = 1
            s.apps[name] = app
    runtime, bus, cluster = CrashingRuntime(), FakeBus(), FakeCluster(state, store)
    reconciler = Reconciler(settings, cluster, runtime, bus)  # type: ignore[arg-type]
    deployer = Deployer(settings, cluster, reconciler, bus, executor=None)  # type: ignore[arg-type]
    return Node(settings, cluster, runtime, reconciler, deployer, bus)  # type: ignore[arg-type]


def test_only_the_owner_or_an_admin_touches_an_app(node: Node):
    def refused(app: str) -> list:
        return [
            lambda: node.repo_for("bob", app, write=False),
            lambda: node.config_set("bob", app, {"X": "1"}),
            lambda: node.config("bob", app),
            lambda: node.destroy("bob", app),
            lambda: node.run("bob", app, ["true"], lambda _b: None, None),
            lambda: node.rollback("bob", app, "v1"),
            lambda: node.scale("bob", app, {"bot": 2}),
        ]

    # the same refusal for ann's app as for one that does not exist: no name leaks
    for theirs, ghost in zip(refused("annbot"), refused("ghost"), strict=True):
        with pytest.raises(NotFound) as one:
            theirs()
        with pytest.raises(NotFound) as other:
            ghost()
        assert str(one.value).replace("annbot", "X") == str(other.value).replace("ghost", "X")
        assert "of yours: `apps` lists yours" in str(one.value)
    with pytest.raises(Forbidden, match="annbot is taken"):  # a push would create it
        node.repo_for("bob", "annbot", write=True)

    async def read_logs() -> None:
        async for _ in node.logs("bob", "annbot", 10, None, False):
            pass

    with pytest.raises(NotFound):
        asyncio.run(read_logs())
    assert [a.name for a in node.apps("bob")] == []
    node.config_set("root", "annbot", {"X": "1"})  # an admin may
    assert node.config("ann", "annbot") == {"X": "1"}


def test_first_push_creates_the_app_once(node: Node):
    node.repo_for("bob", "bobbot", write=True)
    with pytest.raises(Forbidden):
        node.repo_for("ann", "bobbot", write=True)  # the second pusher does not take it over
    with pytest.raises(NotFound):
        node.repo_for("ann", "nobody", write=False)  # a read never creates
    assert not node.settings.repo_path("nobody").exists()


def test_a_failed_first_push_leaves_no_app(node: Node, monkeypatch: pytest.MonkeyPatch):
    def failing(*_args, **_kw):
        raise PCError("build failed: nothing to build")

    node.repo_for("bob", "bobbot", write=True)
    monkeypatch.setattr(node.deployer, "deploy", failing)
    with pytest.raises(PCError):
        node.deploy("bob", "bobbot", "0" * 40, lambda _line: None)
    assert "bobbot" not in node.state.read().apps
    assert not node.settings.repo_path("bobbot").exists()


def test_a_release_that_does_not_start_gives_way_to_the_last_good_one(node: Node):
    node.reconciler.reconcile()
    node.runtime.bad.add("v2")  # type: ignore[attr-defined]
    with pytest.raises(PCError, match=r"v2 is deployed but bot.1 stopped \(exit code 1\).*v1 runs"):
        node.rollback("ann", "annbot", "v1")  # v2 = v1's slug, but this runtime crashes v2
    a = node.state.read().apps["annbot"]
    assert a.current == 1
    assert node.runtime.instances[("annbot", "bot.1")].release == "v1"  # type: ignore[attr-defined]


def test_a_release_whose_process_exits_at_once_fails_its_push(node: Node):
    """Running for a moment is not running: the push waits until it kept running."""
    node.reconciler.reconcile()
    node.runtime.short.add("v2")  # type: ignore[attr-defined]
    with pytest.raises(PCError, match=r"v2 is deployed but bot.1 stopped \(exit code 0\)"):
        node.rollback("ann", "annbot", "v1")
    assert node.state.read().apps["annbot"].current == 1


def test_a_slug_two_apps_share_survives_destroying_one(node: Node):
    cid = node.state.read().apps["annbot"].release().slug
    node.destroy("ann", "annbot-copy")
    assert node.store.has(cid)
    node.destroy("ann", "annbot")
    assert not node.store.has(cid)


def test_a_config_change_is_a_release_the_reconciler_rolls_out(node: Node):
    node.reconciler.reconcile()
    node.config_set("ann", "annbot", {"TOKEN": "t=1"})
    a = node.state.read().apps["annbot"]
    assert (a.current, a.release().description) == (2, "Set TOKEN")
    instance = node.runtime.started[-1]  # type: ignore[attr-defined]
    assert instance[2] == "v2" and instance[3]["TOKEN"] == "t=1"
    node.config_unset("ann", "annbot", ["TOKEN"])
    assert "TOKEN" not in node.runtime.started[-1][3]  # type: ignore[attr-defined]


def test_ps_says_why_an_instance_cannot_start(node: Node):
    """Its slug cannot be had (in a swarm: no holder is up): it waits, retries, and ps says why."""
    cid = node.state.read().apps["annbot"].release().slug
    node.store.unpin(cid)
    node.reconciler.reconcile()
    [row] = node.ps("ann", "annbot")
    assert row.state == "starting" and "not in this node's store" in row.why


def test_a_failed_release_keeps_what_changed_while_it_was_awaited(
    node: Node, monkeypatch: pytest.MonkeyPatch
):
    """A `ps:scale` during the wait is kept: the failed push restores only what it set."""
    node.reconciler.reconcile()
    node.runtime.bad.add("v2")  # type: ignore[attr-defined]
    wait_running = node.deployer.wait_running

    def scaled_meanwhile(app, release, say, timeout=20):  # type: ignore[no-untyped-def]
        node.scale("ann", "annbot", {"bot": 2})
        return wait_running(app, release, say, timeout)

    monkeypatch.setattr(node.deployer, "wait_running", scaled_meanwhile)
    with pytest.raises(PCError, match="v1 runs again"):
        node.rollback("ann", "annbot", "v1")
    a = node.state.read().apps["annbot"]
    assert (a.current, a.scale) == (1, {"bot": 2})


def test_a_failed_release_leaves_a_newer_current_alone(node: Node, monkeypatch: pytest.MonkeyPatch):
    """Another release made current during the wait is not overwritten by the old one."""
    node.reconciler.reconcile()
    node.runtime.bad.add("v2")  # type: ignore[attr-defined]

    def superseded(app, name, say, timeout=20):  # type: ignore[no-untyped-def]
        with node.state.change() as s:
            a = s.apps[app]
            a.releases.append(release(3, a.release(1).slug))
            a.current = 3
        raise PCError(f"release {name} is deployed but bot.1 stopped (exit code 1)")

    monkeypatch.setattr(node.deployer, "wait_running", superseded)
    with pytest.raises(PCError, match="stopped") as failed:
        node.rollback("ann", "annbot", "v1")
    assert "v1 runs again" not in str(failed.value)
    assert node.state.read().apps["annbot"].current == 3


def test_a_rollback_waits_its_turn_behind_a_push(node: Node):
    with node.deployer.locks.try_hold("annbot") as free:  # a push to annbot is under way
        assert free
        with pytest.raises(PCError, match="another .* annbot is under way; try again"):
            node.rollback("ann", "annbot", "v1")
    assert node.state.read().apps["annbot"].current == 1
    assert len(node.state.read().apps["annbot"].releases) == 1  # nothing recorded


def test_a_rollback_names_its_release_in_ascii_digits(node: Node):
    with pytest.raises(UsageError, match="is not a release"):
        node.rollback("ann", "annbot", "v\u0661")  # ARABIC-INDIC DIGIT ONE


def test_a_release_of_a_stopped_app_is_recorded_at_once(node: Node):
    """A stopped app runs nothing: a rollback (or push) records its release and says
    so, without waiting for instances that are not wanted."""
    node.reconciler.reconcile()
    node.stop("ann", "annbot")
    deadline = time.monotonic() + 5
    assert node.rollback("ann", "annbot", "v1") == "v2"
    assert time.monotonic() < deadline
    a = node.state.read().apps["annbot"]
    assert (a.current, a.stopped) == (2, True)
    assert ("annbot", "bot.1") not in node.runtime.instances  # type: ignore[attr-defined]
    said: list[str] = []
    assert node.deployer.activate("annbot", 1, said.append) == "v1"
    assert said == ["-----> Release v1 recorded; annbot is stopped (ps:start starts it)"]


def test_each_app_builds_with_its_own_cache_which_goes_with_the_app(node: Node):
    ann = node.deployer._cache("annbot", "ann")
    other = node.deployer._cache("annbot-copy", "ann")
    assert ann != other and ann.parent == other.parent == node.settings.cache_dir
    (ann / "pip").mkdir()
    node.destroy("ann", "annbot")
    assert not ann.exists() and other.is_dir()


def test_apps_create_makes_an_empty_app_of_its_owner(node: Node):
    node.create("bob", "bobbot")
    a = node.state.read().apps["bobbot"]
    assert (a.owner, a.current, a.releases) == ("bob", None, [])
    assert [r.state for r in node.apps("bob")] == ["not deployed"]
    with pytest.raises(PCError, match="^you already have bobbot"):
        node.create("bob", "bobbot")
    with pytest.raises(PCError, match="^bobbot is taken"):
        node.create("ann", "bobbot")
    with pytest.raises(PCError, match="^annbot is taken"):
        node.create("bob", "annbot")
    with pytest.raises(ConfigError):
        node.create("bob", "Bad_Name")
    node.repo_for("bob", "bobbot", write=True)  # the first push finds it: bob's


def test_apps_create_counts_toward_the_nodes_limit(node: Node):
    node.settings = dataclasses.replace(node.settings, shares=Shares(max_apps=3))
    node.create("bob", "third")
    with pytest.raises(PCError, match="this node hosts 3 apps, its limit"):
        node.create("bob", "fourth")
    assert "fourth" not in node.state.read().apps


def test_a_failed_first_push_keeps_a_created_app_and_its_config(
    node: Node, monkeypatch: pytest.MonkeyPatch
):
    def failing(*_args, **_kw):
        raise PCError("build failed: nothing to build")

    node.create("bob", "bobbot")
    node.config_set("bob", "bobbot", {"TOKEN": "t"})
    node.repo_for("bob", "bobbot", write=True)
    monkeypatch.setattr(node.deployer, "deploy", failing)
    with pytest.raises(PCError):
        node.deploy("bob", "bobbot", "0" * 40, lambda _line: None)
    assert node.state.read().apps["bobbot"].config == {"TOKEN": "t"}


def _first_release(node: Node, app: str, processes: dict[str, str]) -> int:
    """Record a first release of `app` (what a push's build does), not yet active."""
    slug = node.state.read().apps["annbot"].release().slug
    with node.state.change() as s:
        r = dataclasses.replace(release(1, slug), processes=processes)
        s.apps[app].releases.append(r)
    return 1


def test_a_type_scaled_to_0_before_the_first_push_is_not_started(node: Node):
    """Dokku's way with a one-shot type: create, scale it to 0, push. It exits at
    once, but it is not started, so the push does not wait for it, nor fail."""
    node.create("bob", "bobbot")
    node.scale("bob", "bobbot", {"console": 0})
    with pytest.raises(UsageError, match="no process type"):
        node.scale("bob", "bobbot", {"Bad Type": 1})
    node.runtime.bad_types.add("console")  # type: ignore[attr-defined]
    version = _first_release(node, "bobbot", {"bot": "python bot.py", "console": "echo hi"})
    said: list[str] = []
    assert node.deployer.activate("bobbot", version, said.append) == "v1"
    a = node.state.read().apps["bobbot"]
    assert a.scale == {"bot": 1, "console": 0}
    assert ("bobbot", "console.1") not in node.runtime.instances  # type: ignore[attr-defined]
    assert said[-1] == "-----> Release v1 running: bot.1 on n1"


def test_apps_says_running_only_when_an_instance_runs(node: Node):
    node.create("bob", "bobbot")
    _first_release(node, "bobbot", {"bot": "python bot.py"})
    with node.state.change() as s:  # released, but not started yet
        s.apps["bobbot"].current = 1
        s.apps["bobbot"].scale = {"bot": 1}
    assert [r.state for r in node.apps("bob")] == ["starting"]
    node.reconciler.reconcile()
    assert [r.state for r in node.apps("bob")] == ["running"]
    node.scale("bob", "bobbot", {"bot": 0})
    assert [r.state for r in node.apps("bob")] == ["idle"]


def test_run_goes_through_the_apps_shell_and_knows_the_procfile_types(node: Node):
    with node.state.change() as s:
        a = s.apps["annbot"]
        a.releases[0] = dataclasses.replace(
            a.releases[0], processes={"bot": "python bot.py", "console": "python console.py"}
        )

    def run(*words: str) -> tuple[str, list[str]]:
        node.run("ann", "annbot", list(words), lambda _b: None, None)
        return node.runtime.ran[-1]  # type: ignore[attr-defined]

    assert run("console") == ("python console.py", ["sh", "-c", "python console.py"])
    assert run("console", "--fast")[1] == ["sh", "-c", "python console.py --fast"]
    assert run("python", "-V")[1] == ["sh", "-c", "python -V"]
    # ssh -p 2222 pc@HOST run annbot 'echo $TOKEN': the server gets `echo $TOKEN`
    assert run("echo", "$TOKEN")[1] == ["sh", "-c", "echo $TOKEN"]
    # ssh ... run annbot sh -c "'exit 5'": the quoted word stays one word
    assert run("sh", "-c", "exit 5")[1] == ["sh", "-c", "sh -c 'exit 5'"]
    assert run("cd /tmp && ls")[1] == ["sh", "-c", "cd /tmp && ls"]  # one word: the line


def test_the_git_url_names_the_node_as_users_reach_it(node: Node, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    assert node.app_info("ann", "annbot")["git"] == "ssh://pc@box:2222/annbot"  # 0.0.0.0
    node.settings = dataclasses.replace(node.settings, listen="192.0.2.7")
    assert node.app_info("ann", "annbot")["git"] == "ssh://pc@192.0.2.7:2222/annbot"
    node.settings = dataclasses.replace(node.settings, advertise="node1.example.org")
    assert node.app_info("ann", "annbot")["git"] == "ssh://pc@node1.example.org:2222/annbot"
    node.settings = dataclasses.replace(node.settings, advertise="2001:db8::1")
    assert node.app_info("ann", "annbot")["git"] == "ssh://pc@[2001:db8::1]:2222/annbot"
