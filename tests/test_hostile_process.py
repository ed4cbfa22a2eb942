"""Hostile apps on the process runtime, and the rule that keeps other people's
code off a node whose runtime cannot keep them apart.

The sandbox tests need a working bubblewrap (scripts/test installs it) and
skip without one, unless PC_REQUIRE_SANDBOX=1. Every flood here is bounded in
size and time, and runs only under the limit it tests.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import HostExecutor
from peoplescloud.deploy import Deployer
from peoplescloud.errors import Forbidden
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime import lease, sandbox
from peoplescloud.runtime.base import Capabilities, InstanceKey, InstanceSpec
from peoplescloud.runtime.process import ProcessRuntime
from peoplescloud.service import Node
from peoplescloud.settings import Settings
from peoplescloud.state import App, State, User
from peoplescloud.store import LocalStore
from tests import conftest
from tests.fakes import FakeBus, FakeCluster, FakeRuntime, release

wait_for = functools.partial(conftest.wait_for, timeout=30, interval=0.1)
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nfake-key-for-the-test\n"


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory outside /tmp (which every sandbox replaces anyway), like /root or
    /home: an admin's ~/.ssh and the node's home are made in it."""
    top = Path("/var/tmp") / f"pc-hostile-{uuid.uuid4().hex[:8]}"
    top.mkdir(mode=0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def runtime(outside: Path) -> Iterator[ProcessRuntime]:
    made = ProcessRuntime(outside / "node" / "run", "n1", log_mb=1)
    if made.sandbox is None:
        if os.environ.get("PC_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"PC_REQUIRE_SANDBOX=1 but {made.capabilities.why}")
        pytest.skip(made.capabilities.why)
    yield made
    for s in made.status():
        made.stop(s.key, timeout=2)


@pytest.fixture
def slug(outside: Path) -> Path:
    d = outside / "node" / "slugs" / "abc"
    d.mkdir(parents=True)
    return d


def spec(slug: Path, command: str, **kw) -> InstanceSpec:
    values = dict(app="evil", process="bot.1", release="v1", command=command, slug=slug, node="n1")
    return InstanceSpec(**{**values, **kw})


def plant_secrets(outside: Path) -> list[Path]:
    """An admin's private key and the node's state, readable by anyone on the host:
    only the sandbox's allow-list can keep them from an app."""
    ssh = outside / "admin" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text(KEY)
    state = outside / "node" / "state.json"
    state.parent.mkdir(exist_ok=True)
    state.write_text('{"secret": "config vars of every app"}')
    for path in (ssh / "id_ed25519", state):
        path.chmod(0o644)
    return [ssh / "id_ed25519", state]


def output(runtime: ProcessRuntime, s: InstanceSpec, argv: list[str]) -> tuple[int, str]:
    out: list[bytes] = []
    code = runtime.run(s, argv, out.append)
    return code, b"".join(out).decode("utf-8", "replace")


def test_an_app_finds_neither_the_hosts_keys_nor_the_nodes_files(runtime, slug, outside):
    secrets = plant_secrets(outside)
    look = " ; ".join(f"cat {p}" for p in secrets) + f" ; ls -A {outside} ; ls /root /home"
    code, said = output(runtime, spec(slug, "true"), ["sh", "-c", look])
    assert "fake-key-for-the-test" not in said and "config vars" not in said
    assert "admin" not in said.replace(str(outside / "admin"), "")  # only in the errors
    # An instance, too (the shim's sandbox), found by its log.
    runtime.start(spec(slug, look))
    key = InstanceKey("evil", "bot.1", "v1")
    wait_for(lambda: not runtime.status()[0].running, "the instance to end")
    logged = "\n".join(line.text for line in runtime.logs(key, follow=False, cursor=None))
    assert "No such file" in logged and "fake-key-for-the-test" not in logged


def test_an_app_is_not_root_inside_nor_on_the_host(runtime, slug):
    show = "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; sleep 30"
    runtime.start(spec(slug, show))
    key = InstanceKey("evil", "bot.1", "v1")
    lines = wait_for(
        lambda: (t := [x.text for x in runtime.logs(key, False, None)]) and len(t) >= 4 and t,
        "the app's report",
    )
    assert lines[0] == "65534"
    assert all(line.split()[1] == "0000000000000000" for line in lines[1:4])
    handle = json.loads(runtime._files(key)["handle"].read_text())
    sleeper = wait_for(
        lambda: [p for p in lease.group_members(handle["pid"]) if _comm(p) == "sleep"], "sleep"
    )
    uids = Path(f"/proc/{sleeper[0]}/status").read_text().split("Uid:")[1].split()[:4]
    assert "0" not in uids  # the host's view: not root, whatever it is inside
    code, said = output(runtime, spec(slug, "true"), ["sh", "-c", "mount -o remount,rw /"])
    assert code != 0


def test_config_vars_reach_the_app_not_the_shim_nor_the_sandbox(runtime, slug, monkeypatch):
    env = {"LD_PRELOAD": "/nonexistent/evil.so", "GREETING": "hi"}
    runtime.start(spec(slug, "echo app sees $LD_PRELOAD; sleep 30", env=env))
    key = InstanceKey("evil", "bot.1", "v1")
    wait_for(
        lambda: any(x.text == "app sees /nonexistent/evil.so" for x in runtime.logs(key, 0, None)),
        "the app to get its config vars",
    )
    handle = json.loads(runtime._files(key)["handle"].read_text())
    environ = Path(f"/proc/{handle['pid']}/environ").read_bytes()
    assert b"LD_PRELOAD" not in environ and b"GREETING" not in environ  # the shim's
    beside = [p for p in runtime._files(key)["dir"].iterdir() if not p.name.endswith(".log")]
    assert not any(b"evil.so" in p.read_bytes() for p in beside)  # on no named file
    # A one-off: what is started on the host gets a clean environment.
    started: list[dict[str, str]] = []
    real = subprocess.Popen

    def popen(*args, **kw):
        started.append(kw.get("env") or {})
        return real(*args, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    code, said = output(runtime, spec(slug, "true", env=env), ["sh", "-c", "echo $GREETING"])
    assert code == 0 and said.strip().endswith("hi")
    assert started and all("LD_PRELOAD" not in e and "GREETING" not in e for e in started)


def test_an_app_is_held_to_its_memory_processes_and_file_size(outside, slug):
    limits = sandbox.Limits(file_mb=1, pids=40, tmp_mb=64)
    runtime = ProcessRuntime(outside / "node" / "run", "n1", limits=limits)
    if runtime.sandbox is None:
        pytest.skip(runtime.capabilities.why)
    s = spec(slug, "true", memory_mb=64)
    grab = ["python3", "-c", "b = bytearray(200 << 20); print('got 200 MB')"]
    code, said = output(runtime, s, grab)
    assert code != 0 and "MemoryError" in said
    code, said = output(runtime, s, ["sh", "-c", "head -c 3000000 /dev/zero > /tmp/big"])
    assert code != 0
    forks = "for i in $(seq 80); do sleep 3 & done 2>&1; echo started $(jobs -p | wc -l)"
    code, said = output(runtime, s, ["sh", "-c", forks])
    assert "started 80" not in said


def test_the_log_rotates_and_stays_bounded(runtime, slug):
    """4 MB of output with a 1 MB limit: at most this file and one old one remain,
    and reading on from a cursor crosses into the next file."""
    flood = textwrap.dedent("""
        import sys
        for i in range(40000):
            sys.stdout.write(f"{i:08d} " + "x" * 90 + "\\n")
    """)
    (slug / "flood.py").write_text(flood)
    (slug / "flood.py").chmod(0o644)
    runtime.start(spec(slug, "python3 flood.py"))
    key = InstanceKey("evil", "bot.1", "v1")
    wait_for(lambda: not runtime.status()[0].running, "the flood to end")
    base = runtime._files(key)["log"]
    files = list(base.parent.glob(f"{base.name}.*.log"))
    assert len(files) == 2
    assert sum(f.stat().st_size for f in files) <= 2 * (1 << 20) + 256
    lines = list(runtime.logs(key, follow=False, cursor=None))
    numbers = [int(line.text.split()[0]) for line in lines]
    assert numbers == list(range(numbers[0], 40000))  # whole, in order, to the end
    old_file = [
        line for line in lines if line.cursor.split(":")[1] == lines[0].cursor.split(":")[1]
    ]
    after = list(runtime.logs(key, follow=False, cursor=old_file[-1].cursor))
    assert [line.text for line in after] == [line.text for line in lines[len(old_file) :]]


def test_a_build_step_is_sandboxed_with_a_clean_environment(outside, monkeypatch):
    box, why = sandbox.probe(65534)
    if box is None:
        pytest.skip(why)
    secrets = plant_secrets(outside)
    monkeypatch.setenv("PC_DAEMON_SECRET", "swarm-secret")
    app, cache = outside / "node" / "tmp" / "build" / "slug", outside / "node" / "cache"
    app.mkdir(parents=True)
    executor = HostExecutor(jail=box.for_builds(sandbox.Limits(pids=256)))
    said: list[str] = []
    look = " ; ".join(f"cat {p}" for p in secrets)
    step = f"id -u; env; {look}; touch made-here {cache}/elsewhere ../escaped; true"
    executor.run(["sh", "-c", step], app, cache, said.append)
    text = "\n".join(said)
    assert said[0].strip() == "65534"
    assert "swarm-secret" not in text and "fake-key-for-the-test" not in text
    assert (app / "made-here").exists()
    assert not (cache / "elsewhere").exists() and not (app.parent / "escaped").exists()


# -- where the runtime cannot keep tenants apart: only the host's apps ------------


class SharedRuntime(FakeRuntime):
    capabilities = Capabilities(False, "apps share the host's network")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    settings = Settings(home=tmp_path, name="n1")
    state = State(settings.state_file)
    store = LocalStore(settings.store_dir)
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text("")
    cid = store.add(slug)
    with state.change() as s:
        s.users["bob"] = User(name="bob", keys=["ssh-ed25519 B"])
        s.users["host"] = User(name="host", keys=["ssh-ed25519 H"], admin=True)
        app = App(name="bobbot", owner="bob", created="t", scale={"bot": 1})
        app.releases.append(release(1, cid))
        app.current = 1
        s.apps["bobbot"] = app
    runtime, bus, cluster = SharedRuntime(), FakeBus(), FakeCluster(state, store)
    reconciler = Reconciler(settings, cluster, runtime, bus)  # type: ignore[arg-type]
    deployer = Deployer(settings, cluster, reconciler, bus, executor=None)  # type: ignore[arg-type]
    return Node(settings, cluster, runtime, reconciler, deployer, bus)  # type: ignore[arg-type]


def test_a_node_that_cannot_isolate_runs_only_its_hosts_apps(node: Node):
    message = (
        "this node runs only its host's apps (apps run as plain processes here: apps share "
        "the host's network); ask the host for a node with Docker"
    )
    refused = [
        lambda: node.repo_for("bob", "newbot", write=True),
        lambda: node.repo_for("bob", "bobbot", write=True),
        lambda: node.deploy("bob", "bobbot", "0" * 40, lambda _line: None),
        lambda: node.run("bob", "bobbot", ["true"], lambda _b: None, None),
    ]
    for call in refused:
        with pytest.raises(Forbidden) as refusal:
            call()
        assert str(refusal.value) == message
    assert "newbot" not in node.state.read().apps
    node.repo_for("host", "hostbot", write=True)  # the host's own app may come
    assert node.repo_for("bob", "bobbot", write=False).name == "bobbot.git"  # clone: allowed


def test_doctor_says_a_process_node_runs_only_its_hosts_apps(tmp_path: Path):
    from peoplescloud.doctor import check_tenants

    found = check_tenants(Settings(home=tmp_path, runtime="process"), engine=True)
    assert not found.ok and not found.required
    assert found.detail.startswith("this node runs only its host's apps")
    assert check_tenants(Settings(home=tmp_path), engine=True).ok


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
