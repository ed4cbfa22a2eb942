"""The swarm's numbers. Prints a table.

    python -m bench.swarm

1. Replicating a 50 MB slug to two siblings (the store's `pin`, what a swarm
   does after a push) against a plain `ipfs get` of another 50 MB tree between
   the same kubo daemons: the ratio is the figure (1.0 = no overhead).
2. Failover: three nodes (docker runtime, each with its kubo), a bot pushed,
   the node that runs it killed (daemon, kubo, containers); the time from the
   kill to the bot's first log line on its new node, read with `ssh logs`.
3. Idle memory of a swarm node: its daemon plus its kubo (RSS).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import (
    NodeProc,
    bot_swarm,
    keygen,
    new_kubo,
    runs_on,
)
from bench.push_to_running import rss_mb
from swarm.ipfs.kubo import Kubo, find_binary
from swarm.ipfs.store import IpfsStore

SIZE_MB = 50


def random_tree(root: Path) -> Path:
    """A slug-like tree: 50 files of 1 MB of random bytes, some in a subfolder."""
    (root / "lib").mkdir(parents=True)
    for i in range(SIZE_MB):
        (root / ("lib" if i % 2 else "") / f"part{i}.bin").write_bytes(os.urandom(1 << 20))
    return root


def in_parallel(*jobs) -> float:
    start = time.monotonic()
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start


def replication(root: Path) -> tuple[float, float]:
    key = secrets.token_hex(32)
    kubos = []
    for name in "abc":
        kubos.append(new_kubo(root / name, key, peers=[k.multiaddr for k in kubos]))
    try:
        a, b, c = (IpfsStore(k.api_url) for k in kubos)
        for k in kubos[1:]:
            k.connect(kubos[0].multiaddr)
        ours = a.add(random_tree(root / "slug1"))
        pinned = in_parallel(lambda: b.pin(ours), lambda: c.pin(ours))
        plain = a.add(random_tree(root / "slug2"))

        def ipfs_get(kubo: Kubo, dest: Path) -> None:
            env = {**os.environ, "IPFS_PATH": str(kubo.repo)}
            subprocess.run(
                [str(find_binary()), "get", "-o", str(dest), plain],
                env=env,
                check=True,
                capture_output=True,
            )

        got = in_parallel(
            lambda: ipfs_get(kubos[1], root / "get-b"), lambda: ipfs_get(kubos[2], root / "get-c")
        )
        return pinned, got
    finally:
        for k in kubos:
            k.stop()


def failover(root: Path, key: Path) -> tuple[float, float]:
    with bot_swarm(root, key, "bench", "benchbot") as nodes:
        by_name = {n.name: n for n in nodes}
        first = nodes[0]
        home = wait(lambda: runs_on(first, "benchbot"), "bot up")
        time.sleep(5)  # idle
        idle = max(node_rss(n) for n in nodes)
        victim = by_name[home]
        other = next(n for n in nodes if n is not victim)
        victim.kill()
        killed = time.monotonic()
        wait(
            lambda: (
                (w := runs_on(other, "benchbot")) not in (None, home)
                and "app[bot.1]: logged in" in other.ssh("logs", "benchbot", "-n", "5").stdout
                and w
            ),
            "the bot's first line on its new node",
            timeout=120,
        )
        return time.monotonic() - killed, idle


def node_rss(node: NodeProc) -> float:
    assert node.proc is not None
    return rss_mb(node.proc.pid) + sum(rss_mb(p) for p in node.kubo_pids())


def wait(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pc-bench-swarm-") as tmp:
        root = Path(tmp)
        pinned, got = replication(root / "ipfs")
        key = keygen(root / "id_ed25519")
        took, idle = failover(root / "nodes", key)
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| replicate {SIZE_MB} MB slug to 2 siblings (pin) | {pinned:.2f} s |")
    print(f"| plain `ipfs get` of {SIZE_MB} MB on the same 2 siblings | {got:.2f} s |")
    print(f"| ratio | {pinned / got:.2f} |")
    print(f"| failover: kill to the bot's first line on its new node | {took:.1f} s |")
    print(f"| idle node memory (daemon + kubo, RSS, largest of 3) | {idle:.0f} MB |")
    print("\ntargets: failover under 15 s with default settings")


if __name__ == "__main__":
    main()
