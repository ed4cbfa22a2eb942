"""The dependency cache: a push that changes only source installs nothing.

Each app has its own cache directory (`app_cache`), never shared with another
app or a later app of the same name: one user's build can never put anything
into another user's slug. In it, an installed dependency directory (`.venv`,
`node_modules`) is kept under `deps/<key>/`, where the key hashes everything
the install depends on: the stack, the kind, the dependency files and, when
they name a local path (`./lib`, `file:../x`, `-r other.txt`), the whole source
tree. On a hit it is copied into the slug with hard links, which costs almost
nothing; no build step runs after that, so nothing can write through the links.
Entries are built in a temporary directory and renamed into place, so a build
killed half way never leaves a half entry behind. The download caches of pip
and npm (`pip/`, `npm/`) sit beside `deps/` and are mounted into the app's own
build steps only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from builder.executor import Say
from builder.tree import check_tree, copy_tree

KEEP_ENTRIES = 2  # dependency sets kept per app: the last push's, and the one before
_OWNER = ".owner"


def app_cache(root: Path, app: str, owner: str) -> Path:
    """The cache directory of `app` under `root`. `owner` names this app for good
    (its owner and creation time): a cache left by an earlier app of the same name,
    or by anything else, is emptied before it is used."""
    cache = root / app
    marker = cache / _OWNER
    try:
        if marker.read_text(encoding="utf-8") == owner:
            return cache
    except (OSError, UnicodeDecodeError):
        pass
    _remove(cache)
    cache.mkdir(parents=True)
    marker.write_text(owner, encoding="utf-8")
    return cache


def cache_key(
    identity: str, kind: str, tree: Path, files: Iterable[str], whole_tree: bool = False
) -> str:
    """sha256 of the executor identity, the kind and the named dependency files
    (present or not: adding a lock file must change the key), and of every file
    of `tree` when `whole_tree` (the dependency files name local paths)."""
    digest = hashlib.sha256()
    for part in (identity, kind):
        digest.update(part.encode() + b"\0")
    for name in sorted(files):
        path = tree / name
        digest.update(name.encode() + b"\0")
        if path.is_file() and not path.is_symlink():
            digest.update(b"1" + hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(b"0")
    if whole_tree:
        digest.update(b"tree\0" + tree_digest(tree))
    return digest.hexdigest()


def tree_digest(tree: Path) -> bytes:
    """sha256 of a tree: names, file contents and exec bits, symlink targets."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, tree)
        for name in sorted(filenames) + dirnames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name)).encode()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + rel + b"\0" + os.fsencode(os.readlink(full)) + b"\0")
            elif stat.S_ISREG(st.st_mode):
                h.update(b"F" + rel + b"\0" + (b"x" if st.st_mode & 0o100 else b"-"))
                with open(full, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
            elif stat.S_ISDIR(st.st_mode):
                h.update(b"D" + rel + b"\0")
    return h.digest()


def install_cached(
    cache: Path,
    key: str | None,
    target: Path,
    label: str,
    install: Callable[[], None],
    say: Say,
    system_links: Sequence[str] = (),
) -> None:
    """Fill `target` (e.g. `<slug>/.venv`) from the cache entry `key`, or run
    `install` to create it and keep a copy under that key. `key=None` means the
    result cannot be cached and is always installed. What the install left is
    checked before it is kept (see `builder.tree.check_tree`; `system_links` are
    the kind's allowed absolute symlinks)."""
    _remove(target)  # a committed .venv or node_modules is never trusted
    entry = cache / "deps" / key if key else None
    if entry is not None and entry.is_dir():
        copy_tree(entry, target)
        os.utime(entry)  # recently used: kept by _prune
        say(f"-----> {label} ... done (cached)")
        return
    say(f"-----> {label}")
    install()
    if entry is not None and (target.is_dir() or target.is_symlink()):
        check_tree(target.parent, target.name, system_links)
        _store(target, entry)
        _prune(entry.parent, keep=KEEP_ENTRIES)


def _store(source: Path, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        copy_tree(source, tmp / "d")
        os.rename(tmp / "d", entry)
    except OSError:
        if not entry.is_dir():  # another build storing the same key first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(deps: Path, keep: int) -> None:
    """Keep the `keep` most recently used entries: a cache is for the next push,
    and one app must not fill the disk with every dependency set it ever had."""
    entries = [p for p in deps.iterdir() if not p.name.startswith(".tmp-") and p.is_dir()]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def size_of(path: Path) -> int:
    """Bytes of the regular files under `path` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
