"""What the host does with a tree a build wrote: copy it and check it, never
following a symlink out of it.

Install scripts are the pusher's code, and they write into the slug. Whatever
they leave there, the host copies (into the dependency cache, into the store)
and later serves to the runtime, so it must not lead the host anywhere else:
symlinks are copied as symlinks, never as what they point at, and a symlink
that leads out of the slug is refused. The one exception is a kind's system
links, such as the interpreter link every venv has (`.venv/bin/python3 ->
/usr/bin/python3`): absolute, resolved where the app runs, never by the host.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from builder.errors import BuildError

_MAX_HOPS = 40  # symlinks followed while resolving one path, as the kernel allows
# Bits a slug never keeps: set-id programs would run as whoever owns the file on
# this host, and group/other write would let anyone change a stored slug.
_STRIPPED = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


def copy_tree(source: Path, dest: Path) -> None:
    """Copy `source` to the new directory `dest` with hard links where the
    filesystem allows; symlinks are copied as symlinks, never followed."""
    if source.is_symlink() or not source.is_dir():
        raise BuildError(f"{source.name} is not a directory")
    shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy)


def check_tree(root: Path, under: str = "", system_links: Sequence[str] = ()) -> int:
    """Check the part `under` (a relative path, "" for all) of the slug at `root`:
    every symlink stays inside the slug (or is one of `system_links`, patterns of
    slug paths allowed to point at an absolute path), no special files. Strips
    set-id and group/other write bits. Returns the bytes of its regular files."""
    top = root / under if under else root
    if top.is_symlink():
        raise BuildError(f"{under} is a symlink to {os.readlink(top)}: it points outside the app")
    total = 0
    for dirpath, dirnames, filenames in os.walk(top):  # never follows symlinks
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if _escapes(root, rel, system_links):
                    target = os.readlink(path)
                    raise BuildError(f"symlink {rel} points outside the app ({target})")
            elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                if st.st_mode & _STRIPPED:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~_STRIPPED)
            else:
                raise BuildError(f"the build left {rel}, which is not a file, directory or symlink")
    return total


def _escapes(root: Path, rel: str, system_links: Sequence[str]) -> bool:
    """Whether the symlink at `rel` leads out of `root` when resolved the way the
    kernel would, one component at a time (one link can lead through another:
    `sub/up -> ..`, then `sub/x -> up/../y`), without ever leaving `root`."""
    todo = list(reversed(rel.split("/")))
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return True
            done.pop()
            continue
        done.append(part)
        path = os.path.join(root, *done)
        try:
            st = os.lstat(path)
        except OSError:
            continue  # missing: what follows is read lexically
        if not stat.S_ISLNK(st.st_mode):
            continue
        hops += 1
        if hops > _MAX_HOPS:
            return True
        target = os.readlink(path)
        if os.path.isabs(target):
            link = "/".join(done)
            return bool(todo) or not any(_matches(link, p) for p in system_links)
        done.pop()
        todo.extend(reversed(target.split("/")))
    return False


def _matches(path: str, pattern: str) -> bool:
    """fnmatch, where `*` does not cross a `/`."""
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst, follow_symlinks=False)
