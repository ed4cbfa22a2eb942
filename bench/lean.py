"""How lean and quick a node is. Prints one table.

    python -m bench.lean [memory] [density] [failover]   (all three by default)

1. memory: an idle lone daemon's RSS on the process and on the docker runtime,
   and a one-member swarm's daemon plus its kubo (VmRSS from /proc; the
   dashboard's gunicorn, a separate process, is shown apart).
2. density: one node on the process runtime (docker's per-container cost makes
   fifty too heavy for a 2-core machine), ten Procfile apps of five idle bots
   each: an SSH command's answer time, a source-only push's time, and the
   daemon's CPU at rest over 30 s.
3. failover: three nodes on the docker runtime, the python bot pushed; five
   times, the node that runs it is killed (daemon, kubo, containers) and the
   time from the daemon's SIGKILL (before the engine removes the dead node's
   containers, which takes a while) to the bot's first line in its new node's
   log is taken (read every
   0.05 s), while the containers that run it on any node are counted every
   0.2 s (never more than one). The killed node is started again between
   kills, and each kill comes 10 s after the bot came up: time for the others
   to hold its slug, unpacked. Each kill is broken down too (epoch times from
   the killed node's lease file, the leader's log, the engine and docker's log
   of the new container): kill to the lease's end, to placement elsewhere, to
   the container's start, to the bot's first line, to that line in the node's
   log; the table gives the median of each step.

Everything is bounded in time and count, and every node, bot and container is
cleaned up at the end, whatever happened.
"""

from __future__ import annotations

import calendar
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    NodeProc,
    bot_swarm,
    cleanup_instances,
    commit_all,
    init_node,
    keygen,
    make_repo,
    runs_on,
)

APPS, PER_APP = 10, 5  # fifty idle bots
KILLS = 5
REST = 30.0  # seconds the daemon's CPU is measured at rest
SETTLE = 10.0  # seconds between a bot coming up and the next kill
IDLE_BOT = "bot: python3 -u -c \"print('up'); import time; time.sleep(10**9)\"\n"


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(predicate: Callable[[], Any], what: str, timeout: float = 120, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def memory(root: Path, key: Path) -> list[tuple[str, str]]:
    rows = []
    for runtime in ("process", "docker"):
        node = init_node(root, key, runtime)
        try:
            node.start()
            time.sleep(10)  # idle: the first passes are over
            assert node.proc is not None
            pid = node.proc.pid
            anon, files = status_kb(pid, "RssAnon") / 1024, status_kb(pid, "RssFile") / 1024
            rows.append(
                (
                    f"idle lone daemon, {runtime} runtime (RSS; anonymous + file-backed)",
                    f"{rss_mb(pid):.0f} MB ({anon:.0f} + {files:.0f})",
                )
            )
            dash = sum(rss_mb(p) for p in node.dashboard_pids())
            rows.append((f"its dashboard's gunicorn master ({runtime}), apart", f"{dash:.0f} MB"))
        finally:
            node.stop()
            cleanup_instances(node.home, node.runtime)
    node = init_node(root, key, "process")
    try:
        node.pc("swarm", "create", "--name", "lean")
        node.start()
        wait(lambda: " up " in node.pc("swarm", "status").stdout, "the swarm up")
        time.sleep(10)
        assert node.proc is not None
        daemon, kubo = rss_mb(node.proc.pid), sum(rss_mb(p) for p in node.kubo_pids())
        kubo_files = sum(status_kb(p, "RssFile") for p in node.kubo_pids()) / 1024
        rows.append(("idle swarm daemon (RSS)", f"{daemon:.0f} MB"))
        rows.append((f"its kubo (RSS; {kubo_files:.0f} MB of it file-backed)", f"{kubo:.0f} MB"))
        rows.append(("daemon + kubo", f"{daemon + kubo:.0f} MB"))
    finally:
        node.stop()
        for pid in node.kubo_pids():
            os.kill(pid, 9)
        cleanup_instances(node.home, node.runtime)
    return rows


def idle_app(root: Path, name: str) -> Path:
    work = make_repo(root, "procfile-two")
    (work / "web.py").unlink()
    (work / "Procfile").write_text(IDLE_BOT)
    commit_all(work, f"{name}: an idle bot")
    return work


def density(root: Path, key: Path) -> list[tuple[str, str]]:
    node = init_node(root, key, "process")
    try:
        node.start()
        r = node.ssh("quota:set", "admin", f"apps={APPS}", f"instances={APPS * PER_APP}")
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        works = {}
        for i in range(APPS):
            name = f"idle{i}"
            works[name] = work = idle_app(root, name)
            r = node.ssh("apps:create", name)
            r = node.ssh("ps:scale", name, f"bot={PER_APP}")
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            r = node.git(work, "push", node.remote(name), "main")
            if r.returncode != 0:
                raise SystemExit(r.stderr)
        up = lambda: sum(node.ssh("ps", n).stdout.count(" up ") for n in works)  # noqa: E731
        count = wait(lambda: (n := up()) >= APPS * PER_APP and n, "fifty bots up", timeout=300)
        time.sleep(5)
        assert node.proc is not None
        pid = node.proc.pid
        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(REST)
        cpu = (cpu_seconds(pid) - before) / (time.monotonic() - started) * 100
        answers = []
        for _ in range(5):
            t = time.monotonic()
            node.ssh("ps", "idle0")
            answers.append(time.monotonic() - t)
        work = works["idle0"]
        (work / "Procfile").write_text(IDLE_BOT.replace("'up'", "'up again'"))
        commit_all(work, "v2")
        t = time.monotonic()
        r = node.git(work, "push", node.remote("idle0"), "main")
        push = time.monotonic() - t
        rss = rss_mb(pid)
        return [
            ("bots running (process runtime)", f"{count}"),
            (f"daemon CPU at rest over {REST:.0f} s", f"{cpu:.1f} % of a core"),
            ("`ssh ps APP` answer (median of 5)", f"{statistics.median(answers):.2f} s"),
            (
                "source-only push, 5 bots, with 50 running",
                f"{push:.1f} s" + ("" if r.returncode == 0 else " (FAILED)"),
            ),
            ("daemon RSS with 50 bots", f"{rss:.0f} MB"),
        ]
    finally:
        node.stop()
        cleanup_instances(node.home, node.runtime)


def copies(nodes: dict[str, NodeProc], app: str) -> int:
    import docker

    running = docker.from_env().containers.list(filters={"label": f"peoplescloud.app={app}"})
    return sum(1 for c in running if c.labels.get("peoplescloud.node") in nodes)


def first_line_since(node: NodeProc, app: str, offset: int) -> bool:
    log = node.home / "logs" / f"{app}.log"
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return b"app[bot.1]: logged in" in f.read()
    except OSError:
        return False


def log_size(node: NodeProc, app: str) -> int:
    try:
        return (node.home / "logs" / f"{app}.log").stat().st_size
    except OSError:
        return 0


STEPS = ("lease ends", "placed elsewhere", "container started", "bot's first line", "seen")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def docker_time(text: str) -> float:
    """Epoch seconds of the engine's RFC 3339 time (nanoseconds, "Z")."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction}")


def placed_at(nodes: list[NodeProc], app: str, since: float) -> float | None:
    """When a leader's log (local time) says the app's bot.1 was moved, first after `since`."""
    found = []
    for node in nodes:
        for line in node.log.read_text(errors="replace").splitlines():
            match = LOG_TIME.match(line)
            if match and f"bot.1 of {app}:" in line and "moved to" in line:
                at = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1e3
                found += [at] if at >= since else []
    return min(found, default=None)


def breakdown(
    victim: NodeProc, others: list[NodeProc], app: str, killed: float, seen: float
) -> list[float]:
    """Seconds from the kill to each of STEPS (nan when not known)."""
    import docker

    nan = float("nan")
    lease = victim.home / "run" / "lease" / "lease"
    ends = float(lease.read_text()) if lease.exists() else nan
    placed = placed_at(others, app, killed) or nan
    started = first = nan
    names = {n.name for n in others}
    for c in docker.from_env().containers.list(filters={"label": f"peoplescloud.app={app}"}):
        if c.labels.get("peoplescloud.node") in names:
            started = docker_time(c.attrs["State"]["StartedAt"])
            said = c.logs(timestamps=True).decode(errors="replace").splitlines()
            first = docker_time(said[0].split(" ", 1)[0]) if said else nan
    return [t - killed for t in (ends, placed, started, first, seen)]


def failover(root: Path, key: Path) -> list[tuple[str, str]]:
    times, most, steps, after_removal = [], [], [], []
    with bot_swarm(root, key, "lean", "leanbot") as nodes:
        by_name = {n.name: n for n in nodes}
        first = nodes[0]
        for _ in range(KILLS):
            home = wait(lambda a=first: runs_on(a, "leanbot"), "the bot up")
            time.sleep(SETTLE)  # the others hold its slug, unpacked ahead
            victim = by_name[home]
            others = [n for n in nodes if n is not victim]
            offsets = {n.name: log_size(n, "leanbot") for n in others}
            seen = []
            # From the daemon's SIGKILL: the engine then takes a while to remove the
            # dead machine's containers (victim.kill() waits for that too).
            killed, killed_at = time.monotonic(), time.time()
            victim.kill()
            removed = time.monotonic()
            checks = 0
            while time.monotonic() - killed < 60:
                if checks % 4 == 0:  # the engine every 0.2 s, the logs every 0.05 s
                    seen.append(copies(by_name, "leanbot"))
                checks += 1
                if any(first_line_since(n, "leanbot", offsets[n.name]) for n in others):
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("the bot did not come back within 60 s")
            times.append(time.monotonic() - killed)
            after_removal.append(times[-1] - (removed - killed))
            steps.append(breakdown(victim, others, "leanbot", killed_at, killed_at + times[-1]))
            for _ in range(10):  # a while longer: still never two
                seen.append(copies(by_name, "leanbot"))
                time.sleep(0.2)
            most.append(max(seen))
            print(f"kill {len(times)}: {times[-1]:.1f} s, copies seen at most {most[-1]}")
            print("  " + ", ".join(f"{w} +{t:.2f}" for w, t in zip(STEPS, steps[-1], strict=True)))
            victim.start()
            first = others[0]
            wait(lambda a=first: a.pc("swarm", "status").stdout.count(" up ") == 3, "all up again")
    return [
        (
            f"failover, kill to first line elsewhere ({KILLS} kills: median, min, max)",
            f"{statistics.median(times):.1f} s ({min(times):.1f}, {max(times):.1f})",
        ),
        (
            "the same from the dead node's containers removed (as measured before)",
            f"{statistics.median(after_removal):.1f} s "
            f"({min(after_removal):.1f}, {max(after_removal):.1f})",
        ),
        ("most copies seen at any check, each kill", ", ".join(map(str, most))),
        (
            "kill to each step (median): " + ", ".join(STEPS),
            ", ".join(f"{statistics.median(col):.2f}" for col in zip(*steps, strict=True)) + " s",
        ),
    ]


def main() -> None:
    parts = sys.argv[1:] or ["memory", "density", "failover"]
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="pc-bench-lean-") as tmp:
        root = Path(tmp)
        key = keygen(root / "id_ed25519")
        for part in parts:
            rows += {"memory": memory, "density": density, "failover": failover}[part](
                root / part, key
            )
    print()
    print("| measure | value |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
