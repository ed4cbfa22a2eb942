"""pc-shim's own edges, driven directly (the runtimes' suites drive it through
the runtimes): the lease (SIGTERM the grace before its end, SIGKILL at it, no
file = no enforcement), signals, exit codes, log rotation, and its part as a container's
init, run here as PID 1 of a pid namespace of its own (`unshare`).

Every wait is bounded; the lease checks run every 0.1 s to keep them short.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime import lease, sandbox, shim
from tests.conftest import wait_for

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")
APP = """
import signal, sys, time
mode = sys.argv[1]
def term(*_):
    print("got SIGTERM", flush=True)
    if mode == "polite":
        sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("started", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def program() -> str:
    return str(shim.binary())


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "lease").mkdir()
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    return {"lease": tmp_path / "lease", "log": tmp_path / "bot", "exit": tmp_path / "exit"}


def run(program: str, files: dict[str, Path], command: list[str], *opts: str) -> subprocess.Popen:
    """pc-shim as the process runtime runs it (its own session), checking the lease
    every 0.1 s, the output logged, the exit code written."""
    argv = [program, "-L", str(files["lease"]), "-p", "bot.1", "-c", "0.1", "-g", "1"]
    argv += ["-o", str(files["log"]), "-x", str(files["exit"]), *opts, "--", *command]
    return subprocess.Popen(argv, start_new_session=True)


def logged(files: dict[str, Path], number: int = 0) -> list[str]:
    path = files["log"].with_name(f"bot.{number}.log")
    if not path.exists():
        return []  # not made yet
    return [STAMP.sub("", line) for line in path.read_text().splitlines()]


def app(files: dict[str, Path], mode: str) -> list[str]:
    return [sys.executable, "-u", str(files["log"].with_name("app.py")), mode]


def test_an_ending_lease_sends_sigterm_the_grace_before_its_end_then_sigkill(program, files):
    until = time.time() + 2.5
    lease.write_lease(files["lease"], until)
    # A child in the background too: the lease ends every process of the group.
    shim_ = run(
        program, files, ["sh", "-c", f"sleep 300 & exec {' '.join(app(files, 'stubborn'))}"]
    )
    wait_for(lambda: "started" in logged(files), "the app to start", timeout=30)
    assert shim_.wait(timeout=30) == lease.LEASE_EXIT
    lines = logged(files)
    assert "got SIGTERM" in lines  # asked first
    assert lines[-1] == lease.expiry_message(until, "bot.1")
    assert files["exit"].read_text() == str(lease.LEASE_EXIT)
    assert lease.group_members(shim_.pid) == []  # the stubborn app and its sleep: killed
    term, end = (files["log"].with_name("bot.0.log").read_text().splitlines()[i] for i in (-2, -1))
    assert _seconds(end) - _seconds(term) >= 0.9  # the app had its grace (1 s) first
    assert _seconds(end) >= until  # killed at the lease's end, not before


@pytest.mark.parametrize("mode", ["stubborn", "polite"])
def test_nothing_runs_past_the_leases_end_however_rarely_it_looks(program, files, mode):
    """The swarm starts the instance elsewhere right after the lease's end (plus
    clock slack): the shim must not wait for its next periodic look (60 s here)."""
    until = time.time() + 2
    lease.write_lease(files["lease"], until)
    shim_ = run(program, files, app(files, mode), "-c", "60")
    assert shim_.wait(timeout=30) == lease.LEASE_EXIT
    assert time.time() < until + lease.KILL_LAG + 0.5  # (slack for a busy machine's wake-up)
    assert "got SIGTERM" in logged(files)  # asked first, GRACE before the end


def test_a_renewal_seen_before_the_grace_keeps_it_running(program, files):
    """GRACE before the end it knows, the shim reads the lease again: a lease the
    daemon renewed meanwhile goes on, with no SIGTERM."""
    first_end = time.time() + 2
    lease.write_lease(files["lease"], first_end)
    shim_ = run(program, files, app(files, "polite"), "-c", "60")
    try:
        wait_for(lambda: "started" in logged(files), "the app to start", timeout=30)
        lease.write_lease(files["lease"], first_end + 60)
        time.sleep(max(0.0, first_end + 0.5 - time.time()))
        assert shim_.poll() is None and "got SIGTERM" not in logged(files)
    finally:
        os.killpg(shim_.pid, signal.SIGKILL)
        shim_.wait()


def test_an_app_that_ends_on_sigterm_is_not_kept_waiting_for_the_lease_end(program, files):
    until = time.time() + 3
    lease.write_lease(files["lease"], until)
    shim_ = run(program, files, app(files, "polite"), "-g", "2")
    assert shim_.wait(timeout=30) == lease.LEASE_EXIT
    assert time.time() < until - 0.5  # SIGTERM at until - 2, gone soon after
    assert logged(files)[-2] == "got SIGTERM"


def test_a_lease_ending_within_the_grace_does_not_let_it_start(program, files):
    lease.write_lease(files["lease"], time.time() + 0.8)  # (the grace is 1 s)
    shim_ = run(program, files, ["sh", "-c", "echo ran"])
    assert shim_.wait(timeout=30) == lease.LEASE_EXIT
    assert "ran" not in logged(files)


def test_no_lease_file_means_no_enforcement(program, files):
    shim_ = run(program, files, ["sh", "-c", "sleep 1; echo done"])
    assert shim_.wait(timeout=30) == 0
    assert logged(files) == ["done"]


def test_a_lease_file_it_cannot_read_counts_as_expired(program, files):
    (files["lease"] / "lease").write_text("garbage")
    shim_ = run(program, files, ["sh", "-c", "echo ran"])
    assert shim_.wait(timeout=30) == lease.LEASE_EXIT
    assert logged(files) == [lease.expiry_message(0, "bot.1")]  # it never started


@pytest.mark.parametrize(("script", "code"), [("exit 3", 3), ("kill -KILL $$", 128 + 9)])
def test_the_exit_code_is_passed_on_and_written(program, files, script, code):
    shim_ = run(program, files, ["sh", "-c", script])
    assert shim_.wait(timeout=30) == code
    assert files["exit"].read_text() == str(code)


def test_a_sigterm_to_the_group_reaches_the_app_and_the_shim_stays_to_record_it(program, files):
    shim_ = run(program, files, app(files, "polite"))
    wait_for(lambda: "started" in logged(files), "the app to start", timeout=30)
    os.killpg(shim_.pid, signal.SIGTERM)  # how the daemon stops an instance
    assert shim_.wait(timeout=30) == 0
    assert logged(files)[-1] == "got SIGTERM" and files["exit"].read_text() == "0"


def test_the_log_is_timestamped_and_rotated_keeping_one_old_file(program, files):
    script = "for i in $(seq 1 200); do echo line$i; done"
    shim_ = run(program, files, ["sh", "-c", script], "-r", "1000")
    assert shim_.wait(timeout=30) == 0
    numbers = sorted(int(p.name.split(".")[1]) for p in files["log"].parent.glob("bot.*.log"))
    assert len(numbers) == 2 and numbers[1] == numbers[0] + 1 and numbers[0] > 3
    old, new = (files["log"].with_name(f"bot.{n}.log").read_text() for n in numbers)
    assert all(STAMP.match(x) for x in (old + new).splitlines())
    assert len(old) >= 1000 > len(new)  # rotated past the limit, right after the line
    kept = logged(files, numbers[0]) + logged(files, numbers[1])
    assert kept == [f"line{i}" for i in range(201 - len(kept), 201)]  # the newest, in order


def test_a_long_line_is_logged_in_64_kib_pieces(program, files):
    shim_ = run(program, files, ["sh", "-c", "head -c 70000 /dev/zero | tr '\\0' y"])
    assert shim_.wait(timeout=30) == 0
    assert logged(files) == ["y" * 65536, "y" * (70000 - 65536)]


def test_the_environment_comes_from_a_descriptor_to_the_command_alone(program, files):
    env = sandbox.data_file(b"GREETING=hi there\0PATH=/usr/bin:/bin\0")
    with env:
        argv = [program, "-o", str(files["log"]), "-e", str(env.fileno()), "--", "env"]
        done = subprocess.run(argv, pass_fds=[env.fileno()], env={"SHIMS_OWN": "1"})
    assert done.returncode == 0
    assert sorted(logged(files)) == ["GREETING=hi there", "PATH=/usr/bin:/bin"]


def test_the_descriptors_it_was_given_are_the_commands_alone(program, files):
    """The sandbox's data files (one holds the config vars) stay open in the app's
    setup, never for the instance's life in the shim."""
    with sandbox.data_file(b"SECRET=1\0") as given:
        target = os.readlink(f"/proc/self/fd/{given.fileno()}")
        shim_ = subprocess.Popen(
            [program, "-o", str(files["log"]), "--", "sleep", "3"],
            pass_fds=[given.fileno()],
            start_new_session=True,
        )
    try:
        wait_for(lambda: lease.group_members(shim_.pid)[1:], "the command to start", timeout=30)
        time.sleep(0.2)
        held = [os.readlink(fd) for fd in Path(f"/proc/{shim_.pid}/fd").iterdir()]
        assert target not in held
    finally:
        os.killpg(shim_.pid, signal.SIGKILL)
        shim_.wait()


def test_init_mode_is_refused_outside_pid_1(program):
    done = subprocess.run([program, "-i", "--", "true"], capture_output=True, text=True)
    assert done.returncode == 2 and "PID 1" in done.stderr


def as_pid_1(program: str, *argv: str) -> subprocess.Popen:
    """pc-shim as the init of a new pid namespace (as in a container), output piped."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    outer = ["unshare", *user, "--pid", "--fork", "--kill-child", "--mount-proc"]
    return subprocess.Popen(
        [*outer, program, "-i", "-c", "0.1", "-g", "1", *argv],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def init_pid(outer: subprocess.Popen) -> int:
    """The host's pid of the namespace's PID 1 (unshare's child)."""
    children = wait_for(
        lambda: Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split(),
        "unshare to fork",
        timeout=30,
    )
    return int(children[0])


@pytest.fixture
def unshare() -> None:
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    if done.returncode != 0:
        pytest.skip("no pid namespaces here (unshare --pid)")


def test_as_init_it_passes_sigterm_on_to_every_process_and_its_exit_code(program, unshare):
    # sh waits for its background sleep: only a signal to every process reaches both.
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; sleep 300 & wait"
    outer = as_pid_1(program, "--", "sh", "-c", script)
    assert outer.stdout is not None
    assert outer.stdout.readline() == "ready\n"
    os.kill(init_pid(outer), signal.SIGTERM)  # what `docker stop` does
    assert outer.wait(timeout=30) == 7
    assert outer.stdout.read() == "got TERM\n"


def test_as_init_it_reaps_orphans(program, unshare):
    # The inner sh ends at once: its sleep becomes the init's child, and ends in 0.2 s.
    outer = as_pid_1(program, "--", "sh", "-c", "sh -c 'sleep 0.2 &'; echo ready; sleep 300")
    assert outer.stdout is not None and outer.stdout.readline() == "ready\n"
    pid = init_pid(outer)
    try:
        time.sleep(1.5)
        zombies = [p for p in _children(pid) if _state(p) == "Z"]
        assert zombies == []
    finally:
        os.killpg(outer.pid, signal.SIGKILL)
        outer.wait()


def test_as_init_an_ending_lease_ends_every_process(program, unshare, files):
    until = round(time.time() + 2.5, 3)  # as write_lease writes it
    lease.write_lease(files["lease"], until)
    outer = as_pid_1(program, "-L", str(files["lease"]), "-p", "bot.1", "--", "sh", "-c",
                     "trap '' TERM; echo ready; sleep 300 & wait")  # fmt: skip
    assert outer.stdout is not None and outer.stdout.readline() == "ready\n"
    assert outer.wait(timeout=30) == lease.LEASE_EXIT
    assert outer.stdout.read() == lease.expiry_message(until, "bot.1") + "\n"


def _seconds(line: str) -> float:
    stamp = line.split(" ", 1)[0]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:-1])


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(c) for t in tasks for c in (t / "children").read_text().split()]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_without_a_compiler_it_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shim.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeFailure, match="no C compiler .*apt-get install -y gcc libc6-dev"):
        shim.build(tmp_path / "pc-shim")


def test_it_is_built_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PC_CACHE_DIR", str(tmp_path))
    shim.binary.cache_clear()
    try:
        built = shim.binary()
        assert built.parent == tmp_path / "bin" and os.access(built, os.X_OK)
        assert subprocess.run([built, "--", "true"]).returncode == 0
        assert [p.name for p in built.parent.iterdir()] == [built.name]  # no partial left
    finally:
        shim.binary.cache_clear()
