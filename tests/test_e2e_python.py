"""A Python bot's life on one node, with the system git and ssh: push, logs,
config, run, a failed build, rollback, logs -f, a daemon restart. Once on the
docker runtime and once on the process runtime."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import NodeProc, commit_all, make_repo, wait_for

# The bot says who it is and the config it sees, then ticks; `TICK` changes per push.
BOT = """\
import os, sys, time
import six
env = {k: os.environ.get(k) for k in ("PC_APP", "PC_PROCESS", "PC_RELEASE", "PC_NODE", "TOKEN")}
print("logged in", " ".join(f"{k}={v}" for k, v in env.items()), "uid", os.getuid(), flush=True)
while True:
    print("TICK", flush=True)
    time.sleep(0.5)
"""


def push(node: NodeProc, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return node.git(work, "push", node.remote("mybot"), "main", *extra)


def logs(node: NodeProc, *args: str) -> str:
    r = node.ssh("logs", "mybot", "-n", "500", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def scenario(node: NodeProc, tmp_path: Path) -> None:
    work = make_repo(tmp_path, "python-bot")
    (work / "bot.py").write_text(BOT.replace("TICK", "tick-one"))
    commit_all(work, "bot that shows its env")

    r = push(node, work)
    assert r.returncode == 0, r.stderr
    assert "remote: -----> Python app detected" in r.stderr
    assert "remote: -----> Release v1 running: bot.1" in r.stderr
    line = wait_for(
        lambda: [x for x in logs(node).splitlines() if "logged in" in x], what="bot log"
    )
    assert (
        f"app[bot.1]: logged in PC_APP=mybot PC_PROCESS=bot.1 PC_RELEASE=v1 PC_NODE={node.name}"
        in line[0]
    )
    assert "app[pc]: starting bot.1 (v1)" in logs(node)

    # A source-only push skips the install: the dependency cache answers.
    (work / "bot.py").write_text(BOT.replace("TICK", "tick-two"))
    commit_all(work, "second")
    r = push(node, work)
    assert r.returncode == 0, r.stderr
    assert "(cached)" in r.stderr and "Release v2 running" in r.stderr
    wait_for(lambda: "tick-two" in logs(node), what="v2 output")

    # config:set reaches the app's environment (it restarts).
    r = node.ssh("config:set", "mybot", "TOKEN=s3cret=x")
    assert r.returncode == 0, r.stderr
    assert "-----> Release v3: restarting the app's processes" in r.stdout
    wait_for(lambda: "TOKEN=s3cret=x" in logs(node), what="TOKEN in env")
    assert "Set TOKEN" in node.ssh("releases", "mybot").stdout
    assert node.ssh("config:get", "mybot", "TOKEN").stdout.strip() == "s3cret=x"

    # run: a one-off process, output streamed, exit code passed through.
    r = node.ssh(
        "run", "mybot", "python", "-c", "'import six,sys; print(six.__name__); sys.exit(7)'"
    )
    assert r.returncode == 7 and "six" in r.stdout, (r.returncode, r.stdout, r.stderr)

    # A failed build: non-zero exit, the reason on screen, v2 keeps running.
    (work / "requirements.txt").write_text("this-package-does-not-exist-pc==9.9\n")
    commit_all(work, "bad requirement")
    r = push(node, work)
    assert r.returncode != 0
    assert "build failed" in r.stderr
    assert "v3" in node.ssh("ps", "mybot").stdout  # v3: the release config:set made
    assert node.ssh("ps", "mybot").stdout.count(" up ") == 1

    # Rollback to v1: a new release v4 runs v1's slug (with today's config).
    r = node.ssh("rollback", "mybot", "v1")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "PC_RELEASE=v4" in logs(node), what="rollback running")
    releases = node.ssh("releases", "mybot").stdout
    assert "Rollback to v1" in releases

    # logs -f sees lines that are printed after it started.
    follower = subprocess.Popen(
        [*node.ssh_command.split(), "pc@127.0.0.1", "logs", "mybot", "-f", "-n", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen = [follower.stdout.readline() for _ in range(3)]
        assert any("app[bot.1]: tick-one" in line for line in seen), seen  # v1's code, as v4
    finally:
        follower.kill()

    # Restarting the daemon does not stop the app: the same instance runs on.
    before = node.ssh("ps", "mybot").stdout
    node.stop()
    node.start()
    after = node.ssh("ps", "mybot").stdout
    assert " up " in after and before == after


@pytest.mark.docker
@pytest.mark.e2e
def test_python_bot_on_docker(node_factory, tmp_path: Path):
    node = node_factory("docker")
    scenario(node, tmp_path)
    # The container carries the labels and runs as a non-root user.
    import docker

    client = docker.from_env()
    [c] = client.containers.list(filters={"label": f"peoplescloud.node={node.name}"})
    assert c.labels["peoplescloud.app"] == "mybot"
    assert c.labels["peoplescloud.process"] == "bot.1"
    assert c.labels["peoplescloud.release"] == "v4"
    assert "uid 0" not in logs(node)


@pytest.mark.e2e
def test_python_bot_on_process_runtime(node_factory, tmp_path: Path):
    scenario(node_factory("process"), tmp_path)
