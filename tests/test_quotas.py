"""Quotas and per-app resources on a real Node (real state, store, reconciler and
deployer; an in-memory runtime): each rule refuses what is over it and says
which quota, and each test fails when its rule is removed."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

import peoplescloud.deploy
from peoplescloud.errors import Forbidden, NotFound, PCError, UsageError
from peoplescloud.quotas import OverQuota
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceStatus
from peoplescloud.service import Node
from peoplescloud.settings import Quotas, Settings, Shares, load
from peoplescloud.state import User
from tests.fakes import FakeBus, FakeRuntime
from tests.test_bounds import BlockingRuntime, make_node


def _node(tmp_path: Path, **quotas: int) -> Node:
    node = make_node(tmp_path)
    node.settings = replace(node.settings, quotas=Quotas(**quotas))
    node.deployer.settings = node.settings
    with node.state.change() as s:
        s.users["root"] = User(name="root", keys=["ssh-ed25519 R"], admin=True)
    return node


# --- settings --------------------------------------------------------------------------


def test_quota_defaults_and_the_toml_section(tmp_path: Path) -> None:
    assert Quotas() == Quotas(apps=5, instances=10, runs=2, builds=1)
    assert (Shares().max_instance_memory_mb, Shares().max_instance_cpus) == (1024, 1.0)
    (tmp_path / "config.toml").write_text("[quotas]\napps = 2\n[shares]\nmax_instance_cpus = 2\n")
    s = load(tmp_path)
    assert s.quotas.apps == 2 and s.quotas.instances == 10 and s.shares.max_instance_cpus == 2.0
    with pytest.raises(PCError, match=r"\[quotas\] runs must be at least 0"):
        Quotas(runs=-1)


# --- apps ------------------------------------------------------------------------------


def test_apps_over_the_users_quota_are_refused_and_say_which(tmp_path: Path) -> None:
    node = _node(tmp_path, apps=2)  # ann owns annbot already
    node.create("ann", "second")
    with pytest.raises(OverQuota) as e:
        node.create("ann", "third")
    assert str(e.value) == "you have 2 apps, your quota (apps); `quota` shows your usage"
    with pytest.raises(OverQuota, match=r"you have 2 apps, your quota \(apps\)"):
        node.repo_for("ann", "pushed", write=True)  # a first push makes no app either
    assert set(node.state.read().apps) == {"annbot", "bobbot", "second"}
    node.create("bob", "bobs-second")  # another user's quota is their own
    node.quota_set("root", "ann", {"apps": 3})  # an admin raises it
    node.create("ann", "third")


# --- instances -------------------------------------------------------------------------


def test_scale_over_the_owners_instance_quota_is_refused(tmp_path: Path) -> None:
    node = _node(tmp_path, instances=3)
    node.scale("ann", "annbot", {"bot": 3})
    with pytest.raises(OverQuota) as e:
        node.scale("ann", "annbot", {"bot": 4})
    assert str(e.value) == (
        "you have 4 process instances, your quota (instances); `quota` shows your usage"
    )
    assert node.state.read().app("annbot").scale == {"bot": 3}
    node.scale("ann", "annbot", {"bot": 2})  # down always goes
    # An admin scaling ann's app spends ann's quota, and is told whose it is.
    with pytest.raises(OverQuota, match=r"ann has 4 process instances, their quota \(instances\)"):
        node.scale("root", "annbot", {"bot": 4})


def test_a_quota_lowered_below_what_runs_lets_it_run_but_admits_no_more(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.scale("ann", "annbot", {"bot": 3})
    node.quota_set("root", "ann", {"instances": 1})
    node.scale("ann", "annbot", {"bot": 2})  # still over, but less: it goes
    with pytest.raises(OverQuota):
        node.scale("ann", "annbot", {"bot": 3})


# --- one-off runs and builds -------------------------------------------------------------


def test_one_offs_over_the_users_quota_are_refused(tmp_path: Path) -> None:
    node = _node(tmp_path, runs=1)
    runtime: BlockingRuntime = node.runtime  # type: ignore[assignment]
    t = threading.Thread(target=node.run, args=("ann", "annbot", ["sleep"], lambda _: None, None))
    t.start()
    assert runtime.running.acquire(timeout=10)
    try:
        assert {r.name: r.used for r in node.quota("ann")}["runs"] == 1
        with pytest.raises(OverQuota, match=r"you have 1 one-off runs going, your quota \(runs\)"):
            node.run("ann", "annbot", ["sleep"], lambda _: None, None)
        threading.Thread(
            target=node.run, args=("bob", "bobbot", ["sleep"], lambda _: None, None)
        ).start()  # bob's own quota: his runs
        assert runtime.running.acquire(timeout=10)
    finally:
        runtime.release.set()
        t.join(10)
    assert node.run("ann", "annbot", ["true"], lambda _: None, None) == 0  # free again


def test_builds_over_the_users_quota_are_refused(tmp_path: Path, monkeypatch) -> None:
    node = _node(tmp_path, builds=1)
    started = threading.Event()
    go_on = threading.Event()

    def slow_checkout(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        started.set()
        go_on.wait(10)
        raise peoplescloud.deploy.builder.BuildError("stopped here")

    monkeypatch.setattr(peoplescloud.deploy.builder, "checkout", slow_checkout)
    repo = tmp_path / "repo"
    first = threading.Thread(
        target=lambda: pytest.raises(
            PCError, node.deployer.deploy, "ann", "annbot", repo, "c", lambda _: None
        )
    )
    first.start()
    assert started.wait(10)
    try:
        assert node.deployer.builds_of("ann") == 1
        with pytest.raises(OverQuota, match=r"you have 1 builds going, your quota \(builds\)"):
            node.deployer.deploy("ann", "second", repo, "c", lambda _: None)
    finally:
        go_on.set()
        first.join(10)
    assert node.deployer.builds_of("ann") == 0


# --- quota and quota:set -------------------------------------------------------------------


def test_quota_shows_each_limit_and_usage_and_only_admins_see_or_set_others(
    tmp_path: Path,
) -> None:
    node = _node(tmp_path)
    node.scale("ann", "annbot", {"bot": 2})
    rows = {r.name: (r.used, r.limit, r.source) for r in node.quota("ann")}
    assert rows == {
        "apps": (1, 5, "node default ([quotas])"),
        "instances": (2, 10, "node default ([quotas])"),
        "runs": (0, 2, "node default ([quotas])"),
        "builds": (0, 1, "node default ([quotas])"),
    }
    with pytest.raises(Forbidden, match="only an admin may see another user's quota"):
        node.quota("bob", "ann")
    with pytest.raises(Forbidden, match="only an admin may set quotas"):
        node.quota_set("ann", "ann", {"apps": 50})
    node.quota_set("root", "ann", {"apps": 7})
    assert ("apps", 7, "set for ann") in [
        (r.name, r.limit, r.source) for r in node.quota("root", "ann")
    ]
    with pytest.raises(UsageError, match="no quota named 'disk'"):
        node.quota_set("root", "ann", {"disk": 1})
    with pytest.raises(NotFound):
        node.quota_set("root", "nobody", {"apps": 1})


# --- resources -----------------------------------------------------------------------------


def test_resources_set_is_a_release_whose_instances_get_the_figures(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.reconciler.reconcile()
    assert [(r.ptype, r.memory_mb, r.cpus) for r in node.resources("ann", "annbot")] == [
        ("bot", 512, 0.25)
    ]
    assert node.resources_set("ann", "annbot", "bot", 256, 0.5) == "v2"
    assert node.state.read().app("annbot").resources == {"bot": {"memory_mb": 256, "cpus": 0.5}}
    running = [k for k in node.reconciler.instances() if k.app == "annbot"]
    assert [k.release for k in running] == ["v2"]
    assert [(r.memory_mb, r.cpus, r.source) for r in node.resources("ann", "annbot")] == [
        (256, 0.5, "set for bot")
    ]
    with pytest.raises(NotFound, match="of yours"):  # another user's app: as a missing one
        node.resources_set("bob", "annbot", None, 128, None)


def test_resources_above_the_nodes_ceiling_are_refused(tmp_path: Path) -> None:
    node = _node(tmp_path)
    with pytest.raises(UsageError, match=r"1 GB|1024 MB \(\[shares\] max_instance_memory_mb\)"):
        node.resources_set("ann", "annbot", None, 2048, None)
    with pytest.raises(UsageError, match=r"1 CPU \(\[shares\] max_instance_cpus\)"):
        node.resources_set("ann", "annbot", None, None, 1.5)
    with pytest.raises(UsageError, match="no process type 'web'"):
        node.resources_set("ann", "annbot", "web", 128, None)
    assert node.state.read().app("annbot").resources == {}
    assert node.state.read().app("annbot").current == 1  # no release either


class SizedRuntime(FakeRuntime):
    """Remembers the memory and CPU each instance was started with."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[tuple[str, str, str], tuple[int, float]] = {}

    def start(self, spec):  # type: ignore[no-untyped-def]
        self.sizes[(spec.app, spec.process, spec.release)] = (spec.memory_mb, spec.cpus)
        return super().start(spec)


def test_instances_start_with_their_apps_figures_type_first(tmp_path: Path) -> None:
    node = _node(tmp_path)
    runtime = SizedRuntime()
    node.runtime = node.reconciler.runtime = runtime
    node.resources_set("ann", "annbot", None, 300, None)  # every type
    node.resources_set("ann", "annbot", "bot", None, 0.75)  # bot's own CPU
    node.reconciler.reconcile()
    assert runtime.sizes[("annbot", "bot.1", "v3")] == (300, 0.75)
    assert runtime.sizes[("bobbot", "bot.1", "v1")] == (512, 0.25)  # the node's default


def test_an_instance_killed_over_its_memory_is_restarted_and_its_log_says_so(
    tmp_path: Path,
) -> None:
    node = _node(tmp_path)
    node.resources_set("ann", "annbot", None, 256, None)
    node.reconciler.reconcile()
    runtime: FakeRuntime = node.runtime  # type: ignore[assignment]
    s = runtime.instances[("annbot", "bot.1")]
    runtime.instances[("annbot", "bot.1")] = InstanceStatus(
        s.app, s.process, s.release, False, 137, oom_killed=True
    )
    node.reconciler.reconcile()
    bus: FakeBus = node.logbus  # type: ignore[assignment]
    assert "annbot: bot.1 exceeded its memory limit (256 MB); restarting in 1s" in bus.events
    assert node.reconciler.crash("annbot", "bot.1") is not None  # with back-off


# --- a real container over its memory ------------------------------------------------------

HOG = "/usr/bin/python3 -c 'b = b\"x\" * (200 << 20); import time; time.sleep(60)'"


@pytest.mark.docker
def test_a_container_over_its_memory_is_oom_killed_and_its_log_says_so(tmp_path: Path) -> None:
    """64 MB for a bot that writes 200 MB: docker kills it, `status` says it was
    the memory, and the reconciler's restart line says so."""
    from peoplescloud.docker_engine import connect
    from peoplescloud.runtime.docker import DockerRuntime
    from peoplescloud.state import App, Release, State
    from peoplescloud.store import LocalStore
    from tests.conftest import wait_for
    from tests.fakes import FakeCluster
    from tests.test_runtime_suite import STACK_IMAGE, node_name

    client = connect(30)
    assert client is not None
    name = node_name()
    settings = Settings(home=tmp_path, name=name)
    slug = settings.slug_path("hogslug")
    slug.mkdir(parents=True)
    for p in (tmp_path, settings.slugs_dir, slug):
        p.chmod(0o755)
    state = State(settings.state_file)
    with state.change() as s:
        app = App(name="hog", owner="ann", created="t", scale={"bot": 1})
        app.releases.append(
            Release(1, "hogslug", "procfile", "", {"bot": HOG}, "c", "ann", "t", "")
        )
        app.current = 1
        app.resources = {"*": {"memory_mb": 64}}
        s.apps["hog"] = app
    runtime = DockerRuntime(client, name, STACK_IMAGE)
    bus = FakeBus()
    reconciler = Reconciler(
        settings, FakeCluster(state, LocalStore(settings.store_dir)), runtime, bus
    )  # type: ignore[arg-type]
    try:
        reconciler.reconcile()
        dead = wait_for(
            lambda: next((s for s in runtime.status() if not s.running), None),
            "the bot to be killed",
            timeout=60,
        )
        assert dead.oom_killed and dead.process == "bot.1"
        reconciler.reconcile()
        assert "hog: bot.1 exceeded its memory limit (64 MB); restarting in 1s" in bus.events
    finally:
        reconciler.close()
        for s in runtime.status():
            runtime.stop(s.key, timeout=1)
