import os
from pathlib import Path

import pytest

from peoplescloud.errors import NotFound
from peoplescloud.store import LocalStore, tree_digest


def make_tree(root: Path, text: str = "print('hi')\n") -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "bot.py").write_text(text)
    (root / "pkg" / "run").write_text("#!/bin/sh\n")
    (root / "pkg" / "run").chmod(0o755)
    os.symlink("bot.py", root / "link")
    return root


def test_same_content_same_id_and_roundtrip(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    cid = store.add(make_tree(tmp_path / "a"))
    assert cid == store.add(make_tree(tmp_path / "b"))
    assert cid != tree_digest(make_tree(tmp_path / "c", "print('other')\n"))
    store.get(cid, tmp_path / "out")
    assert (tmp_path / "out" / "bot.py").read_text() == "print('hi')\n"
    assert os.readlink(tmp_path / "out" / "link") == "bot.py"
    assert os.access(tmp_path / "out" / "pkg" / "run", os.X_OK)
    assert tree_digest(tmp_path / "out") == cid


def test_mode_changes_the_id(tmp_path: Path):
    a = make_tree(tmp_path / "a")
    before = tree_digest(a)
    (a / "bot.py").chmod(0o755)
    assert tree_digest(a) != before


def test_pin_unpin_has(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    cid = store.add(make_tree(tmp_path / "a"))
    store.pin(cid)
    assert store.has(cid) and cid in store.pinned()
    store.unpin(cid)
    assert not store.has(cid)
    with pytest.raises(NotFound):
        store.get(cid, tmp_path / "out")
