"""An app's git history moved between nodes.

A push lands in the bare repo of the node that received it. So that `git
clone` (and the ref a push is checked against) is the same on every node, a
node whose repo lacks the commit of the app's current release copies the repo
from a member that has it (the release names the node it was pushed to) before
serving git. The copy is a tar of the bare repo, installed whole or not at all.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tarfile
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.repo import Repo

from swarm.errors import PCError


def has_commit(repo: Path, commit: str) -> bool:
    """Whether the bare repo at `repo` holds `commit`."""
    try:
        with Repo(str(repo)) as r:
            return commit.encode() in r.object_store
    except (NotGitRepository, OSError):
        return False


def tar_repo(repo: Path, out: Path) -> None:
    """Write the bare repo at `repo` to the tar file `out`."""
    with tarfile.open(out, "w") as tar:
        tar.add(repo, arcname="repo")


def install_repo(archive: Path, dest: Path, commit: str) -> None:
    """Replace the repo at `dest` with the one in `archive` (from `tar_repo`),
    provided it holds `commit`; else leave `dest` as it was."""
    staging = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")  # no links out, no devices
        if not has_commit(staging / "repo", commit):
            raise PCError(f"the copy of {dest.name} lacks commit {commit[:7]}")
        old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
        if dest.exists():
            os.rename(dest, old)
        os.rename(staging / "repo", dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
