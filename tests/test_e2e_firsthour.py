"""The first hour of a newcomer, as Dokku's own tests drive an app with a one-shot
type: create the app, configure and scale it before the first push, push, then
run its types and commands. End to end with the system git and ssh on docker."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import make_repo, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def test_create_configure_scale_push_then_run(node_factory, tmp_path: Path):
    node = node_factory("docker")
    app = "firsthour"

    r = node.ssh("apps:create", app)
    assert r.returncode == 0, r.stderr
    assert node.ssh("apps:create", app).stderr.startswith(f" !     you already have {app}")
    assert node.ssh("config:set", app, "TOKEN=s3cret").returncode == 0
    r = node.ssh("ps:scale", app, "console=0")  # before the first push
    assert r.returncode == 0, r.stderr
    assert "not deployed" in node.ssh("apps").stdout

    # The Procfile starts with a byte-order mark; `console` exits at once, but
    # scaled to 0 it is neither started nor waited for.
    work = make_repo(tmp_path, "procfile-console")
    r = node.git(work, "push", node.remote(app), "main")
    assert r.returncode == 0, r.stderr
    assert "Release v1 running: bot.1 on" in r.stderr and "console.1" not in r.stderr

    r = node.ssh("run", app, "console")  # a Procfile type: its command
    assert (r.returncode, r.stdout) == (0, "console says hi\n"), r.stderr
    r = node.ssh("run", app, "echo $TOKEN")  # the app's shell expands config vars
    assert (r.returncode, r.stdout) == (0, "s3cret\n"), r.stderr
    assert node.ssh("run", app, "sh", "-c", "'exit 5'").returncode == 5
    r = node.ssh("run", app, "python3", "-V")
    assert r.returncode == 0 and r.stdout.startswith("Python 3."), r.stderr

    [row] = [line.split() for line in node.ssh("apps").stdout.splitlines() if line.startswith(app)]
    assert row[4:] == ["running", "bot=1", "console=0"]  # after NAME OWNER ROLE RELEASE
    info = dict(line.split(maxsplit=1) for line in node.ssh("apps:info", app).stdout.splitlines())
    assert info["git:"] == node.remote(app)  # the node listens on 127.0.0.1 here

    # A restart: the bot dies of SIGTERM, and its shell reports nothing about it.
    assert node.ssh("ps:restart", app).returncode == 0
    logs = lambda: node.ssh("logs", app).stdout  # noqa: E731
    wait_for(lambda: logs().count("app[bot.1]: bot up") >= 2, what="the restarted bot")
    assert "Terminated" not in logs()

    # `ssh -t … run APP bash`: an interactive shell on a pty (-tt: the test has no terminal).
    shell = [*node.ssh_command.split(), "-tt", "pc@127.0.0.1", "run", app, "bash"]
    typed = b"tty; echo $((6*7)); exit 3\n"
    r = subprocess.run(shell, input=typed, capture_output=True, timeout=120)  # bytes: "\r\n"
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert b"/dev/pts/" in r.stdout and b"42\r\n" in r.stdout, r.stdout
    assert asyncio.run(window_sizes(node, app)) == ["40 100", "50 120"]
    # Other commands under `ssh -t` end their lines for a raw terminal: "\r\n".
    apps = [*node.ssh_command.split(), "-tt", "pc@127.0.0.1", "apps"]
    out = subprocess.run(apps, capture_output=True, timeout=60, stdin=subprocess.DEVNULL).stdout
    assert app.encode() in out and out.count(b"\n") == out.count(b"\r\n"), out


async def window_sizes(node, app: str) -> list[str]:
    """The pty's size as the command sees it, before and after the client's window changes."""
    async with asyncssh.connect(
        "127.0.0.1",
        node.ssh_port,
        username="pc",
        client_keys=[str(node.key)],
        known_hosts=None,
    ) as conn:
        # Docker sizes a pty just after the start: wait for it, then report it twice.
        line = 'until [ "$(stty size)" != "0 0" ]; do sleep 0.1; done; stty size; read x; stty size'
        proc = await conn.create_process(
            f"run {app} '{line}'", term_type="xterm", term_size=(100, 40), encoding=None
        )
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        proc.change_terminal_size(120, 50)
        proc.stdin.write(b"\n")
        rest = await asyncio.wait_for(proc.stdout.read(), 60)
        lines = (first + rest).decode().split("\r\n")
        return [x for x in lines if x.strip() and x[0].isdigit()]
