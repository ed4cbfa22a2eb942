"""The dependency cache: a push that changes only source installs nothing.

An installed dependency directory (`.venv`, `node_modules`) is kept under
`<cache>/deps/<key>/`, where the key hashes everything the install depends on.
On a hit it is copied into the slug with hard links, which costs almost nothing.
Entries are built in a temporary directory and renamed into place, so a build
killed half way never leaves a half entry behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from builder.executor import Say


def cache_key(identity: str, kind: str, tree: Path, files: Iterable[str]) -> str:
    """sha256 of the executor identity, the kind and the named dependency files
    (present or not: adding a lock file must change the key)."""
    digest = hashlib.sha256()
    for part in (identity, kind):
        digest.update(part.encode() + b"\0")
    for name in sorted(files):
        path = tree / name
        digest.update(name.encode() + b"\0")
        if path.is_file():
            digest.update(b"1" + hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(b"0")
    return digest.hexdigest()


def install_cached(
    cache: Path,
    key: str | None,
    target: Path,
    label: str,
    install: Callable[[], None],
    say: Say,
) -> None:
    """Fill `target` (e.g. `<slug>/.venv`) from the cache entry `key`, or run
    `install` to create it and keep a copy under that key. `key=None` means the
    result cannot be cached and is always installed."""
    _remove(target)  # a committed .venv or node_modules is never trusted
    entry = cache / "deps" / key if key else None
    if entry is not None and entry.is_dir():
        _copy(entry, target)
        say(f"-----> {label} ... done (cached)")
        return
    say(f"-----> {label}")
    install()
    if entry is not None and target.is_dir():
        _store(target, entry)


def _store(source: Path, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        _copy(source, tmp / "d")
        os.rename(tmp / "d", entry)
    except OSError:
        if not entry.is_dir():  # another build storing the same key first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
