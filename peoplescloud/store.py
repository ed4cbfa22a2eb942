"""Where slugs live: `add(dir) -> cid`, `get(cid, dest)`, `pin`, `unpin`, `has`.

`LocalStore` is the single-node embedded default: a content-addressed directory.
The content id is a sha256 over every entry's path, kind, mode and content, so
the same build gives the same id. IPFS (kubo) comes with the swarm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Protocol

from peoplescloud.errors import NotFound


class Store(Protocol):
    name: str  # "local", "ipfs"

    def add(self, path: Path) -> str: ...
    def get(self, cid: str, dest: Path) -> None: ...
    def pin(self, cid: str) -> None: ...
    def unpin(self, cid: str) -> None: ...
    def has(self, cid: str) -> bool: ...


def tree_digest(root: Path) -> str:
    """sha256 of a directory tree, independent of timestamps and owners."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(
            filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        ):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + rel.encode() + b"\0" + os.readlink(full).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                h.update(b"F" + rel.encode() + b"\0" + (b"x" if st.st_mode & 0o100 else b"-"))
                with open(full, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
        for d in dirnames:
            h.update(b"D" + os.path.normpath(os.path.join(rel_dir, d)).encode() + b"\0")
    return "sha256-" + h.hexdigest()


def link_tree(src: Path, dest: Path) -> None:
    """Copy a tree with hard links where the filesystem allows (slugs are read-only)."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, symlinks=True, copy_function=link_or_copy)


class LocalStore:
    """Content-addressed slugs under `root/objects/<cid>`; pins are marker files."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self._objects = root / "objects"
        self._pins = root / "pins"
        self._tmp = root / "tmp"
        for d in (self._objects, self._pins, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def add(self, path: Path) -> str:
        """Store the tree at `path` and return its id. The directory is moved into the
        store when it is on the same filesystem (the caller gives it up)."""
        cid = tree_digest(path)
        target = self._objects / cid
        if target.exists():
            shutil.rmtree(path, ignore_errors=True)
            return cid
        staging = self._tmp / cid
        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.rename(path, staging)
        except OSError:
            link_tree(path, staging)
        os.rename(staging, target)  # atomic: an object is whole or absent
        return cid

    def get(self, cid: str, dest: Path) -> None:
        if not self.has(cid):
            raise NotFound(f"slug {cid} is not in this node's store")
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        link_tree(self._objects / cid, staging)
        os.rename(staging, dest)

    def pin(self, cid: str) -> None:
        if not self.has(cid):
            raise NotFound(f"slug {cid} is not in this node's store")
        (self._pins / cid).touch()

    def unpin(self, cid: str) -> None:
        """Unpinned objects are removed: the local store has no other holder to fall back on."""
        (self._pins / cid).unlink(missing_ok=True)
        shutil.rmtree(self._objects / cid, ignore_errors=True)

    def has(self, cid: str) -> bool:
        return (self._objects / cid).is_dir()

    def pinned(self) -> set[str]:
        return {p.name for p in self._pins.iterdir()}

    def cids(self) -> set[str]:
        """Every slug here, pinned or not (a push killed before its pin leaves one unpinned)."""
        return {p.name for p in self._objects.iterdir()} | self.pinned()
