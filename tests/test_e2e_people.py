"""People over real SSH on the docker runtime: an owner (ann), a collaborator
(bob), another user (eve) and the node's admin, each trying every app command.
The allowed succeed; everyone else gets the same line for ann's app as for an
app that does not exist. One push."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from tests.conftest import keygen, make_repo, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

APP = "sharedbot"
OWNER, COLLABORATOR, ADMIN, OTHER = "ann", "bob", "admin", "eve"
USE = {OWNER, COLLABORATOR, ADMIN}
OWN = {OWNER, ADMIN}

# (command words with APP standing for the app, who may run it)
MATRIX = [
    (["logs", "APP"], USE),
    (["config", "APP"], USE),
    (["config:set", "APP", "TOKEN=s3cret-value"], USE),
    (["ps:scale", "APP", "console=0"], USE),
    (["ps:restart", "APP"], USE),
    (["run", "APP", "console"], USE),
    (["rollback", "APP", "v1"], USE),
    (["releases", "APP"], USE),
    (["sharing", "APP"], USE),
    (["sharing:add", "APP", "carl"], OWN),
    (["apps:destroy", "APP", "--confirm", "APP"], OWN),
    (["apps:transfer", "APP", "carl"], OWN),
]
UNDO = {  # what puts a successful owner's command back, so the next role starts alike
    "sharing:add": ["sharing:remove", "APP", "carl"],
    "apps:transfer": None,  # carl owns it then: the admin gives it back (below)
}


def test_permission_matrix_over_ssh(node_factory, tmp_path: Path):
    node = node_factory("docker")
    keys = {name: keygen(tmp_path / name) for name in (OWNER, COLLABORATOR, OTHER, "carl")}
    as_ = {name: dataclasses.replace(node, key=key) for name, key in keys.items()}
    as_[ADMIN] = node
    for name, key in keys.items():  # users:add over SSH, the key on stdin
        r = node.ssh("users:add", name, input=Path(f"{key}.pub").read_text())
        assert r.returncode == 0, r.stderr

    assert as_[OWNER].ssh("apps:create", APP).returncode == 0
    assert as_[OWNER].ssh("ps:scale", APP, "console=0").returncode == 0  # a one-shot type
    work = make_repo(tmp_path, "procfile-console")
    r = as_[OWNER].git(work, "push", node.remote(APP), "main")
    assert r.returncode == 0, r.stderr
    assert as_[OWNER].ssh("sharing:add", APP, COLLABORATOR).returncode == 0
    roles = {
        line.split()[0]: line.split()[2]
        for line in as_[COLLABORATOR].ssh("apps").stdout.splitlines()[1:]
    }
    assert roles == {APP: "collaborator"}
    assert as_[OTHER].ssh("apps").stdout.startswith("-----> No apps yet")

    for words, allowed in MATRIX:
        for who in (OWNER, COLLABORATOR, ADMIN, OTHER):
            if words[0] == "apps:destroy" and who in allowed:
                continue  # the owner destroys it at the very end
            argv = [w.replace("APP", APP) for w in words]
            r = as_[who].ssh(*argv)
            if who in allowed:
                assert r.returncode == 0, (who, argv, r.stderr)
                if words[0] in UNDO and UNDO[words[0]]:
                    undo = [w.replace("APP", APP) for w in UNDO[words[0]]]
                    assert as_[who].ssh(*undo).returncode == 0
                if words[0] == "apps:transfer":
                    back = node.ssh("apps:transfer", APP, OWNER)
                    assert back.returncode == 0, back.stderr
                continue
            assert r.returncode != 0, (who, argv, r.stdout)  # (progress lines may come first)
            [line] = r.stderr.splitlines()  # one line
            if who == OTHER:  # the same as for an app that does not exist
                ghost = as_[who].ssh(*[w.replace("APP", "ghostapp") for w in words])
                assert (ghost.returncode, ghost.stderr.replace("ghostapp", APP)) == (
                    r.returncode,
                    r.stderr,
                ), argv
                assert ghost.stdout.replace("ghostapp", APP) == r.stdout
                assert line == f" !     no app named {APP!r} of yours: `apps` lists yours"
            else:  # a collaborator knows the app: told who may
                assert "only its owner ann or an admin" in line, (who, argv, line)

    # The audit trail: who did what, names never values; refusals; a stranger's key.
    stranger = keygen(tmp_path / "stranger")
    assert dataclasses.replace(node, key=stranger).ssh("apps").returncode == 255
    mine = as_[OWNER].ssh("events", APP, "-n", "200").stdout
    assert "bob" in mine and "config: Set TOKEN" in mine and "refused (use)" in mine
    assert "s3cret-value" not in mine
    print_ = subprocess.run(
        ["ssh-keygen", "-lf", f"{stranger}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    wait_for(lambda: f"refused login: key {print_}" in node.ssh("events", "-n", "1000").stdout)
    assert "refused login" not in as_[OTHER].ssh("events").stdout  # admins only

    # keys: fingerprints as ssh-keygen -l prints them; users:remove takes them back.
    ann_print = subprocess.run(
        ["ssh-keygen", "-lf", f"{keys[OWNER]}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert ann_print in as_[OWNER].ssh("keys").stdout
    assert node.ssh("users:remove", OTHER).returncode == 0
    assert as_[OTHER].ssh("apps").returncode == 255  # at once
    assert as_[OTHER].ssh("apps").stderr.count("Permission denied") == 1

    r = as_[OWNER].ssh("apps:destroy", APP, "--confirm", APP)
    assert r.returncode == 0, r.stderr
