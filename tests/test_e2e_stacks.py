"""Stacks per language version, as a user meets them on one docker node: a
Python 2 bot, a 3.13 app moved to 3.14 and rolled back, a Node 20 app via
`engines`, and a version no stack has. Needs every stack image (`pc stack
build --all`, which scripts/test runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import NodeProc, commit_all, make_repo, wait_for


def logs(node: NodeProc, app: str) -> str:
    r = node.ssh("logs", app, "-n", "200")
    assert r.returncode == 0, r.stderr
    return r.stdout


def pushed(node: NodeProc, work: Path, app: str) -> str:
    r = node.git(work, "push", node.remote(app), "main")
    assert r.returncode == 0, r.stderr
    return r.stderr


@pytest.mark.docker
@pytest.mark.e2e
def test_apps_get_the_stack_their_versions_ask_for(node_factory, tmp_path: Path) -> None:
    node = node_factory("docker")

    def said(version: str, release: str) -> bool:
        lines = logs(node, "multi").splitlines()
        return any(f"python says {version}." in x and x.endswith(f" in {release}") for x in lines)

    # Python 2: runtime.txt picks bullseye; virtualenv's pip installs six for 2.7.
    work = make_repo(tmp_path, "py2-bot")
    out = pushed(node, work, "oldbot")
    assert "remote: -----> Stack bullseye (Python 2.7)" in out
    wait_for(lambda: "py2 bot on 2.7.18 with six" in logs(node, "oldbot"), what="py2 bot")

    # A commented .python-version asking for 3.13 builds and runs on trixie.
    work = make_repo(tmp_path, "py3-version-bot")
    out = pushed(node, work, "multi")
    assert "remote: -----> Stack trixie (Python 3.13, Node 20)" in out
    wait_for(lambda: said("3.13", "v1"), what="3.13")

    # Moved to 3.14: the next release runs on forky.
    (work / ".python-version").write_text("3.14\n")
    commit_all(work, "python 3.14")
    out = pushed(node, work, "multi")
    assert "remote: -----> Stack forky (Python 3.14, Node 24)" in out
    wait_for(lambda: said("3.14", "v2"), what="3.14")
    assert "peoplescloud/stack:forky" in node.ssh("apps:info", "multi").stdout

    # A rollback to v1 runs v1's slug on v1's stack, not the newest one.
    r = node.ssh("rollback", "multi", "v1")
    assert r.returncode == 0, r.stderr

    wait_for(lambda: said("3.13", "v3"), what="the rollback on 3.13")
    assert "peoplescloud/stack:trixie" in node.ssh("apps:info", "multi").stdout

    # Node 20 through package.json's engines.
    work = make_repo(tmp_path, "node20-bot")
    out = pushed(node, work, "nodebot")
    assert "remote: -----> Stack trixie (Python 3.13, Node 20)" in out
    wait_for(lambda: "app[bot.1]: node says v20." in logs(node, "nodebot"), what="node 20")

    # A version no stack has: one line naming what the node offers, nothing pushed.
    work = make_repo(tmp_path, "py3-version-bot")
    (work / ".python-version").write_text("3.12\n")
    commit_all(work, "python 3.12")
    r = node.git(work, "push", node.remote("nostack"), "main")
    assert r.returncode != 0
    assert (
        "no stack on this node has that: .python-version asks for 3.12;"
        " it offers Python 2.7, 3.11, 3.13, 3.14 and Node 18, 20, 24"
    ) in r.stderr
    assert node.git(work, "ls-remote", node.remote("nostack")).stdout.strip() == ""


@pytest.mark.e2e
def test_the_process_runtime_offers_the_hosts_python_only(node_factory, tmp_path: Path) -> None:
    """No stack images there: a version the host's python3 is not fails in one line."""
    node = node_factory("process")
    host = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    work = make_repo(tmp_path, "py3-version-bot")
    (work / ".python-version").write_text("2.7\n" if host != "2.7" else "3.13\n")
    commit_all(work, "a python the host has not")
    r = node.git(work, "push", node.remote("hostbot"), "main")
    assert r.returncode != 0
    assert "no stack on this node has that: .python-version asks for" in r.stderr
    assert f"it offers Python {host}" in r.stderr
    assert node.git(work, "ls-remote", node.remote("hostbot")).stdout.strip() == ""
