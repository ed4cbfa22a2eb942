"""The lease is enforced next to each instance, with no daemon around.

The test plays the daemon's part only by writing the lease file; no daemon
process exists, as with one frozen or dead. Each instance prints the time every
half second, so "it outlived the lease's first end" is read from its own output.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peoplescloud.runtime import lease
from peoplescloud.runtime.base import InstanceSpec, Runtime
from peoplescloud.runtime.process import ProcessRuntime
from tests.test_runtime_suite import STACK_IMAGE, _docker_client, node_name, one, texts, wait_for

LEASE = 2.0  # seconds of each lease the tests write

APP = """
import signal, sys, time

def bye(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, bye if sys.argv[1] == "polite" else signal.SIG_IGN)
print("started", flush=True)
while True:
    print(f"tick {time.time():.3f}", flush=True)
    time.sleep(0.5)
"""


@pytest.fixture(params=["process", "plain", pytest.param("docker", marks=pytest.mark.docker)])
def runtime(request, tmp_path) -> Iterator[Runtime]:
    """A runtime of one kind, with a lease directory of its own; cleans up after.
    "plain": the process runtime where bubblewrap is missing."""
    node, lease_dir = node_name(), tmp_path / "lease"
    made: Runtime
    if request.param == "docker":
        from peoplescloud.runtime.docker import DockerRuntime

        made = DockerRuntime(_docker_client(), node, STACK_IMAGE, lease_dir=lease_dir)
    else:
        made = ProcessRuntime(tmp_path / "run", node, lease_dir=lease_dir)
        if request.param == "plain":
            made.sandbox = None
    yield made
    for s in made.status():
        made.stop(s.key, timeout=1)


@pytest.fixture
def slug(tmp_path) -> Path:
    d = tmp_path / "slug"
    d.mkdir()
    (d / "app.py").write_text(textwrap.dedent(APP))
    for p in (d, d / "app.py"):
        p.chmod(0o755)
    return d


def start(runtime: Runtime, slug: Path, mode: str = "polite") -> None:
    python = "/usr/bin/python3" if runtime.name == "docker" else "python3"
    spec = InstanceSpec("demo", "bot.1", "v1", f"{python} -u app.py {mode}", slug, runtime.node)
    runtime.start(spec)


def lease_dir(runtime: Runtime) -> Path:
    assert runtime.lease_dir is not None  # type: ignore[attr-defined]
    return runtime.lease_dir  # type: ignore[attr-defined]


def ran_past(runtime: Runtime, moment: float) -> bool:
    """The app printed a tick after `moment`."""
    ticks = [t for t in texts(runtime, "demo", "bot.1") if t.startswith("tick ")]
    return any(float(t.split()[1]) > moment for t in ticks)


def ended(runtime: Runtime) -> Callable[[], object]:
    return lambda: (s := one(runtime, "demo", "bot.1")) and not s.running and s


def test_lease_file_round_trip(tmp_path):
    d = tmp_path / "lease"
    assert lease.read_lease(d) is None
    lease.write_lease(d, 1234.5)
    assert lease.read_lease(d) == 1234.5
    assert [p.name for p in d.iterdir()] == ["lease"]  # no temp file left behind
    assert (d.stat().st_mode & 0o777, (d / "lease").stat().st_mode & 0o777) == (0o755, 0o644)
    lease.clear_lease(d)
    assert lease.read_lease(d) is None
    lease.clear_lease(d)  # absent: no error
    (d / "lease").write_text("garbage")
    assert lease.read_lease(d) == 0.0  # unreadable counts as expired, never as "no lease"


def test_no_lease_file_means_no_enforcement(runtime, slug):
    later = time.time() + LEASE + 1  # as far as a lease of the other tests lasts
    start(runtime, slug)
    wait_for(lambda: ran_past(runtime, later), "the app to run on")
    status = one(runtime, "demo", "bot.1")
    assert status is not None and status.running


def test_renewals_keep_it_running_and_a_lapsed_lease_ends_it(runtime, slug):
    first_end = time.time() + LEASE
    lease.write_lease(lease_dir(runtime), first_end)
    start(runtime, slug)
    renewing = threading.Event()
    renewing.set()

    def renew() -> None:  # the daemon's part: rewrite the lease further, every 0.5 s
        while renewing.is_set():
            lease.write_lease(lease_dir(runtime), time.time() + LEASE)
            time.sleep(0.5)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        wait_for(lambda: ran_past(runtime, first_end + 1), "the app to outlive the first lease")
        status = one(runtime, "demo", "bot.1")
        assert status is not None and status.running
    finally:
        renewing.clear()
        renewer.join()
    last_end = lease.read_lease(lease_dir(runtime))
    assert last_end is not None
    status = wait_for(ended(runtime), "the lease to end the app")
    assert status.exit_code == lease.LEASE_EXIT
    lines = texts(runtime, "demo", "bot.1")
    assert "got SIGTERM" in lines  # a graceful end: the app's own handler ran
    assert lines[-1] == lease.expiry_message(last_end, "bot.1")
    assert lines[-1].startswith("lease expired at ") and lines[-1].endswith("run bot.1")


def test_an_app_ignoring_sigterm_is_killed(runtime, slug):
    until = time.time() + LEASE
    lease.write_lease(lease_dir(runtime), until)
    start(runtime, slug, mode="stubborn")
    status = wait_for(ended(runtime), "the lease to end the app", timeout=60)
    assert status.exit_code == lease.LEASE_EXIT
    lines = texts(runtime, "demo", "bot.1")
    assert "got SIGTERM" not in lines and lines[-1] == lease.expiry_message(until, "bot.1")


def test_an_expired_lease_does_not_let_it_start(runtime, slug):
    until = time.time() - 1
    lease.write_lease(lease_dir(runtime), until)
    start(runtime, slug)
    status = wait_for(ended(runtime), "the instance to end")
    assert status.exit_code == lease.LEASE_EXIT
    assert texts(runtime, "demo", "bot.1") == [lease.expiry_message(until, "bot.1")]


@pytest.mark.parametrize("engine", [None, "a client"])
def test_open_runtime_gives_the_runtime_the_nodes_lease_dir(monkeypatch, tmp_path, engine):
    from peoplescloud import docker_engine
    from peoplescloud.runtime import select
    from peoplescloud.settings import Settings

    monkeypatch.setattr(docker_engine, "connect", lambda timeout: engine)
    settings = Settings(name="n1", home=tmp_path)
    runtime = select.open_runtime(settings, lambda _: None)
    assert runtime.name == ("docker" if engine else "process")
    assert runtime.lease_dir == settings.run_dir / "lease"  # type: ignore[attr-defined]
