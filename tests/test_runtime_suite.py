"""One suite every runtime must pass: docker and process, same tests.

A test needing Docker skips when no engine answers, unless PC_REQUIRE_DOCKER=1
(then it fails): CI on a Docker host must not go green by skipping.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peoplescloud.runtime.base import (
    LABEL_APP,
    LABEL_NODE,
    LABEL_PROCESS,
    LABEL_RELEASE,
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    Runtime,
    shell_script,
)
from peoplescloud.runtime.process import ProcessRuntime
from tests import conftest

STACK_IMAGE = "peoplescloud/stack:bookworm"

APP = """
import http.server, json, os, signal, sys, time

def bye(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, bye)
env = {k: v for k, v in os.environ.items() if k.startswith("PC_") or k in ("PORT", "GREETING")}
print("env " + json.dumps(env, sort_keys=True), flush=True)
print("to stderr", file=sys.stderr, flush=True)
mode = sys.argv[1]
if mode == "crash":
    sys.exit(3)
if mode == "chatty":
    for i in range(5):
        print(f"line {i}", flush=True)
        time.sleep(0.2)
    sys.exit(0)
if mode == "web":
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("hello from " + os.environ["PC_PROCESS"]).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
    http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Hello).serve_forever()
if mode == "mortal":  # dies of SIGTERM, as most apps do
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
while True:
    time.sleep(1)
"""


@pytest.fixture(params=["process", "plain", pytest.param("docker", marks=pytest.mark.docker)])
def make_runtime(request, tmp_path) -> Iterator[Callable[[str], Runtime]]:
    """A factory of runtimes of one kind, one per node name; cleans up after.
    "plain": the process runtime where bubblewrap is missing."""
    made: list[Runtime] = []

    def make(node: str) -> Runtime:
        if request.param in ("process", "plain"):
            runtime: Runtime = ProcessRuntime(tmp_path / node / "run", node)
            if request.param == "plain":
                runtime.sandbox = None
        else:
            from peoplescloud.runtime.docker import DockerRuntime

            runtime = DockerRuntime(_docker_client(), node, STACK_IMAGE)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        for s in runtime.status():
            runtime.stop(s.key, timeout=1)


def _docker_client():
    from peoplescloud.docker_engine import connect

    client = connect(30)
    if client is None or not client.images.list(name=STACK_IMAGE):
        why = "no Docker engine answers" if client is None else f"no image {STACK_IMAGE}"
        if os.environ.get("PC_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PC_REQUIRE_DOCKER=1 but {why}")
        pytest.skip(why)
    return client


@pytest.fixture
def slug(tmp_path) -> Path:
    """A tiny built app: one python script, readable by the containers' user."""
    d = tmp_path / "slug"
    d.mkdir()
    (d / "app.py").write_text(textwrap.dedent(APP))
    for p in (d, d / "app.py"):
        p.chmod(0o755)
    return d


def node_name() -> str:
    return "t" + uuid.uuid4().hex[:8]  # unique, so parallel runs on one engine never meet


def spec_for(runtime: Runtime, slug: Path, node: str, mode: str, **kw) -> InstanceSpec:
    python = "/usr/bin/python3" if runtime.name == "docker" else "python3"
    ptype = "web" if mode == "web" else "bot"
    values = dict(
        app="demo",
        process=f"{ptype}.1",
        release="v1",
        command=f"{python} -u app.py {mode}",
        slug=slug,
        node=node,
        env={"GREETING": "hi", "PC_APP": "not-the-user's"},
        memory_mb=128,
        web=mode == "web",
    )
    return InstanceSpec(**{**values, **kw})


wait_for = functools.partial(conftest.wait_for, timeout=30, interval=0.1)
BOT_1 = InstanceKey("demo", "bot.1", "v1")


def one(runtime: Runtime, app: str, process: str) -> InstanceStatus | None:
    found = [s for s in runtime.status() if (s.app, s.process) == (app, process)]
    assert len(found) <= 1
    return found[0] if found else None


def texts(runtime: Runtime, app: str, process: str, release: str = "v1") -> list[str]:
    key = InstanceKey(app, process, release)
    return [line.text for line in runtime.logs(key, follow=False, cursor=None)]


def test_start_runs_with_the_instance_environment(make_runtime, slug):
    node = node_name()
    runtime = make_runtime(node)
    spec = spec_for(runtime, slug, node, "idle")
    started = runtime.start(spec)
    assert (started.app, started.process, started.release) == ("demo", "bot.1", "v1")
    assert started.running and started.exit_code is None and started.started_at.endswith("Z")
    lines = wait_for(
        lambda: [t for t in texts(runtime, "demo", "bot.1") if t.startswith("env ")], "env"
    )
    env = json.loads(lines[0][4:])
    assert env == {
        "GREETING": "hi",
        "PC_APP": "demo",
        "PC_NODE": node,
        "PC_PROCESS": "bot.1",
        "PC_RELEASE": "v1",
    }
    wait_for(lambda: "to stderr" in texts(runtime, "demo", "bot.1"), "stderr in the log")
    status = one(runtime, "demo", "bot.1")
    assert status is not None and status.running and status.address is None


@pytest.mark.docker
@pytest.mark.parametrize("make_runtime", ["docker"], indirect=True)
def test_docker_containers_carry_the_labels(make_runtime, slug):
    node = node_name()
    runtime = make_runtime(node)
    runtime.start(spec_for(runtime, slug, node, "idle"))
    (container,) = _docker_client().containers.list(filters={"label": f"{LABEL_NODE}={node}"})
    assert container.name == f"pc_{node}_demo_bot.1_v1"  # the key carries the release
    assert container.labels[LABEL_APP] == "demo"
    assert container.labels["peoplescloud.release"] == "v1"
    assert container.attrs["Config"]["User"] == "10001:10001"
    assert container.attrs["HostConfig"]["Memory"] == 128 * 1024 * 1024
    assert container.attrs["HostConfig"]["NanoCpus"] == 250_000_000  # spec.cpus 0.25


def test_web_instance_answers_at_its_address(make_runtime, slug):
    node = node_name()
    runtime = make_runtime(node)
    runtime.start(spec_for(runtime, slug, node, "web"))
    status = one(runtime, "demo", "web.1")
    assert status is not None and status.address and status.address.startswith("127.0.0.1:")

    def get() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{status.address}/", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    assert wait_for(get, "the web instance") == "hello from web.1"


@pytest.mark.parametrize("before", ["", "true && "])  # a simple command; a list
def test_stop_sends_sigterm_and_forgets(make_runtime, slug, before: str):
    node = node_name()
    runtime = make_runtime(node)
    spec = spec_for(runtime, slug, node, "idle")
    runtime.start(dataclasses.replace(spec, command=before + spec.command))
    seen: list[str] = []

    def follow() -> None:
        for line in runtime.logs(BOT_1, follow=True, cursor=None):
            seen.append(line.text)

    follower = threading.Thread(target=follow)
    follower.start()
    wait_for(lambda: any(t.startswith("env ") for t in seen), "the app to start")
    runtime.stop(BOT_1, timeout=10)
    assert one(runtime, "demo", "bot.1") is None
    follower.join(30)
    assert not follower.is_alive()  # a follow ends when its instance is gone
    assert seen[-1] == "got SIGTERM"  # the app itself got SIGTERM, not only its shell
    runtime.stop(BOT_1)  # absent: no error


def test_an_app_killed_by_sigterm_leaves_no_shell_message(make_runtime, slug):
    """sh reports a child that a signal killed (`Terminated`): no such line in
    the app's log at each restart of an app that dies of SIGTERM."""
    node = node_name()
    runtime = make_runtime(node)
    runtime.start(spec_for(runtime, slug, node, "mortal"))
    seen: list[str] = []

    def follow() -> None:
        for line in runtime.logs(BOT_1, follow=True, cursor=None):
            seen.append(line.text)

    follower = threading.Thread(target=follow)
    follower.start()
    wait_for(lambda: "to stderr" in seen, "the app to start")
    runtime.stop(BOT_1, timeout=10)
    follower.join(30)
    assert not follower.is_alive()
    assert seen[-1] == "to stderr", seen


def test_crash_shows_the_exit_code_and_start_replaces_it(make_runtime, slug):
    node = node_name()
    runtime = make_runtime(node)
    runtime.start(spec_for(runtime, slug, node, "crash"))
    status = wait_for(
        lambda: (s := one(runtime, "demo", "bot.1")) and not s.running and s, "the crash"
    )
    assert status.exit_code == 3
    restarted = runtime.start(spec_for(runtime, slug, node, "idle", release="v2"))
    assert restarted.running and restarted.release == "v2"
    assert [s.release for s in runtime.status()] == ["v2"]


def test_a_new_runtime_object_readopts_running_instances(make_runtime, slug):
    node = node_name()
    first = make_runtime(node)
    started = first.start(spec_for(first, slug, node, "web"))
    again = make_runtime(node)  # a daemon restart
    status = one(again, "demo", "web.1")
    assert status is not None and status.running
    assert (status.release, status.address, status.detail) == (
        started.release,
        started.address,
        started.detail,
    )
    again.stop(InstanceKey("demo", "web.1", "v1"), timeout=5)
    assert one(again, "demo", "web.1") is None and one(first, "demo", "web.1") is None


def test_logs_resume_after_a_cursor_and_follow_to_the_end(make_runtime, slug):
    node = node_name()
    runtime = make_runtime(node)
    runtime.start(spec_for(runtime, slug, node, "chatty"))
    followed = list(runtime.logs(BOT_1, follow=True, cursor=None))
    texts_seen = [line.text for line in followed]
    assert [t for t in texts_seen if t.startswith("line ")] == [f"line {i}" for i in range(5)]
    assert all(line.timestamp.endswith("Z") and len(line.timestamp) == 20 for line in followed)
    status = one(runtime, "demo", "bot.1")
    assert status is not None and not status.running and status.exit_code == 0
    # Resuming after any line gives exactly the lines after it.
    for i, line in enumerate(followed):
        rest = runtime.logs(BOT_1, follow=False, cursor=line.cursor)
        assert [x.text for x in rest] == texts_seen[i + 1 :]


def test_run_passes_output_stdin_and_exit_code(make_runtime, slug):
    node = node_name()
    runtime = make_runtime(node)
    spec = spec_for(runtime, slug, node, "idle")
    (slug / "echo.py").write_text(
        "import os, sys\n"
        "print('app', os.environ['PC_APP'], 'stdin', sys.stdin.read().strip())\n"
        "sys.exit(7)\n"
    )
    (slug / "echo.py").chmod(0o644)
    python = "/usr/bin/python3" if runtime.name == "docker" else "python3"
    out: list[bytes] = []
    chunks = iter([b"hello ", b"there", b""])
    code = runtime.run(spec, [python, "echo.py"], out.append, stdin=lambda: next(chunks))
    assert code == 7
    assert b"".join(out).decode().strip() == "app demo stdin hello there"
    out.clear()
    assert runtime.run(spec, ["sh", "-c", "echo no input; exit 0"], out.append) == 0
    assert b"".join(out) == b"no input\n"
    assert runtime.status() == []  # a one-off is not an instance


def test_nodes_do_not_see_each_other(make_runtime, slug):
    a, b = node_name(), node_name()
    runtime_a, runtime_b = make_runtime(a), make_runtime(b)
    runtime_a.start(spec_for(runtime_a, slug, a, "idle"))
    runtime_b.start(spec_for(runtime_b, slug, b, "idle"))
    assert [s.process for s in runtime_a.status()] == ["bot.1"]
    runtime_b.stop(BOT_1, timeout=5)
    assert runtime_b.status() == []
    status = one(runtime_a, "demo", "bot.1")
    assert status is not None and status.running


@pytest.mark.parametrize(  # "plain" is left out: it is the unsandboxed fallback
    "make_runtime", ["process", pytest.param("docker", marks=pytest.mark.docker)], indirect=True
)
def test_the_app_cannot_write_its_slug_or_read_the_nodes_files(make_runtime, slug, tmp_path):
    node = node_name()
    runtime = make_runtime(node)
    if isinstance(runtime, ProcessRuntime) and runtime.sandbox is None:
        pytest.skip("no working bubblewrap: plain processes are not sandboxed")
    spec = spec_for(runtime, slug, node, "idle")
    slug.chmod(0o777)  # only the read-only mount can refuse now, not the permissions
    out: list[bytes] = []
    assert runtime.run(spec, ["sh", "-c", "touch new-file"], out.append) != 0
    assert b"Read-only file system" in b"".join(out)
    if isinstance(runtime, ProcessRuntime):
        if Path("/run/docker.sock").exists():  # the engine's socket would be root on the host
            out.clear()
            assert runtime.run(spec, ["sh", "-c", "test -S /run/docker.sock"], out.append) != 0
        runtime.start(spec)  # its run dir now holds a log and a handle
        check = f"ls -A {runtime.run_dir} 2>/dev/null | wc -l"  # absent, or empty
        out.clear()
        assert runtime.run(spec, ["sh", "-c", check], out.append) == 0
        assert b"".join(out).strip() == b"0"


@pytest.mark.parametrize("engine", [None, "a client"])
@pytest.mark.parametrize("wanted", ["auto", "docker", "process"])
def test_open_runtime_picks_by_settings_and_engine(monkeypatch, tmp_path, wanted, engine):
    from peoplescloud import docker_engine
    from peoplescloud.errors import RuntimeFailure
    from peoplescloud.runtime import select
    from peoplescloud.settings import Settings

    monkeypatch.setattr(docker_engine, "connect", lambda timeout: engine)
    settings = Settings(name="n1", home=tmp_path, runtime=wanted)
    said: list[str] = []
    if wanted == "docker" and engine is None:
        with pytest.raises(RuntimeFailure):
            select.open_runtime(settings, said.append)
        return
    runtime = select.open_runtime(settings, said.append)
    expected = "docker" if engine and wanted != "process" else "process"
    assert runtime.name == expected
    assert any("No Docker engine" in m for m in said) == (wanted == "auto" and engine is None)
    if expected == "process":
        assert runtime.run_dir == settings.run_dir and runtime.node == "n1"


def test_process_instances_outlive_the_daemon_that_started_them(tmp_path, slug):
    """The daemon that started them exits: a new one still sees them, learns the exit
    code of one that crashed and can stop one that runs (none is its child)."""
    run_dir = tmp_path / "run"
    starter = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from peoplescloud.runtime.base import InstanceSpec
        from peoplescloud.runtime.process import ProcessRuntime
        runtime = ProcessRuntime(Path({str(run_dir)!r}), "n1")
        for process, mode in (("bot.1", "idle"), ("bot.2", "crash")):
            runtime.start(InstanceSpec("demo", process, "v1", f"python3 -u app.py {{mode}}",
                                       Path({str(slug)!r}), "n1"))
    """)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", starter], cwd=root, check=True, timeout=60)
    runtime = ProcessRuntime(run_dir, "n1")
    crashed = wait_for(lambda: (s := one(runtime, "demo", "bot.2")) and not s.running and s, "exit")
    assert crashed.exit_code == 3
    running = one(runtime, "demo", "bot.1")
    assert running is not None and running.running
    runtime.stop(BOT_1, timeout=10)
    assert [s.process for s in runtime.status()] == ["bot.2"]
    runtime.stop(InstanceKey("demo", "bot.2", "v1"))
    assert runtime.status() == []


def test_a_cancelled_one_off_ends_at_once(make_runtime, slug):
    """The client of `run` left: a command that would print nothing for a minute ends."""
    node = node_name()
    runtime = make_runtime(node)
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    out: list[bytes] = []
    code = runtime.run(
        spec_for(runtime, slug, node, "idle"), ["sleep", "60"], out.append, None, cancel
    )
    assert code != 0  # killed, not the 0 of a sleep that ran its course


@pytest.mark.docker
def test_a_docker_one_off_left_by_a_killed_daemon_is_swept(slug):
    """Nobody reads a one-off's output once its daemon died: the next daemon
    removes the container, and leaves the node's instances alone."""
    from peoplescloud.daemon import sweep_containers
    from peoplescloud.runtime.docker import DockerRuntime

    node = node_name()
    client = _docker_client()
    runtime = DockerRuntime(client, node, STACK_IMAGE)
    spec = spec_for(runtime, slug, node, "idle")
    threading.Thread(
        target=runtime.run, args=(spec, ["sleep", "300"], lambda b: None), daemon=True
    ).start()
    oneoffs = {"label": ["peoplescloud.oneoff=1", f"peoplescloud.node={node}"]}
    try:
        wait_for(lambda: client.containers.list(filters=oneoffs), what="the one-off running")
        runtime.start(spec)
        sweep_containers(client, node)
        assert client.containers.list(all=True, filters=oneoffs) == []
        assert [s.process for s in runtime.status()] == ["bot.1"]
    finally:
        runtime.stop(spec.key, timeout=1)


def test_a_sandboxed_one_off_dies_with_its_daemon(slug, tmp_path):
    """The process runtime's one-off `run` in bubblewrap ends when the daemon dies."""
    node = node_name()
    if ProcessRuntime(tmp_path / "probe", node).sandbox is None:
        pytest.skip("bubblewrap is missing (scripts/test installs it)")
    token = uuid.uuid4().hex  # names the one-off's process
    spec = spec_for(ProcessRuntime(tmp_path / "run", node), slug, node, "idle")
    script = tmp_path / "daemon.py"
    script.write_text(
        "import pickle, sys\n"
        "from peoplescloud.runtime.process import ProcessRuntime\n"
        "spec = pickle.load(open(sys.argv[1], 'rb'))\n"
        f"runtime = ProcessRuntime(sys.argv[2], {node!r})\n"
        f"runtime.run(spec, ['sh', '-c', 'sleep 300; echo {token}'], lambda b: None)\n"
    )
    (tmp_path / "spec.pickle").write_bytes(pickle.dumps(spec))
    args = [str(tmp_path / "spec.pickle"), str(tmp_path / "run")]
    daemon = subprocess.Popen([sys.executable, str(script), *args])

    def one_off_pids() -> list[str]:
        found = subprocess.run(["pgrep", "-f", token], capture_output=True, text=True)
        return found.stdout.split()

    wait_for(one_off_pids, what="the one-off running")
    daemon.kill()
    daemon.wait()
    wait_for(lambda: not one_off_pids(), what="the one-off gone with its daemon")


class _FakeContainer:
    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.short_id = "c" + str(len(labels))
        self.status = "running"
        self.attrs = {
            "State": {"Running": True, "StartedAt": "2026-01-01T00:00:00.000Z"},
            "NetworkSettings": {"Ports": {}},
        }


class _FakeContainers:
    def __init__(self, containers: list[_FakeContainer]):
        self.containers = containers

    def list(self, filters: dict | None = None, **_kw: object) -> list[_FakeContainer]:
        """Docker's label filter: every "key" or "key=value" given must match."""
        wanted = (filters or {}).get("label", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        return [
            c
            for c in self.containers
            if all(w in c.labels or w in {f"{k}={v}" for k, v in c.labels.items()} for w in wanted)
        ]


def test_docker_status_leaves_out_the_nodes_build_containers():
    """A build container carries the node's label (so the node sweeps its leftovers),
    but it is no instance: status() must not list it as one of an app named ""."""
    from builder.docker_executor import BUILD_LABEL
    from peoplescloud.runtime.docker import DockerRuntime

    instance = {LABEL_NODE: "n1", LABEL_APP: "demo", LABEL_PROCESS: "bot.1", LABEL_RELEASE: "v1"}
    containers = [
        _FakeContainer(instance),
        _FakeContainer({BUILD_LABEL: "1", LABEL_NODE: "n1"}),
        _FakeContainer({**instance, "peoplescloud.oneoff": "1"}),
    ]
    client = type("Client", (), {"containers": _FakeContainers(containers)})()
    runtime = DockerRuntime(client, "n1", STACK_IMAGE)  # type: ignore[arg-type]
    assert [(s.app, s.process) for s in runtime.status()] == [("demo", "bot.1")]


@pytest.mark.docker
def test_a_real_build_container_is_no_instance(slug):
    """The same with the engine: a container made as the docker executor makes builds."""
    from builder.docker_executor import BUILD_LABEL
    from peoplescloud.runtime.docker import DockerRuntime

    node = node_name()
    client = _docker_client()
    runtime = DockerRuntime(client, node, STACK_IMAGE)
    build = client.containers.create(
        STACK_IMAGE, ["sleep", "300"], labels={BUILD_LABEL: "1", LABEL_NODE: node}
    )
    try:
        build.start()
        assert runtime.status() == []
    finally:
        build.remove(force=True)


@pytest.mark.parametrize(
    ("command", "replaces_the_shell"),
    [
        ("python bot.py", True),
        ("gunicorn app:app --bind 0.0.0.0:${PORT:-5000} # comment", True),
        ("node 'my server.js'", True),
        ("FOO=1 python bot.py", False),  # `exec FOO=1` would look for a program "FOO=1"
        ("cd src && python bot.py", False),
        ("python -c 'import a; a.run()'", False),
        ("python bot.py 2>&1 > out.log", False),
        ("ulimit -n 64", False),  # a builtin: no program to exec
    ],
)
def test_a_simple_command_replaces_its_shell(command: str, replaces_the_shell: bool):
    trapped = f"trap : TERM INT HUP; {command}"
    assert shell_script(command) == (f"exec {command}" if replaces_the_shell else trapped)


def test_a_command_that_execs_already_is_left_as_it_is():
    """`exec exec python` would look for a program named exec."""
    command = "exec /usr/bin/python3 -m http.server $PORT"
    assert shell_script(command) == command
