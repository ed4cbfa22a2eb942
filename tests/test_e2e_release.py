"""A release's life around its instances, end to end with the system git and ssh
on docker: the Procfile's `release` phase and app.json's predeploy run before any
instance of the new release (push, config:set, rollback), with the new config,
their output in the push and in the app's log; a failing one keeps the old
release; app.json's formation scales the first deploy only; postdeploy runs
once the release runs, and its failure leaves the release current."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import NodeProc, commit_all, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

APP = "phased"
BOT = 'import time\nprint("bot up VERSION", flush=True)\nwhile True:\n    time.sleep(1)\n'
PROCFILE = (
    "bot: python3 -u bot.py\n"
    "worker: python3 -u bot.py\n"
    'release: echo "release sees GREETING=$GREETING" && test "$GREETING" != fail\n'
)
APP_JSON = {
    "name": "ignored, as every key this node does not act on",
    "formation": {"bot": {"quantity": 2}, "worker": {"quantity": 0}},
    "scripts": {"dokku": {"predeploy": "echo predeploy ran", "postdeploy": "echo postdeploy ran"}},
}


def tree(work: Path, version: str, procfile: str = PROCFILE, app_json: dict = APP_JSON) -> None:
    (work / "bot.py").write_text(BOT.replace("VERSION", version))
    (work / "Procfile").write_text(procfile)
    (work / "app.json").write_text(json.dumps(app_json, indent=2))


def push(node: NodeProc, work: Path, message: str) -> subprocess.CompletedProcess[str]:
    commit_all(work, message)
    return node.git(work, "push", node.remote(APP), "main")


def logs(node: NodeProc) -> list[str]:
    r = node.ssh("logs", APP, "-n", "1000")
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def current(node: NodeProc) -> list[str]:
    out = node.ssh("releases", APP).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("*")]


def first(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


def test_release_phase_scripts_and_formation(node_factory, tmp_path: Path):
    node = node_factory("docker")
    assert node.ssh("apps:create", APP).returncode == 0
    assert node.ssh("config:set", APP, "GREETING=hello").returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=work, check=True)
    tree(work, "one")

    # First push: predeploy, then release (with the config), then the instances
    # (app.json's formation: two bots, no worker), then postdeploy.
    r = push(node, work, "first")
    assert r.returncode == 0, r.stderr
    out = r.stderr
    steps = [
        "remote: -----> Running predeploy command: echo predeploy ran",
        "remote:        predeploy ran",
        'remote: -----> Running release command: echo "release sees GREETING=$GREETING" &&',
        "remote:        release sees GREETING=hello",
        "remote: -----> Release v1 running: bot.1 on",
        "remote: -----> Running postdeploy command: echo postdeploy ran",
        "remote:        postdeploy ran",
    ]
    at = [out.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), out
    assert "bot.2 on" in out and "worker" not in out.split("Release v1 running")[1], out
    ps = node.ssh("ps", APP).stdout
    assert "bot.2" in ps and "release" not in ps and "worker" not in ps, ps
    lines = logs(node)
    assert first(lines, "app[predeploy]: predeploy ran") < first(
        lines, "app[release]: release sees GREETING=hello"
    )
    assert first(lines, "app[release]: release sees GREETING=hello") < first(
        lines, "app[pc]: starting bot.1 (v1)"
    ), lines
    assert first(lines, "app[pc]: starting bot.1 (v1)") < first(lines, "app[postdeploy]: ")

    # Later pushes keep the user's scale: formation is for the first deploy only.
    assert node.ssh("ps:scale", APP, "bot=1").returncode == 0
    tree(work, "two")
    r = push(node, work, "second")
    assert r.returncode == 0, r.stderr
    assert "Release v2 running: bot.1 on" in r.stderr and "bot.2" not in r.stderr, r.stderr

    # config:set is a new release: its release phase sees the new value first.
    r = node.ssh("config:set", APP, "GREETING=bye")
    assert r.returncode == 0, r.stderr
    assert any("app[release]: release sees GREETING=bye" in x for x in logs(node))
    assert current(node) == ["v3"]

    # A release phase that fails: the push fails, v3 stays current and runs on.
    ps_before = node.ssh("ps", APP).stdout
    failing = PROCFILE.split("release:")[0] + "release: echo failing; exit 3\n"
    tree(work, "three", failing)
    r = push(node, work, "failing release")
    assert r.returncode != 0
    assert "release command failed (exit 3)" in r.stderr, r.stderr
    assert "the previous release keeps running" in r.stderr
    assert "remote:        failing" in r.stderr
    assert current(node) == ["v3"]
    assert node.ssh("ps", APP).stdout == ps_before
    assert not any("bot up three" in x for x in logs(node))

    # ... and a config:set whose release phase fails changes nothing.
    r = node.ssh("config:set", APP, "GREETING=fail")
    assert r.returncode != 0 and "release command failed (exit 1)" in r.stderr, r.stderr
    assert "GREETING=fail" not in node.ssh("config", APP).stdout
    assert current(node) == ["v3"] and node.ssh("ps", APP).stdout == ps_before
    assert node.ssh("config:set", APP, "GREETING=again").returncode == 0
    assert current(node) == ["v5"]  # v4 was the failed push

    # A postdeploy that fails fails the push, but its release is current and runs.
    broken = {**APP_JSON, "scripts": {"postdeploy": "echo post; exit 4"}}
    tree(work, "four", app_json=broken)
    r = push(node, work, "failing postdeploy")
    assert r.returncode != 0
    assert "postdeploy command failed (exit 4)" in r.stderr, r.stderr
    assert "v6 runs on (it is the current release)" in r.stderr
    assert current(node) == ["v6"]
    wait_for(lambda: any("bot up four" in x for x in logs(node)), what="v6's bot")

    # A rollback is a new release too: the release phase runs again.
    before = sum("app[release]: release sees" in x for x in logs(node))
    r = node.ssh("rollback", APP, "v2")
    assert r.returncode == 0, r.stderr
    assert sum("app[release]: release sees" in x for x in logs(node)) == before + 1
    assert current(node) == ["v7"]


def test_cron_jobs_are_listed_and_run(node_factory, tmp_path: Path):
    node = node_factory("docker")
    assert node.ssh("apps:create", APP).returncode == 0
    assert node.ssh("config:set", APP, "GREETING=hi").returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=work, check=True)
    jobs = [
        {"command": 'echo "cron says $GREETING"', "schedule": "* * * * *"},
        {"command": "echo never", "schedule": "0 0 1 1 *"},
    ]
    tree(work, "one", "bot: python3 -u bot.py\n", {"cron": jobs})
    r = push(node, work, "with cron")
    assert r.returncode == 0, r.stderr

    r = node.ssh("cron", APP)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:2] == ["ID", "SCHEDULE"], r.stdout
    assert "cron.1" in r.stdout and 'echo "cron says $GREETING"' in r.stdout
    assert "-01-01T00:00:00Z" in r.stdout.splitlines()[2], r.stdout
    # `* * * * *` runs within the minute (the scheduler looks every 5 s); bounded.
    wait_for(
        lambda: any("app[cron.1]: cron says hi" in x for x in logs(node)),
        what="the cron job's output",
        timeout=75,
    )
    assert any("app[pc]: cron.1 exited with code 0" in x for x in logs(node))

    # A schedule that is not crontab fails the push, with where and why.
    tree(work, "two", "bot: python3 -u bot.py\n", {"cron": [{"command": "x", "schedule": "* *"}]})
    r = push(node, work, "bad cron")
    assert r.returncode != 0
    assert "app.json: cron[0]: schedule '* *' must have 5 fields" in r.stderr, r.stderr
