"""`pc user add|list` on a lone node: the command line a host types (no daemon).

In a swarm the same commands go through the node's daemon to the replicated
state; tests/test_e2e_swarm.py adds a user on one node and uses it on another.
"""

from pathlib import Path

from tests.conftest import init_node, keygen


def new_key(tmp_path: Path, name: str) -> Path:
    """A new key pair's public key file."""
    return keygen(tmp_path / name).with_suffix(".pub")


def test_user_add_then_list(tmp_path: Path, user_key: Path):
    node = init_node(tmp_path, user_key, "process")
    ann = new_key(tmp_path, "ann")
    r = node.pc("user", "add", "ann", "--key", str(ann))
    assert r.stdout.strip() == f"-----> ann can now push with the key from {ann}"
    node.pc("user", "add", "ann", "--key", str(new_key(tmp_path, "ann2")), "--admin")
    listed = node.pc("user", "list").stdout.splitlines()
    assert "ann (admin): 2 key(s)" in listed
    assert any(line.endswith("(admin): 1 key(s)") for line in listed)  # the one from init


def test_user_add_refuses_a_taken_key_or_a_bad_one(tmp_path: Path, user_key: Path):
    node = init_node(tmp_path, user_key, "process")
    taken = node.pc("user", "add", "bob", "--key", f"{user_key}.pub", check=False)
    assert taken.returncode != 0
    assert "that key already belongs to" in taken.stderr
    junk = tmp_path / "junk.pub"
    junk.write_text("hello\n")
    bad = node.pc("user", "add", "bob", "--key", str(junk), check=False)
    assert bad.returncode != 0 and "is not an OpenSSH public key" in bad.stderr
    name = node.pc("user", "add", "Bob!", "--key", str(new_key(tmp_path, "b")), check=False)
    assert name.returncode != 0 and "invalid user name 'Bob!'" in name.stderr
    assert "bob" not in node.pc("user", "list").stdout


def test_in_a_swarm_user_add_needs_the_daemon_and_says_so(tmp_path: Path, user_key: Path):
    node = init_node(tmp_path, user_key, "process")
    node.pc("swarm", "create", "--name", "friends")
    r = node.pc("user", "add", "ann", "--key", str(new_key(tmp_path, "ann")), check=False)
    assert r.returncode != 0
    assert f"daemon does not answer at 127.0.0.1:{node.peer_port}" in r.stderr
    assert "start `pc daemon` first" in r.stderr


def test_user_remove_takes_the_keys_back(tmp_path: Path, user_key: Path):
    node = init_node(tmp_path, user_key, "process")
    node.pc("user", "add", "ann", "--key", str(new_key(tmp_path, "ann")))
    r = node.pc("user", "remove", "ann")
    assert r.stdout.strip() == "-----> ann removed: their keys no longer log in; their apps stay"
    assert "ann" not in node.pc("user", "list").stdout
    again = node.pc("user", "remove", "ann", check=False)
    assert again.returncode == 3 and "no user named 'ann'" in again.stderr
    last = node.pc("user", "remove", "admin", check=False)  # the one from init
    assert last.returncode != 0 and "admin is the last admin" in last.stderr
