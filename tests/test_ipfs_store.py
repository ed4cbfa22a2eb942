"""IpfsStore on two kubos of one private network (loopback): a slug added on A is
pinned and fetched on B, whole and runnable; a node outside the network gets nothing."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peoplescloud.errors import NotFound
from peoplescloud.store import tree_digest
from swarm.ipfs import IpfsStore, Kubo, KuboError
from tests.test_kubo import new_kubo

pytestmark = pytest.mark.ipfs
SWARM_KEY = secrets.token_hex(32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IpfsStore, IpfsStore]]:
    """Stores on kubos A and B, connected to each other."""
    root = tmp_path_factory.mktemp("ipfs")
    a = new_kubo(root / "a", SWARM_KEY)
    b = new_kubo(root / "b", SWARM_KEY)
    b.connect(a.multiaddr)
    stores = IpfsStore(a.api_url), IpfsStore(b.api_url, fetch_timeout=30)
    yield stores
    for store in stores:
        store.close()
    b.stop()
    a.stop()


def make_slug(root: Path, greeting: str = "hello from the slug") -> Path:
    """A slug like the builder's: a venv whose python is a symlink to the host's, an
    executable launcher, nested and empty directories, a file bigger than one chunk."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    (root / "app" / "lib").mkdir(parents=True)
    (root / "app" / "lib" / "greet.py").write_text(f"GREETING = {greeting!r}\n")
    (root / "app" / "empty").mkdir()
    (root / "bot.py").write_text(
        "import sys\nsys.path.insert(0, 'app/lib')\nfrom greet import GREETING\nprint(GREETING)\n"
    )
    run = root / "run"
    run.write_text('#!/bin/sh\ncd "$(dirname "$0")" && exec .venv/bin/python bot.py\n')
    run.chmod(0o750)
    (root / "secret.txt").write_text("only the owner reads me\n")
    (root / "secret.txt").chmod(0o600)
    os.symlink("lib/greet.py", root / "app" / "greet-link")
    (root / "app" / 'odd name, "quoted" ü %2F.txt').write_text("names survive\n")
    (root / "data.bin").write_bytes(secrets.token_bytes(3 << 20))
    return root


def listing(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under root: kind and permission bits, or a symlink's target."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        else:
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out[rel] = (kind, oct(stat.S_IMODE(st.st_mode)))
    return out


def test_a_slug_added_on_a_runs_from_b(pair: tuple[IpfsStore, IpfsStore], tmp_path: Path):
    a, b = pair
    slug = make_slug(tmp_path / "slug")
    cid = a.add(slug)
    assert a.has(cid)
    assert not b.has(cid)

    b.pin(cid)
    assert b.has(cid)
    out = tmp_path / "out"
    b.get(cid, out)

    assert listing(out) == listing(slug)
    assert tree_digest(out) == tree_digest(slug)
    assert os.readlink(out / ".venv" / "bin" / "python") == os.readlink(
        slug / ".venv" / "bin" / "python"
    )
    done = subprocess.run([out / "run"], capture_output=True, text=True, check=True)
    assert done.stdout == "hello from the slug\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_same_tree_same_cid_whatever_the_mtimes(pair: tuple[IpfsStore, IpfsStore], tmp_path: Path):
    a, _ = pair
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text("print('hi')\n")
    first = a.add(slug)
    os.utime(slug / "bot.py", (0, 0))
    assert a.add(slug) == first
    (slug / "bot.py").chmod(0o755)
    assert a.add(slug) != first


def test_get_never_leaves_a_half_written_slug(pair: tuple[IpfsStore, IpfsStore], tmp_path: Path):
    a, _ = pair
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text("print('hi')\n")
    cid = a.add(slug)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "other").write_text("x")
    with pytest.raises(OSError):
        a.get(cid, taken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slug", "taken"]
    assert [p.name for p in taken.iterdir()] == ["other"]


def test_a_slug_unpacked_ahead_is_taken_whole_by_a_rename(
    pair: tuple[IpfsStore, IpfsStore], tmp_path: Path
):
    a, _ = pair
    cid = a.add(make_slug(tmp_path / "slug"))
    store = IpfsStore(a.api.url, ready_dir=tmp_path / "ready")
    store.prepare(cid)
    assert store.prepared() == {cid}
    inode = (tmp_path / "ready" / cid / "bot.py").stat().st_ino
    store.get(cid, tmp_path / "here")
    assert (tmp_path / "here" / "bot.py").stat().st_ino == inode  # moved, not unpacked again
    assert tree_digest(tmp_path / "here") == tree_digest(tmp_path / "slug")
    assert store.prepared() == set()
    store.get(cid, tmp_path / "again")  # nothing ready: unpacked from kubo
    assert tree_digest(tmp_path / "again") == tree_digest(tmp_path / "slug")
    store.prepare(cid)
    store.discard(cid)
    assert store.prepared() == set() and not list((tmp_path / "ready").iterdir())


def test_unpin(pair: tuple[IpfsStore, IpfsStore], tmp_path: Path):
    a, b = pair
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text(f"print({secrets.token_hex(8)!r})\n")
    cid = a.add(slug)
    b.pin(cid)
    b.unpin(cid)
    assert not b.has(cid)
    assert a.has(cid)
    b.unpin(cid)  # twice is fine
    a.unpin(cid)
    assert not a.has(cid)


def test_unknown_content_is_not_found(pair: tuple[IpfsStore, IpfsStore], tmp_path: Path):
    a, _ = pair
    # A well-formed CID that no node has: the lookup gives up after fetch_timeout.
    lost = IpfsStore(a.api.url, fetch_timeout=1)
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    try:
        assert not lost.has(cid)
        with pytest.raises(NotFound):
            lost.pin(cid)
        with pytest.raises(NotFound):
            lost.get(cid, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    finally:
        lost.close()


def test_a_node_outside_the_private_network_cannot_fetch(
    pair: tuple[IpfsStore, IpfsStore], tmp_path: Path
):
    a, _ = pair
    slug = tmp_path / "slug"
    slug.mkdir()
    (slug / "bot.py").write_text("print('private')\n")
    cid = a.add(slug)

    stranger: Kubo = new_kubo(tmp_path / "stranger", secrets.token_hex(32))
    store = IpfsStore(stranger.api_url, fetch_timeout=2)
    try:
        with pytest.raises(KuboError, match="failed to negotiate security protocol"):
            stranger.connect(a_multiaddr(a))
        with pytest.raises(NotFound):
            store.get(cid, tmp_path / "out")
        assert not store.has(cid)
    finally:
        store.close()
        stranger.stop()


def a_multiaddr(store: IpfsStore) -> str:
    """A's swarm address, as its kubo reports it."""
    found = store.api.json("id")
    return next(addr for addr in found["Addresses"] if "/tcp/" in addr)
