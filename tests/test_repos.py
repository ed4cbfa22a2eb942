"""An app's git history copied between nodes (swarm/repos.py), on real repos."""

from pathlib import Path

import pytest
from dulwich.repo import Repo

from swarm.errors import PCError
from swarm.repos import has_commit, install_repo, tar_repo
from tests.conftest import commit_all, make_repo


def empty_repo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Repo.init_bare(path, mkdir=True)
    return path


def pushed_repo(tmp_path: Path) -> tuple[Path, str]:
    """A bare repo holding one commit of a sample app, and that commit."""
    work = make_repo(tmp_path, "python-bot")
    bare = empty_repo(tmp_path / "mybot.git")
    with Repo(str(work)) as w, Repo(str(bare)) as b:
        head = w.head()
        for sha in w.object_store:
            b.object_store.add_object(w.object_store[sha])
        b.refs[b"refs/heads/main"] = head
    return bare, head.decode()


def test_a_copy_replaces_a_stale_repo_and_holds_the_commit(tmp_path: Path):
    source, commit = pushed_repo(tmp_path / "a")
    stale = empty_repo(tmp_path / "b" / "mybot.git")
    assert not has_commit(stale, commit)
    tar_repo(source, tmp_path / "copy.tar")
    install_repo(tmp_path / "copy.tar", stale, commit)
    assert has_commit(stale, commit)
    with Repo(str(stale)) as r:
        assert r.refs[b"refs/heads/main"].decode() == commit
    assert sorted(p.name for p in stale.parent.iterdir()) == ["mybot.git"]  # no leftovers


def test_a_copy_without_the_commit_changes_nothing(tmp_path: Path):
    source, _ = pushed_repo(tmp_path / "a")
    work = make_repo(tmp_path / "c", "python-bot")
    (work / "bot.py").write_text("print('newer')\n")
    commit_all(work, "newer")
    with Repo(str(work)) as w:
        newer = w.head().decode()
    here = empty_repo(tmp_path / "b" / "mybot.git")
    tar_repo(source, tmp_path / "copy.tar")
    with pytest.raises(PCError, match=f"lacks commit {newer[:7]}"):
        install_repo(tmp_path / "copy.tar", here, newer)
    assert sorted(p.name for p in here.parent.iterdir()) == ["mybot.git"]
    assert not has_commit(here, newer)
    assert not has_commit(tmp_path / "nowhere.git", newer)
