"""An app's git history copied between nodes (swarm/repos.py), on real repos."""

from pathlib import Path

import pytest
from dulwich.repo import Repo

from peoplescloud.errors import PCError
from swarm.repos import has_commit, merge_repo, tar_repo
from tests.conftest import commit_all, make_repo


def bare_copy(work: Path, bare: Path, branch: bytes = b"refs/heads/main") -> str:
    """Push-like: the work tree's objects into `bare` (made if missing), its HEAD
    as `branch`. Returns that commit."""
    if not bare.exists():
        bare.parent.mkdir(parents=True, exist_ok=True)
        Repo.init_bare(bare, mkdir=True)
    with Repo(str(work)) as w, Repo(str(bare)) as b:
        for sha in w.object_store:
            if sha not in b.object_store:
                b.object_store.add_object(w.object_store[sha])
        b.refs[branch] = w.head()
        return w.head().decode()


def test_a_copy_merges_in_and_keeps_what_was_here(tmp_path: Path):
    work = make_repo(tmp_path, "python-bot")
    here = tmp_path / "b" / "mybot.git"
    old = bare_copy(work, here)  # this node got the first push
    bare_copy(work, here, b"refs/heads/experiment")  # and a branch no one else has
    (work / "bot.py").write_text("print('v2')\n")
    commit_all(work, "v2")
    source = tmp_path / "a" / "mybot.git"
    new = bare_copy(work, source)  # the second push went to another node
    tar_repo(source, tmp_path / "copy.tar")
    merge_repo(tmp_path / "copy.tar", here, new)
    assert has_commit(here, new) and has_commit(here, old)
    with Repo(str(here)) as r:
        assert r.refs[b"refs/heads/main"].decode() == new  # the deployed branch moved
        assert r.refs[b"refs/heads/experiment"].decode() == old  # kept
    assert sorted(p.name for p in here.parent.iterdir()) == ["mybot.git"]  # no leftovers


def test_a_copy_makes_a_missing_repo_that_clones(tmp_path: Path):
    work = make_repo(tmp_path, "python-bot")
    source = tmp_path / "a" / "mybot.git"
    commit = bare_copy(work, source)
    tar_repo(source, tmp_path / "copy.tar")
    here = tmp_path / "b" / "mybot.git"
    here.parent.mkdir()
    merge_repo(tmp_path / "copy.tar", here, commit)
    with Repo(str(here)) as r:
        assert r.refs.read_ref(b"HEAD") == b"ref: refs/heads/main"
        assert r.head().decode() == commit


def test_a_copy_without_the_commit_changes_nothing(tmp_path: Path):
    work = make_repo(tmp_path, "python-bot")
    source = tmp_path / "a" / "mybot.git"
    bare_copy(work, source)
    (work / "bot.py").write_text("print('newer')\n")
    commit_all(work, "newer")
    with Repo(str(work)) as w:
        newer = w.head().decode()
    tar_repo(source, tmp_path / "copy.tar")
    here = tmp_path / "b" / "mybot.git"
    here.parent.mkdir()
    with pytest.raises(PCError, match=f"lacks commit {newer[:7]}"):
        merge_repo(tmp_path / "copy.tar", here, newer)
    assert list(here.parent.iterdir()) == []
    assert not has_commit(here, newer)
