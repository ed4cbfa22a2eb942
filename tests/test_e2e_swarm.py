"""Three nodes on loopback, each with its own home, kubo and ports, one shared
Docker engine; driven with the system git and ssh, and `pc swarm ...`. Node 3
uses a kubo its host runs (`[ipfs] api`); the others start their own.

One long scenario, run once: create, invite, join; a user added on one node
works on another; push to node 1; the bot runs where placement says and its
slug is pinned on three nodes; a clone from node 3; a web app through every
node's router; logs from another node; kill the node that runs the bot and see
it run elsewhere; bring the node back and see one copy; freeze a node past the
failover time and see no second copy; leave; no quorum.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from peoplescloud.settings import SwarmSettings
from swarm.ipfs.kubo import Kubo
from tests.conftest import NodeProc, commit_all, free_port, keygen, make_repo, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.ipfs, pytest.mark.e2e]

FAILOVER = SwarmSettings.lease_seconds + SwarmSettings.margin_seconds  # the defaults


NODES: set[str] = set()  # this test's node names: the engine may be shared


def copies(app: str) -> list[str]:
    """The nodes whose containers run an instance of `app` now (Docker's truth)."""
    running = docker.from_env().containers.list(filters={"label": f"peoplescloud.app={app}"})
    return sorted(n for c in running if (n := c.labels["peoplescloud.node"]) in NODES)


def where(node: NodeProc, app: str, process: str = "bot.1") -> str | None:
    """The node `ps` (asked of `node`) says runs `process`, if it is up."""
    r = node.ssh("ps", app)
    for line in r.stdout.splitlines():
        fields = line.split()
        if fields[:2] == [process, "up"]:
            return fields[3]
    return None


def get_web(node: NodeProc, app: str) -> tuple[str, str] | None:
    """(body, Via header) of `GET /` for APP.localhost through `node`'s router."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.router_port}/", headers={"Host": f"{app}.localhost"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.read().decode(), resp.headers["Via"]
    except OSError:
        return None


@pytest.fixture
def operator_kubo(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start a kubo as a host would run one beside its node: its API URL."""
    started: list[Kubo] = []

    def start(swarm_key: str) -> str:
        kubo = Kubo(tmp_path / "operator-kubo", swarm_key, free_port(), free_port())
        kubo.init()  # our quiet config: what the node checks for
        kubo.start()
        started.append(kubo)
        return kubo.api_url

    yield start
    for kubo in started:
        kubo.stop()


def test_three_nodes_place_replicate_and_fail_over(
    node_factory, operator_kubo: Callable[[str], str], tmp_path: Path
):
    n1, n2, n3 = (node_factory("docker", start=False) for _ in range(3))
    by_name = {n.name: n for n in (n1, n2, n3)}
    NODES.update(by_name)

    assert n1.pc("swarm", "create", "--name", "friends").returncode == 0
    n1.start()
    for joiner in (n2, n3):
        token = n1.pc("swarm", "invite").stdout.strip().splitlines()[-1]
        assert joiner.pc("swarm", "join", token).returncode == 0
        if joiner is n3:  # node 3 uses a kubo its host runs ([ipfs] api), not its own
            swarm_key = json.loads((n3.home / "swarm.json").read_text())["swarm_key"]
            config = n3.home / "config.toml"
            api = operator_kubo(swarm_key)
            config.write_text(config.read_text().replace('api = ""', f'api = "{api}"'))
        joiner.start()
        # A token works once.
        again = n3.pc("swarm", "join", token, check=False) if joiner is n2 else None
        if again is not None:
            assert again.returncode != 0 and "already used" in again.stderr
    status = wait_for(
        lambda: (s := n2.pc("swarm", "status").stdout).count(" up ") == 3 and s,
        what="three members up",
    )
    assert all(n.name in status for n in (n1, n2, n3))
    assert n2.ssh("swarm:nodes").stdout.count(" up ") == 3
    assert f"using the kubo at {api}" in n3.log.read_text()

    # A user added on one node is known on every node.
    ann_key = keygen(tmp_path / "ann")
    n3.pc("user", "add", "ann", "--key", f"{ann_key}.pub")
    assert "ann: 1 key(s)" in n2.pc("user", "list").stdout
    r = dataclasses.replace(n1, key=ann_key).ssh("apps")
    assert r.returncode == 0 and "No apps yet" in r.stdout, r.stderr
    # Removed on another node: the key stops working on every node.
    n2.pc("user", "remove", "ann")
    wait_for(lambda: dataclasses.replace(n1, key=ann_key).ssh("apps").returncode == 255)

    # Push to node 1: it runs where placement says, the slug is pinned on all three.
    work = make_repo(tmp_path, "python-bot")
    r = n1.git(work, "push", n1.remote("mybot"), "main")
    assert r.returncode == 0, r.stderr
    assert "Release v1 running: bot.1 on" in r.stderr
    home = wait_for(lambda: where(n2, "mybot"), what="bot.1 up")
    assert copies("mybot") == [home]
    rows = {line.split()[0]: line for line in n3.ssh("swarm:nodes").stdout.splitlines()}
    assert "512 MB, 0.25 cpu, 1 app " in rows[home]  # what it uses of its shares
    releases = wait_for(
        lambda: (o := n3.ssh("releases", "mybot").stdout).count(",") >= 2 and o,
        what="slug pinned on three nodes",
    )
    assert all(n.name in releases for n in (n1, n2, n3))

    # The git history is the same on every node: node 3 clones an app pushed to node 1.
    clone = tmp_path / "clone"
    r = n3.git(tmp_path, "clone", "-q", n3.remote("mybot"), str(clone))
    assert r.returncode == 0, r.stderr
    assert (clone / "bot.py").read_text() == (work / "bot.py").read_text()

    # A web app answers through every node's router: a node that does not run
    # it passes the request to the router of the node that does.
    site = make_repo(tmp_path, "procfile-two")
    r = n2.git(site, "push", n2.remote("site"), "main")
    assert r.returncode == 0, r.stderr
    web_home = wait_for(lambda: where(n1, "site", "web.1"), what="site's web.1 up")
    for n in (n1, n2, n3):
        body, via = wait_for(lambda n=n: get_web(n, "site"), what=f"site through {n.name}")
        assert body == "hello from web.1\n"
        assert via == (f"1.1 {n.name}" + (f", 1.1 {web_home}" if n.name != web_home else ""))
    assert n1.ssh("apps:destroy", "site", "--confirm", "site").returncode == 0
    site_repo = n2.home / "repos" / "site.git"  # pushed to node 2, destroyed on node 1
    wait_for(lambda: not site_repo.exists(), what="site's repo gone from node 2 too")

    # Logs from a node that does not run it.
    reader = next(n for n in (n1, n2, n3) if n.name != home)
    wait_for(lambda: "app[bot.1]: logged in" in reader.ssh("logs", "mybot").stdout, what="logs")

    # Kill the node that runs the bot: it runs elsewhere, with its logs.
    victim = by_name[home]
    victim.kill()
    survivor = next(n for n in (n1, n2, n3) if n is not victim)
    killed_at = time.monotonic()
    moved = wait_for(
        lambda: (w := where(survivor, "mybot")) not in (None, home) and w,
        timeout=FAILOVER + 30,
        what="bot.1 running on another node",
    )
    assert copies("mybot") == [moved]
    wait_for(
        lambda: "app[bot.1]: logged in" in survivor.ssh("logs", "mybot").stdout,
        what="the new copy's first line, read from a node",
    )
    print(f"failover: bot.1 up on {moved} {time.monotonic() - killed_at:.1f} s after the kill")

    # The killed node comes back: still exactly one copy.
    victim.start()
    wait_for(lambda: n1.pc("swarm", "status").stdout.count(" up ") == 3, what="all up again")
    time.sleep(3)
    assert copies("mybot") == [moved]

    # Freeze the node that runs it past the failover time; never two copies.
    frozen = by_name[moved]
    frozen.signal_all(signal.SIGSTOP)
    deadline = time.monotonic() + FAILOVER + 20
    seen_elsewhere = False
    while time.monotonic() < deadline:
        now = copies("mybot")
        assert len(now) <= 1, f"two copies at once: {now}"
        seen_elsewhere = seen_elsewhere or (now and now[0] != moved)
        time.sleep(0.2)
    frozen.signal_all(signal.SIGCONT)
    assert seen_elsewhere, "the frozen node's bot was never taken over"
    for _ in range(20):  # after it resumes, it must not start its stale copy again
        assert len(copies("mybot")) == 1
        time.sleep(0.25)

    # The node that runs the bot leaves: the bot moves (stopped there, then started
    # on another node: a short gap, never two copies), then the node leaves.
    leaver = by_name[copies("mybot")[0]]
    r = leaver.pc("swarm", "leave", check=False)
    assert r.returncode == 0, r.stderr
    assert "left swarm friends" in r.stdout
    [now_on] = wait_for(lambda: copies("mybot"), what="the bot running on another node")
    assert now_on != leaver.name
    assert leaver.proc is not None and leaver.proc.wait(timeout=30) == 0  # stops by itself
    assert "this node left the swarm: stopping" in leaver.log.read_text()
    leaver.proc = None
    stayer = by_name[now_on]
    status = wait_for(
        lambda: leaver.name not in (o := stayer.pc("swarm", "status").stdout) and o,
        what="the leaver gone from the members",
    )
    assert status.count(" up ") == 2

    # Two of three gone: no quorum. A push is refused and says why. (This node then
    # stops its bot when its lease ends: it cannot tell dead siblings from a cut.)
    alive = by_name[copies("mybot")[0]]
    for n in (n1, n2, n3):
        if n is not alive:
            n.kill()
    (work / "bot.py").write_text((work / "bot.py").read_text() + "# v2\n")
    commit_all(work, "v2")
    r = alive.git(work, "push", alive.remote("mybot"), "main")
    assert r.returncode != 0 and "no quorum" in r.stderr, r.stderr


def state_of(node: NodeProc, member: str) -> str | None:
    """The state `pc swarm status` on `node` gives `member` (None: not listed)."""
    for line in node.pc("swarm", "status").stdout.splitlines():
        if line.split()[:1] == [member]:
            return line.split()[1]
    return None


def test_a_member_dead_for_good_is_removed_and_the_others_run_its_apps(
    node_factory, tmp_path: Path
):
    """Three nodes; the one that runs the bot dies for good; its host's neighbour
    removes it (`pc swarm remove`): two members left, a majority of two, the bot
    runs there and a new release goes through; the dead one is listed nowhere."""
    n1, n2, n3 = (node_factory("docker", start=False) for _ in range(3))
    by_name = {n.name: n for n in (n1, n2, n3)}
    NODES.update(by_name)
    assert n1.pc("swarm", "create", "--name", "friends").returncode == 0
    n1.start()
    for joiner in (n2, n3):
        token = n1.pc("swarm", "invite").stdout.strip().splitlines()[-1]
        assert joiner.pc("swarm", "join", token).returncode == 0
        joiner.start()
    wait_for(lambda: n1.pc("swarm", "status").stdout.count(" up ") == 3, what="three up")
    work = make_repo(tmp_path, "python-bot")
    assert n1.git(work, "push", n1.remote("mybot"), "main").returncode == 0
    home = wait_for(lambda: where(n1, "mybot"), what="bot.1 up")
    dead = by_name[home]
    survivor = next(n for n in (n1, n2, n3) if n is not dead)

    # A member that is up is not removed: it leaves by itself.
    r = survivor.pc("swarm", "remove", dead.name, check=False)
    assert r.returncode != 0 and f"{dead.name} is up" in r.stderr, r.stderr

    dead.kill()  # for good: its home is never started again
    wait_for(
        lambda: state_of(survivor, dead.name) == "down",
        timeout=FAILOVER + 30,
        what="the dead member down",
    )
    r = survivor.pc("swarm", "remove", dead.name, check=False)
    assert r.returncode == 0, r.stderr
    assert f"{dead.name} removed from the swarm" in r.stdout
    status = survivor.pc("swarm", "status").stdout
    assert dead.name not in status and status.count(" up ") == 2
    assert dead.name not in survivor.ssh("swarm:nodes").stdout
    moved = wait_for(lambda: (w := where(survivor, "mybot")) not in (None, home) and w)
    assert copies("mybot") == [moved]

    # Two members, both needed for a majority: a new release still goes through.
    (work / "bot.py").write_text((work / "bot.py").read_text() + "# v2\n")
    commit_all(work, "v2")
    r = survivor.git(work, "push", survivor.remote("mybot"), "main")
    assert r.returncode == 0, r.stderr
    assert "Release v2 running" in r.stderr
    releases = survivor.ssh("releases", "mybot").stdout
    assert dead.name not in releases.splitlines()[0]  # not among the slug's holders

    # Of the two left, one dies as well: no majority, and the host is told what to do.
    other = next(n for n in (n1, n2, n3) if n not in (dead, survivor))
    other.kill()
    wait_for(
        lambda: state_of(survivor, other.name) == "down",
        timeout=FAILOVER + 30,
        what="the second member down",
    )
    r = survivor.pc("swarm", "remove", other.name, check=False)
    assert r.returncode != 0 and "one at a time, while most are alive" in r.stderr, r.stderr
