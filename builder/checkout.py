"""Writing one commit's tree from a bare repo into a fresh directory.

Builds start from this clean checkout, never from a working copy. Nothing is
ever written through a symlink: every file and directory is created relative to
an already-open parent directory with O_NOFOLLOW, so a crafted tree cannot make
us write outside `dest`. Symlinks themselves are kept only when what they point
at stays inside the tree.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # dulwich loads with the first checkout: an idle daemon needs none
    from dulwich.objects import Blob, Tree
    from dulwich.repo import Repo

from builder.errors import BuildError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class _Budget:
    """Bytes of files a checkout may still write (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.left = limit, limit

    def spend(self, n: int) -> None:
        if self.left is None or self.limit is None:
            return
        self.left -= n
        if self.left < 0:
            raise BuildError(
                f"the app's files add up to more than {self.limit // (1024 * 1024)} MB, "
                "this node's [build] max_tree_mb; keep large or generated files out of git"
            )


def checkout(repo_path: Path, commit: str, dest: Path, max_bytes: int | None = None) -> None:
    """Write the tree of `commit` (a hex sha) from the bare repo at `repo_path` into
    the empty directory `dest`: regular files with their exec bit, directories, and
    symlinks that stay inside the tree. Submodules are skipped. Refuses a tree whose
    files add up to more than `max_bytes`."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BuildError(f"checkout destination {dest} is not empty")
    from dulwich.objects import Commit
    from dulwich.repo import Repo

    with Repo(str(repo_path)) as repo:
        try:
            obj = repo[commit.encode("ascii")]
        except (KeyError, UnicodeEncodeError, ValueError):
            raise BuildError(f"commit {commit} is not in the repository") from None
        if not isinstance(obj, Commit):
            raise BuildError(f"{commit} is not a commit")
        links: list[str] = []
        root_fd = os.open(dest, _DIR_FLAGS)
        try:
            tree = cast("Tree", repo[obj.tree])  # a commit's tree
            _write_tree(repo, tree, root_fd, "", links, _Budget(max_bytes))
        finally:
            os.close(root_fd)
    _check_links(dest, links)


def _write_tree(
    repo: Repo, tree: Tree, dir_fd: int, prefix: str, links: list[str], budget: _Budget
) -> None:
    for entry in tree.items():
        name = os.fsdecode(entry.path)
        rel = prefix + name
        if name in ("", ".", "..", ".git") or "/" in name or "\0" in name:
            raise BuildError(f"the tree has an entry git itself would refuse: {rel!r}")
        mode = entry.mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            sub_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:  # a directory entry names a tree
                sub = cast("Tree", repo[entry.sha])
                _write_tree(repo, sub, sub_fd, rel + "/", links, budget)
            finally:
                os.close(sub_fd)
        elif stat.S_ISLNK(mode):
            target = os.fsdecode(_blob(repo, entry.sha).as_raw_string())
            if os.path.isabs(target) or not _inside(os.path.join(prefix, target)):
                raise BuildError(f"symlink {rel} points outside the app ({target})")
            os.symlink(target, name, dir_fd=dir_fd)
            links.append(rel)
        elif stat.S_ISREG(mode):
            perms = 0o755 if mode & 0o100 else 0o644
            blob = _blob(repo, entry.sha)
            budget.spend(blob.raw_length())
            fd = os.open(name, _FILE_FLAGS, perms, dir_fd=dir_fd)
            try:
                for chunk in blob.as_raw_chunks():
                    os.write(fd, chunk)
                os.fchmod(fd, perms)  # not narrowed by the umask
            finally:
                os.close(fd)
        # else: a submodule (gitlink); its commit is not in this repo, so skip it.


def _blob(repo: Repo, sha: bytes) -> Blob:
    from dulwich.objects import Blob

    obj = repo[sha]
    if not isinstance(obj, Blob):
        kind = obj.type_name.decode()
        raise BuildError(f"object {sha.decode()} should be a file but is a {kind}")
    return obj


def _inside(relative: str) -> bool:
    """Whether a path relative to the tree's root stays under it, read lexically."""
    normal = os.path.normpath(relative)
    return normal != ".." and not normal.startswith("../")


def _check_links(dest: Path, links: list[str]) -> None:
    """Resolve every symlink for real: one link can lead through another
    (`sub/up -> ..`, then `sub/x -> up/../y`), which a lexical check misses."""
    root = os.path.realpath(dest)
    for rel in links:
        resolved = os.path.realpath(os.path.join(root, rel))
        if resolved != root and not resolved.startswith(root + os.sep):
            target = os.readlink(os.path.join(root, rel))
            raise BuildError(f"symlink {rel} points outside the app ({target})")
