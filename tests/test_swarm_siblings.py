"""What a node asks of its siblings: git history, restarts, logs, routers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from peoplescloud.bridge import LoopBridge
from peoplescloud.errors import PCError
from peoplescloud.runtime.base import InstanceStatus
from peoplescloud.state import Snapshot
from swarm.observed import report
from swarm.peer import PeerError
from swarm.repos import has_commit, tar_repo
from swarm.siblings import Siblings
from tests.conftest import make_repo
from tests.fakes_swarm import FakeState, app, member, release, settings
from tests.test_repos import bare_copy


class FakeClient:
    """Answers peer requests from `files` (node -> tar of a repo) and `lines`
    (node -> log lines); nodes in `down` do not answer."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.lines: dict[str, list[bytes]] = {}
        self.down: set[str] = set()
        self.calls: list[tuple[str, str, Any]] = []

    async def call(self, node: str, address: str, route: str, body: Any, **kw: Any) -> Any:
        self.calls.append((node, route, body))
        if node in self.down:
            raise PeerError(f"{node} ({address}) does not answer")
        return {"ok": True}

    async def stream(
        self, node: str, address: str, route: str, body: Any, **kw: Any
    ) -> AsyncIterator[bytes]:
        self.calls.append((node, route, body))
        if route == "repo" and node in self.files:
            yield self.files[node].read_bytes()
            return
        for line in self.lines.get(node, []):
            yield line
        if node in self.down or route == "repo":
            raise PeerError(f"{node} broke off the stream")


@pytest.fixture
def bridge() -> Iterator[LoopBridge]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield LoopBridge(loop)
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def swarm() -> Snapshot:
    snap = Snapshot(members={n: member(n, address=f"{n}:7001") for n in ("n1", "n2", "n3")})
    snap.apps["mybot"] = app(scale={"web": 2, "bot": 1})
    snap.apps["mybot"].placement = {"web.1": "n1", "web.2": "n2", "bot.1": "n3"}
    return snap


def make(tmp_path: Path, bridge: LoopBridge) -> tuple[Siblings, FakeClient, FakeState]:
    client, state = FakeClient(), FakeState(swarm())
    return Siblings(settings(tmp_path / "home"), state, client, bridge), client, state  # type: ignore[arg-type]


def test_history_pushed_elsewhere_is_copied_from_the_node_it_was_pushed_to(
    tmp_path: Path, bridge: LoopBridge
):
    siblings, client, _ = make(tmp_path, bridge)
    source = tmp_path / "n3" / "mybot.git"
    commit = bare_copy(make_repo(tmp_path, "python-bot"), source)
    tar_repo(source, tmp_path / "n3.tar")
    client.files["n3"] = tmp_path / "n3.tar"
    here = tmp_path / "home" / "repos" / "mybot.git"
    pushed = replace(release(), commit=commit, pushed_to="n3")
    siblings.sync_repo("mybot", pushed, here)
    assert has_commit(here, commit)
    assert [c[:2] for c in client.calls] == [("n3", "repo")]  # asked first, and enough
    siblings.sync_repo("mybot", pushed, here)  # already here: nobody is asked
    assert len(client.calls) == 1
    assert list((tmp_path / "home" / "tmp").iterdir()) == []


def test_history_no_member_can_give_is_an_error_that_says_so(tmp_path: Path, bridge: LoopBridge):
    siblings, client, _ = make(tmp_path, bridge)
    with pytest.raises(PCError) as e:
        siblings.sync_repo("mybot", release(pushed_to="n2"), tmp_path / "mybot.git")
    assert str(e.value) == (
        "no member could give this node the git history of mybot (c0ffee, pushed to n2): "
        "try again later, or use that node"
    )
    assert [c[0] for c in client.calls] == ["n2", "n3"]


def test_a_restart_reaches_the_siblings_that_run_the_app(tmp_path: Path, bridge: LoopBridge):
    siblings, client, _ = make(tmp_path, bridge)
    client.down = {"n2"}  # one that does not answer is logged, not fatal
    siblings.restart_elsewhere("mybot", "web")
    assert client.calls == [
        ("n2", "restart", {"app": "mybot", "ptype": "web"}),
        ("n3", "restart", {"app": "mybot", "ptype": "web"}),
    ]
    siblings.restart_elsewhere("ghost", None)
    assert len(client.calls) == 2


def test_sibling_logs_are_decoded_lines_and_a_silent_sibling_says_so(
    tmp_path: Path, bridge: LoopBridge
):
    siblings, client, _ = make(tmp_path, bridge)
    client.lines = {"n2": [b"t1 app[web.2]: hi\n"], "n3": [b"t2 app[bot.1]: yo\n"]}
    client.down = {"n3"}

    async def collect() -> list[list[str]]:
        streams = siblings.sibling_logs("mybot", 10, None, follow=False)
        return [[line async for line in s] for s in streams]

    n2, n3 = asyncio.run(collect())
    assert n2 == ["t1 app[web.2]: hi"]
    assert n3[0] == "t2 app[bot.1]: yo"
    assert n3[1].endswith(" app[pc]: logs unavailable: n3 broke off the stream")
    assert client.calls[0] == (
        "n2",
        "logs",
        {"app": "mybot", "lines": 10, "ptype": None, "follow": False},
    )


def test_routers_of_siblings_with_a_running_web_instance(tmp_path: Path, bridge: LoopBridge):
    siblings, _, state = make(tmp_path, bridge)
    web2 = InstanceStatus("mybot", "web.2", "v1", True)
    state.snap.members["n2"].router = "n2:8080"
    state.snap.observed["n2"] = report({web2.key: web2}, {})
    state.snap.members["n2"].lease_expires = 1e12
    assert siblings.sibling_routers("mybot") == ["n2:8080"]
    assert siblings.sibling_routers("ghost") == []
    state.snap.members["n2"].router = "moved:8080"  # same version, same second: cached
    assert siblings.sibling_routers("mybot") == ["n2:8080"]
    state.version += 1
    assert siblings.sibling_routers("mybot") == ["moved:8080"]
