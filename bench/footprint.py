"""What a node spends per bot, beyond the bot's own python. Prints a table.

    python -m bench.footprint [--runtime docker|process|both]

For each runtime: a fresh node, the sample python bot pushed, then scaled to 1
and to 10 idle instances. Once they have idled a few seconds, every process
the node adds for a bot is counted, the bot's own python left out: on the
process runtime the instance's process group (pc-shim, the bubblewraps); on
docker the container's processes (pc-shim, its init) and the
containerd-shim that runs it. RSS counts shared pages once per process (as
`ps` does); PSS splits them between the processes that share them, so ten
bots share pc-shim's code and the figure per bot falls.

Goals (issue 12): per bot at most Piku's 8.9 MB on the process runtime, and at
most the containerd-shim's own plus 2 MB on docker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.harness import NodeProc, cleanup_instances, init_node, keygen, make_repo, wait_for
from peoplescloud.runtime.lease import group_members

APP = "fpbot"
PIKU_MB = 8.9  # Piku's overhead per bot on this kind of machine (issue 12)
DOCKER_EXTRA_MB = 2.0  # what docker may add per bot beyond its containerd-shim
IDLE = 5  # seconds the bots idle before they are measured
NAMES = ("containerd-shim", "pc-shim")  # their names carry a suffix
BEFORE = {"docker": 26.6, "process": 19.6}  # the Python shim and watchdog, as issue 12 measured


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of `pid` in MB; (0, 0) if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0, 0.0

    def kb(text: str, field: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(field + ":")), "0 0")
        return int(line.split()[1]) / 1024

    return kb(status, "VmRSS"), kb(rollup, "Pss")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def is_bot(pid: int) -> bool:
    """The bot's own python (what Piku counts as the app, too): `bot.py` is one of
    its arguments (the shim's and bubblewrap's hold `exec python bot.py` as one)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg == b"bot.py" or arg.endswith(b"/bot.py") for arg in argv[1:])


def process_instances(node: NodeProc) -> list[list[int]]:
    """Each running instance's processes: its shim's process group."""
    from peoplescloud.settings import load

    groups = []
    for handle in (load(node.home).run_dir / APP).glob("*.json"):
        pid = int(handle.read_text().split('"pid": ')[1].split(",")[0])
        members = group_members(pid)
        if pid in members:
            groups.append(members)
    return groups


def docker_instances(node: NodeProc) -> list[list[int]]:
    """Each running container's processes (those in its pid namespace) and its
    containerd-shim (the parent of its init)."""
    import docker

    client = docker.from_env()
    groups = []
    for c in client.containers.list(filters={"label": f"peoplescloud.node={node.name}"}):
        init = c.attrs["State"]["Pid"]
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        inside = []
        for ns in Path("/proc").glob("[0-9]*/ns/pid"):
            try:
                if os.readlink(ns) == namespace:
                    inside.append(int(ns.parent.parent.name))
            except OSError:
                continue
        shim = int(Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()[1])
        groups.append([shim, *inside])
    return groups


def measure(node: NodeProc, bots: int) -> dict[str, float]:
    """Scale to `bots`, let them idle, and sum what each bot costs."""
    said = node.ssh("ps:scale", APP, f"bot={bots}")
    if said.returncode != 0:
        raise SystemExit(f"ps:scale failed: {said.stderr}")
    find = docker_instances if node.runtime == "docker" else process_instances

    def running() -> list[list[int]] | None:
        groups = find(node)
        ok = len(groups) == bots and all(any(is_bot(p) for p in g) for g in groups)
        return groups if ok else None

    wait_for(running, f"{bots} bots to run", timeout=300)
    time.sleep(IDLE)
    groups = running()
    if groups is None:
        raise SystemExit(f"the {bots} bots did not stay up")
    out: dict[str, float] = defaultdict(float)
    for group in groups:
        for pid in group:
            rss, pss = memory(pid)
            if is_bot(pid):
                out["bot rss"] += rss / bots
                continue
            name = next((n for n in NAMES if comm(pid).startswith(n)), comm(pid))
            out["rss"] += rss / bots
            out["pss"] += pss / bots
            out[f"rss {name}"] += rss / bots
            out[f"count {name}"] += 1 / bots
    return out


def run(runtime: str, root: Path, key: Path) -> list[tuple[int, dict[str, float]]]:
    node = init_node(root, key, runtime)
    node.start()
    try:
        work = make_repo(root, "python-bot")
        pushed = node.git(work, "push", node.remote(APP), "main")
        if pushed.returncode != 0:
            raise SystemExit(f"push failed:\n{pushed.stderr}")
        return [(n, measure(node, n)) for n in (1, 10)]
    finally:
        node.stop()
        cleanup_instances(node.home, runtime)


def verdict(runtime: str, m: dict[str, float]) -> tuple[str, str]:
    """The goal, as words, and whether this run met it."""
    if runtime == "process":
        return f"≤ {PIKU_MB} MB (Piku)", "met" if m["rss"] <= PIKU_MB else "missed"
    beyond = m["rss"] - m.get("rss containerd-shim", 0.0)
    goal = f"≤ containerd-shim + {DOCKER_EXTRA_MB:.0f} MB = {m['rss'] - beyond + 2:.1f} MB"
    return goal, f"{'met' if beyond <= DOCKER_EXTRA_MB else 'missed'} (+{beyond:.1f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["docker", "process", "both"], default="both")
    args = parser.parse_args()
    runtimes = ["docker", "process"] if args.runtime == "both" else [args.runtime]
    # Ten bots of 128 MB each fit the node's shares (the default is 512 MB each).
    os.environ.update(PC_SHARES_MEMORY_MB="4096", PC_SHARES_INSTANCE_MEMORY_MB="128")
    with tempfile.TemporaryDirectory(prefix="pc-bench-") as tmp:
        root = Path(tmp)
        key = keygen(root / "id_ed25519")
        rows = [(rt, n, m) for rt in runtimes for n, m in run(rt, root, key)]
    print()
    print("| runtime | bots | per bot, RSS (MB) | per bot, PSS (MB) | made of (RSS, MB) "
          "| goal (RSS) | | before (issue 12's measure) | bot's own python (RSS) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for rt, n, m in rows:
        parts = ", ".join(
            f"{k[4:]} ×{m['count ' + k[4:]]:.0f} {v:.1f}"
            for k, v in sorted(m.items())
            if k.startswith("rss ") and v
        )
        goal, met = verdict(rt, m)
        print(
            f"| {rt} | {n} | {m['rss']:.1f} | {m['pss']:.1f} | {parts} | {goal} | {met} "
            f"| {BEFORE[rt]} | {m['bot rss']:.1f} |"
        )


if __name__ == "__main__":
    main()
