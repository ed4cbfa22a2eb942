from pathlib import Path

import pytest

from peoplescloud.errors import NotFound
from peoplescloud.state import App, State, User


def test_changes_are_durable_and_atomic(tmp_path: Path):
    path = tmp_path / "state.json"
    state = State(path)
    with state.change() as s:
        s.users["ann"] = User(name="ann", keys=["ssh-ed25519 AAAA"], admin=True)
        s.apps["mybot"] = App(name="mybot", owner="ann", created="now")
    with pytest.raises(RuntimeError), state.change() as s:
        del s.apps["mybot"]
        raise RuntimeError("half-way")
    reopened = State(path).read()
    assert "mybot" in reopened.apps  # the failed change left nothing behind
    assert reopened.user_for_key("ssh-ed25519 AAAA some comment") == "ann"
    assert reopened.user_for_key("ssh-ed25519 BBBB") is None


def test_reads_are_copies(tmp_path: Path):
    state = State(tmp_path / "state.json")
    with state.change() as s:
        s.apps["mybot"] = App(name="mybot", owner="ann", created="now")
    state.read().apps["mybot"].config["X"] = "1"
    assert state.read().apps["mybot"].config == {}


def test_unknown_app_and_release(tmp_path: Path):
    snap = State(tmp_path / "state.json").read()
    with pytest.raises(NotFound, match="no app named 'nope'"):
        snap.app("nope")
    with pytest.raises(NotFound, match="no release yet"):
        App(name="mybot", owner="ann", created="now").release()


def test_two_processes_sharing_the_file_lose_nothing(tmp_path: Path):
    """The daemon's State and `pc user add`'s State on one file (review finding)."""
    daemon, cli = State(tmp_path / "state.json"), State(tmp_path / "state.json")
    with daemon.change() as s:
        s.apps["mybot"] = App(name="mybot", owner="ann", created="now")
    with cli.change() as s:
        s.users["bob"] = User(name="bob", keys=["ssh-ed25519 BBBB"])
    assert daemon.read().user_for_key("ssh-ed25519 BBBB") == "bob"
    with daemon.change() as s:
        s.apps["mybot"].config["X"] = "1"
    final = State(tmp_path / "state.json").read()
    assert "bob" in final.users and final.apps["mybot"].config == {"X": "1"}
