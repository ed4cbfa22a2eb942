"""An app's git history moved between nodes.

A push lands in the bare repo of the node that received it. So that `git
clone` (and the ref a push is checked against) is the same on every node, a
node whose repo lacks the commit of the app's current release copies the repo
from a member that has it (the release names the node it was pushed to) before
serving git. The copy travels as a tar of the bare repo and is merged in, never
swapped in: objects are only added, branches this node lacks are added, and
the deployed branch moves (compare-and-set) to the release's commit. A push or
clone under way on the same repo reads on undisturbed.
"""

from __future__ import annotations

import secrets
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from peoplescloud.errors import PCError

if TYPE_CHECKING:  # dulwich loads with the first copy or check, not in an idle daemon
    from dulwich.repo import Repo

REFS_FIRST = ("HEAD", "packed-refs", "refs")  # a ref is written after its objects


def has_commit(repo: Path, commit: str) -> bool:
    """Whether the bare repo at `repo` holds `commit`."""
    from dulwich.errors import NotGitRepository
    from dulwich.objects import ObjectID
    from dulwich.repo import Repo

    try:
        with Repo(str(repo)) as r:
            return ObjectID(commit.encode()) in r.object_store
    except (NotGitRepository, OSError):
        return False


def tar_repo(repo: Path, out: Path) -> None:
    """Write the bare repo at `repo` to the tar file `out`. Refs go first: a push
    landing meanwhile adds objects before it moves a ref, so every ref in the
    tar finds its objects there."""
    with tarfile.open(out, "w") as tar:
        for name in REFS_FIRST:
            if (repo / name).exists():
                tar.add(repo / name, arcname=f"repo/{name}")
        for path in sorted(repo.iterdir()):
            if path.name not in REFS_FIRST:
                tar.add(path, arcname=f"repo/{path.name}")


def merge_repo(archive: Path, dest: Path, commit: str) -> None:
    """Merge the repo in `archive` (from `tar_repo`) into the bare repo at `dest`
    (created if missing), provided the copy holds `commit`; else change nothing."""
    from dulwich.errors import NotGitRepository
    from dulwich.objects import ObjectID
    from dulwich.repo import Repo

    staging = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")  # no links out, no devices
        with Repo(str(staging / "repo")) as copy:
            if ObjectID(commit.encode()) not in copy.object_store:
                raise PCError(f"the copy of {dest.name} lacks commit {commit[:7]}")
            if not dest.exists():
                Repo.init_bare(dest, mkdir=True)
            with Repo(str(dest)) as here:
                copy.fetch(here)  # objects only: refs are set below
                _merge_refs(copy, here, commit.encode())
    except (NotGitRepository, tarfile.TarError) as e:
        raise PCError(f"the copy of {dest.name} is not a git repo: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_refs(copy: Repo, here: Repo, commit: bytes) -> None:
    """Branches this repo lacks come from the copy; the deployed branch moves to
    the release's commit unless a push moved it meanwhile."""
    from dulwich.refs import Ref

    from gitserver import git

    deploy_refs = sorted(git.DEPLOY_REFS)  # the branches that deploy; main before master
    ours = here.refs.as_dict()
    for ref, sha in copy.refs.as_dict().items():
        if not ref.startswith(b"refs/heads/") or sha not in here.object_store:
            continue
        if ref not in ours:
            here.refs.add_if_new(Ref(ref), sha)
        elif ref in deploy_refs and sha == commit and ours[ref] != sha:
            here.refs.set_if_equals(Ref(ref), ours[ref], sha)
    if b"HEAD" not in here.refs.as_dict():  # a new repo's HEAD names no branch yet
        for ref in deploy_refs:
            if ref in here.refs.as_dict():
                here.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(ref))
                break
