"""What a daemon sweeps when it starts: leftovers of killed pushes, and slugs no
release names."""

from __future__ import annotations

from pathlib import Path

from dulwich.repo import Repo

from peoplescloud import daemon
from peoplescloud.cluster import LoneNode
from peoplescloud.settings import Settings
from peoplescloud.state import App, State
from peoplescloud.store import LocalStore
from tests.fakes import FakeCluster, release


def test_a_killed_pushs_temporary_packs_are_swept(tmp_path: Path):
    settings = Settings(home=tmp_path, name="n1")
    settings.repos_dir.mkdir()
    Repo.init_bare(settings.repo_path("mybot"), mkdir=True)
    objects = settings.repo_path("mybot") / "objects"
    (objects / "tmp_pack_k2j3h4").write_bytes(b"PACK half")  # add_thin_pack's
    (objects / "pack" / "tmpa8d7f6.pack").write_bytes(b"PACK half")  # add_pack's
    kept = [objects / "pack" / f"pack-{'ab' * 20}.{ext}" for ext in ("pack", "idx")]
    for path in kept:
        path.write_bytes(b"a stored pack")
    daemon.sweep_leftovers(settings)
    assert sorted(p.name for p in (objects / "pack").iterdir()) == sorted(p.name for p in kept)
    assert not list(objects.glob("tmp*"))


def slug(root: Path, text: str) -> Path:
    root.mkdir()
    (root / "bot.py").write_text(text)
    return root


def test_local_slugs_no_release_names_are_removed(tmp_path: Path):
    settings = Settings(home=tmp_path, name="n1")
    lone = LoneNode(settings)
    store = lone.store
    assert isinstance(store, LocalStore)
    named, destroyed, unpinned = (
        store.add(slug(tmp_path / name, name)) for name in ("named", "destroyed", "unpinned")
    )
    store.pin(named)
    store.pin(destroyed)  # its app was destroyed by a daemon killed before the unpin
    # `unpinned`: built and stored by a push killed before it pinned it
    with lone.state.change() as s:
        app = App(name="mybot", owner="ann", created="t", scale={"bot": 1})
        app.releases.append(release(1, named))
        app.current = 1
        s.apps["mybot"] = app
    daemon.sweep_unused_slugs(lone)  # type: ignore[arg-type]
    assert store.has(named) and store.pinned() == {named}
    assert not store.has(destroyed) and not store.has(unpinned)


class SwarmStore:
    name = "ipfs"

    def __init__(self) -> None:
        self.unpinned: list[str] = []

    def unpin(self, cid: str) -> None:
        self.unpinned.append(cid)


def test_a_swarms_pins_are_left_to_its_planner(tmp_path: Path):
    cluster = FakeCluster(State(tmp_path / "state.json"), SwarmStore())  # type: ignore[arg-type]
    daemon.sweep_unused_slugs(cluster)  # type: ignore[arg-type]
    assert cluster.store.unpinned == []  # type: ignore[attr-defined]


def test_caches_of_no_app_are_swept(tmp_path: Path):
    """The shared caches of older nodes (cache/deps, cache/pip) belong to no app."""
    settings = Settings(home=tmp_path, name="n1")
    for old in ("deps/abc", "pip/http", "mybot/deps/.tmp-x1"):
        (settings.cache_dir / old).mkdir(parents=True)
    (settings.cache_dir / "mybot" / ".owner").write_text("ann t")
    (settings.cache_dir / "mybot" / "deps" / "k1").mkdir()
    daemon.sweep_leftovers(settings)
    assert sorted(p.name for p in settings.cache_dir.iterdir()) == ["mybot"]
    assert sorted(p.name for p in (settings.cache_dir / "mybot" / "deps").iterdir()) == ["k1"]
