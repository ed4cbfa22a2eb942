"""More app kinds and bad input, end to end with the system git and ssh on the
docker runtime."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import commit_all, keygen, make_repo, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def test_node_bot_and_procfile_app_with_router(node_factory, tmp_path: Path):
    node = node_factory("docker")

    work = make_repo(tmp_path, "node-bot")
    r = node.git(work, "push", node.remote("nodebot"), "main")
    assert r.returncode == 0, r.stderr
    assert "remote: -----> Node app detected" in r.stderr or "Node" in r.stderr
    assert "Release v1 running: bot.1" in r.stderr
    wait_for(lambda: "app[bot.1]:" in node.ssh("logs", "nodebot").stdout, what="node bot output")

    work = make_repo(tmp_path, "procfile-two")
    r = node.git(work, "push", node.remote("twoproc"), "main")
    assert r.returncode == 0, r.stderr
    assert "web.1" in r.stderr and "worker.1" in r.stderr
    ps = node.ssh("ps", "twoproc").stdout
    assert "web.1" in ps and "worker.1" in ps

    def get() -> str:
        req = urllib.request.Request(
            f"http://127.0.0.1:{node.router_port}/", headers={"Host": "twoproc.localhost"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    assert get() == "hello from web.1\n"  # at once: the push waited until it answered
    # The router writes a line per request into the app's log.
    wait_for(
        lambda: (
            'app[router]: method=GET path="/" host=twoproc.localhost'
            in node.ssh("logs", "twoproc").stdout
        ),
        what="the router's line in the app's log",
    )

    # ps:scale adds a second web instance; the router uses both.
    assert node.ssh("ps:scale", "twoproc", "web=2").returncode == 0
    wait_for(lambda: {get() for _ in range(4)} >= {"hello from web.1\n", "hello from web.2\n"})
    assert node.ssh("ps:stop", "twoproc").returncode == 0
    assert "stopped" in node.ssh("apps").stdout
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.router_port}/", headers={"Host": "twoproc.localhost"}
    )
    with pytest.raises(urllib.error.HTTPError) as stopped:
        urllib.request.urlopen(req, timeout=5)
    assert stopped.value.code == 503
    assert stopped.value.read().startswith(b"twoproc has no running web process\nrequest id: ")

    assert node.ssh("apps:destroy", "twoproc").returncode != 0  # needs --confirm
    assert node.ssh("apps:destroy", "twoproc", "--confirm", "twoproc").returncode == 0
    assert "twoproc" not in node.ssh("apps").stdout


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        ("nothing", "requirements.txt"),  # says what it looked for
        ("bad-procfile", "Procfile"),
        ("node-no-start", "start"),
    ],
)
def test_builds_that_must_fail(node_factory, tmp_path: Path, sample: str, reason: str):
    node = node_factory("docker")
    work = make_repo(tmp_path, sample)
    r = node.git(work, "push", node.remote("broken"), "main")
    assert r.returncode != 0
    assert reason in r.stderr
    # The rejected push left the repo as it was: main was not created.
    assert node.git(work, "ls-remote", node.remote("broken")).stdout.strip() == ""


def test_bad_input_gets_clear_errors(node_factory, tmp_path: Path):
    node = node_factory("docker")
    work = make_repo(tmp_path, "procfile-two")

    r = node.git(work, "push", node.remote("Bad_Name"), "main")
    assert r.returncode != 0 and "invalid app name" in r.stderr

    # A new app exists once main deploys: another branch first creates nothing.
    r = node.git(work, "push", node.remote("branchy"), "main:feature")
    assert r.returncode != 0 and "push main first: branchy has no deployed branch yet" in r.stderr
    assert "branchy" not in node.ssh("apps").stdout

    r = node.ssh("frobnicate")
    assert r.returncode == 2 and "help" in r.stderr
    r = node.ssh("logs")
    assert r.returncode == 2 and "usage" in r.stderr.lower()

    stranger = keygen(tmp_path / "stranger")
    cmd = node.ssh_command.replace(str(node.key), str(stranger)).split()
    r = subprocess.run([*cmd, "pc@127.0.0.1", "apps"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_kill_9_during_a_build_loses_nothing(node_factory, tmp_path: Path):
    node = node_factory("docker")
    work = make_repo(tmp_path, "python-bot")
    assert node.git(work, "push", node.remote("mybot"), "main").returncode == 0
    ps_before = node.ssh("ps", "mybot").stdout

    # A build that takes a while: kill the daemon while it runs.
    (work / "requirements.txt").write_text("six==1.16.0\n")
    (work / "bot.py").write_text((work / "bot.py").read_text() + "\n# v2\n")
    commit_all(work, "slow build")
    pusher = subprocess.Popen(
        ["git", "push", node.remote("mybot"), "main"],
        cwd=work,
        env={**node.env, "GIT_SSH_COMMAND": node.ssh_command},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert pusher.stderr is not None
    for line in pusher.stderr:
        if "Installing" in line:
            break
    node.stop(signal.SIGKILL)
    assert pusher.wait(timeout=60) != 0

    node.start()
    assert node.ssh("ps", "mybot").stdout == ps_before  # the old release still runs
    r = node.git(node.home / "repos" / "mybot.git", "fsck", "--no-dangling")
    assert r.returncode == 0, r.stdout + r.stderr  # the server's repo is consistent
    r = node.git(work, "push", node.remote("mybot"), "main")
    assert r.returncode == 0, r.stderr
    assert "Release v2 running" in r.stderr
