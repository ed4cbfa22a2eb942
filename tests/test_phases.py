"""The release phase, app.json's predeploy/postdeploy and formation, in a deploy's
order of things: against an in-memory runtime whose one-offs the test answers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.appjson import AppJson, CronJob, parse
from builder.errors import BuildError
from peoplescloud.deploy import Deployer
from peoplescloud.errors import PCError
from peoplescloud.phases import MAX_LINE, LineSplitter, Phases
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime.base import InstanceSpec
from peoplescloud.settings import Settings
from peoplescloud.state import App, Release, State
from peoplescloud.store import LocalStore
from tests.fakes import FakeBus, FakeCluster, FakeRuntime


class PhaseRuntime(FakeRuntime):
    """Runs one-offs by answering them: `codes[command]` (0 by default), after
    printing "ran COMMAND"; records what ran and what was running then."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[str, int] = {}
        self.ran: list[tuple[str, str, str, dict, list[str]]] = []
        self.block = threading.Event()  # a command "hang" waits on cancel

    def run(
        self,
        spec: InstanceSpec,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: object = None,
        cancel: threading.Event | None = None,
    ) -> int:
        command = argv[-1]
        running = sorted(f"{s.process} {s.release}" for s in self.instances.values())
        self.ran.append((spec.process, spec.release, command, dict(spec.env), running))
        if command == "hang" and cancel is not None:
            cancel.wait(10)
            return -9
        output(b"ran " + command.encode() + b"\n")
        return self.codes.get(command, 0)


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(home=tmp_path, name="n1")
        self.state = State(tmp_path / "state.json")
        store = LocalStore(tmp_path / "store")
        slug = tmp_path / "slug"
        slug.mkdir()
        (slug / "bot.py").write_text("")
        self.cid = store.add(slug)
        with self.state.change() as s:
            s.apps["a"] = App(name="a", owner="ann", created="t", config={"K": "one"})
        self.runtime, self.bus = PhaseRuntime(), FakeBus()
        cluster = FakeCluster(self.state, store)
        self.r = Reconciler(self.settings, cluster, self.runtime, self.bus)  # type: ignore[arg-type]
        self.deployer = Deployer(self.settings, cluster, self.r, self.bus, None)  # type: ignore[arg-type]
        self.said: list[str] = []

    def add(self, version: int, **commands: str) -> None:
        processes = {"bot": "python bot.py", "worker": "python bot.py"}
        r = Release(version, self.cid, "python", "img", processes, "c", "ann", "t", "", **commands)
        with self.state.change() as s:
            s.apps["a"].releases.append(r)

    def activate(self, version: int, formation: dict[str, int] | None = None) -> str:
        return self.deployer.activate("a", version, self.said.append, formation)

    def app(self) -> App:
        return self.state.read().apps["a"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.r.close()


def test_predeploy_then_release_run_before_any_instance_with_the_config(world: World):
    w = world
    w.add(1, predeploy="pre", release_command="rel", postdeploy="post")
    assert w.activate(1) == "v1"
    ran = [(p, rel, cmd, env["K"], running) for p, rel, cmd, env, running in w.runtime.ran]
    assert ran[:2] == [("predeploy", "v1", "pre", "one", []), ("release", "v1", "rel", "one", [])]
    assert ran[2][:3] == ("postdeploy", "v1", "post") and "bot.1 v1" in ran[2][4]
    assert "       ran rel" in w.said and "-----> Running release command: rel" in w.said
    assert "a[release]: ran rel" in w.bus.events
    assert w.app().scale == {"bot": 1, "worker": 1}  # `release` is never an instance


def test_a_failing_release_phase_keeps_the_old_release(world: World):
    w = world
    w.add(1)
    w.activate(1)
    w.add(2, release_command="migrate")
    w.runtime.codes["migrate"] = 3
    with pytest.raises(PCError, match=r"release command failed \(exit 3\): migrate; the previous"):
        w.activate(2)
    a = w.app()
    assert (a.current, a.deploying) == (1, None)
    assert all(s.release == "v1" for s in w.runtime.instances.values())
    assert not any(started[2] == "v2" for started in w.runtime.started)


def test_a_failing_predeploy_stops_before_the_release_phase(world: World):
    w = world
    w.add(1, predeploy="pre", release_command="rel")
    w.runtime.codes["pre"] = 1
    with pytest.raises(PCError, match="predeploy command failed"):
        w.activate(1)
    assert [r[0] for r in w.runtime.ran] == ["predeploy"]
    assert w.app().current is None and not w.runtime.started


def test_a_failing_postdeploy_fails_but_the_release_stays_current(world: World):
    w = world
    w.add(1, postdeploy="post")
    w.runtime.codes["post"] = 4
    with pytest.raises(PCError, match=r"exit 4.*v1 runs on"):
        w.activate(1)
    assert w.app().current == 1


def test_a_hung_phase_is_stopped_after_the_timeout(world: World):
    w = world
    w.deployer.phases.timeout = 0.2
    w.add(1, release_command="hang")
    with pytest.raises(PCError, match="release command failed"):
        w.activate(1)
    assert any("stopped after" in line for line in w.said)


def test_formation_scales_the_first_deploy_only_and_the_users_scale_wins(world: World):
    w = world
    with w.state.change() as s:
        s.apps["a"].scale = {"worker": 0}  # ps:scale before the first push
    w.add(1)
    w.activate(1, {"bot": 3, "worker": 2})
    assert w.app().scale == {"bot": 3, "worker": 0}
    with w.state.change() as s:
        s.apps["a"].scale = {"bot": 1, "worker": 0}
    w.add(2)
    with w.state.change() as s:  # v2 brings a type: it starts with one instance, as any
        s.apps["a"].releases[-1].processes["clock"] = "python bot.py"
    w.activate(2, {"bot": 3, "worker": 2, "clock": 3})
    assert w.app().scale == {"bot": 1, "worker": 0, "clock": 1}


def test_lines_are_split_across_chunks_and_bounded():
    out: list[str] = []
    lines = LineSplitter(out.append)
    for chunk in (b"one\r\ntw", b"o\n", b"x" * (MAX_LINE + 5), b"\xff"):
        lines.feed(chunk)
    lines.flush()
    assert out[:2] == ["one", "two"]
    assert out[2] == "x" * MAX_LINE and out[3] == "xxxxx\ufffd"


def test_phases_run_nothing_without_commands(world: World):
    w = world
    w.add(1)
    Phases(w.settings, w.r, w.bus).before(w.app(), 1, w.said.append)  # type: ignore[arg-type]
    assert w.runtime.ran == []


def test_app_json_scripts_formation_and_cron():
    got = parse(
        {
            "name": "x",
            "env": {"A": {"value": "b"}},
            "formation": {"web": {"quantity": 2, "size": "basic"}, "x": {"size": "basic"}},
            "scripts": {"dokku": {"predeploy": "./pre", "postdeploy": "./post"}},
            "cron": [{"command": "./tick", "schedule": "*/5 * * * *"}],
        }
    )
    assert got == AppJson(
        formation={"web": 2},
        predeploy="./pre",
        postdeploy="./post",
        cron=(CronJob("./tick", "*/5 * * * *"),),
    )
    assert parse({"scripts": {"postdeploy": "./seed"}}).postdeploy == "./seed"


@pytest.mark.parametrize(
    "data, why",
    [
        ({"formation": {"web": {"quantity": 21}}}, "between 0 and 20"),
        ({"formation": {"web": {"quantity": "2"}}}, "must be a whole number"),
        ({"formation": {"web": 2}}, "formation.web must be an object"),
        ({"scripts": {"dokku": {"predeploy": ["a"]}}}, "scripts.dokku.predeploy must be a string"),
        ({"scripts": []}, '"scripts" must be an object'),
        ({"scripts": {"postdeploy": "a", "dokku": {"postdeploy": "b"}}}, "differ"),
        ({"cron": {"command": "x"}}, '"cron" must be a list'),
        ({"cron": [{"command": "x"}]}, 'needs a "command" and a "schedule"'),
        ({"cron": [{"command": "x", "schedule": "*"}] * 21}, "at most 20"),
    ],
)
def test_app_json_bad_values_say_where(data: dict, why: str):
    with pytest.raises(BuildError, match=why):
        parse(data)
