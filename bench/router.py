"""The router against nginx, side by side with wrk. Prints a table.

    python -m bench.router [--pairs 5] [--seconds 5] [--connections 50] [--buffering]

One upstream for all: nginx (one worker) answering "ok" on loopback. In front
of it, in turn: the People's Cloud router (its own process, as the daemon runs
it: uvloop when importable, no router log), nginx configured as a plain
keep-alive reverse proxy (one worker, upstream keepalive), and the node's
nginx front: the config the daemon writes (router/front.py; one worker, no
router log), its app's host mapped to the upstream. With --buffering, also
that config with proxy_buffering and proxy_request_buffering on. wrk (2 threads,
keep-alive) runs against each, interleaved in pairs; the table shows each
run's requests/s, p50 and p99, the medians, and the ratios against the goals
(router >= 0.8x nginx's requests/s, <= 1.5x its p99).

Needs Debian's wrk and nginx (`apt-get install wrk nginx`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import free_port

HOST = "bench.localhost"
UPSTREAM_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/upstream.pid;
error_log {dir}/upstream.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}
}}
"""
PROXY_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after 10 s")


def nginx(conf: str, work: Path, name: str) -> subprocess.Popen[bytes]:
    path = work / f"{name}.conf"
    path.write_text(conf)
    return subprocess.Popen(["nginx", "-c", str(path), "-p", str(work)], stderr=subprocess.DEVNULL)


def front_conf(work: Path, port: int, upstream: int, buffering: bool) -> str:
    """The config the daemon writes for one app on this node (no router log)."""
    from router.front import Front, config
    from router.limits import RouterLimits

    here = work / ("front-buffering" if buffering else "front")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (here / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    front = Front("127.0.0.1", port, here / "router.sock", here, "1.1 bench", RouterLimits(), False)
    text = config(front, {"bench": ([HOST], [f"127.0.0.1:{upstream}"])})
    if buffering:
        text = text.replace("buffering off;", "buffering on;")
    return text


def serve_router(port: int, upstream: int) -> None:
    """The router alone, as `pc daemon` runs it (`--serve`)."""
    from router.proxy import Upstream, start_router

    async def main() -> None:
        targets = [Upstream(f"127.0.0.1:{upstream}")]
        await start_router(lambda app, local: targets, "localhost", "bench", "127.0.0.1", port)
        await asyncio.Event().wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children so far (nginx's worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def wrk(port: int, seconds: int, connections: int, pid: int) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, p99 ms, CPU µs per request of the proxy `pid`)."""
    cpu = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
        + ["-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out or " 0 requests in" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    cpu = cpu_seconds(pid) - cpu
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, _ms(out, "50%"), _ms(out, "99%"), cpu / done * 1e6


def _ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--buffering", action="store_true", help="also the front, buffering")
    parser.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_router(*args.serve)
        return
    missing = [tool for tool in ("wrk", "nginx") if not shutil.which(tool)]
    if missing:
        sys.exit(f"{' and '.join(missing)} missing: apt-get install wrk nginx")
    up, ng, pc, fr, fb = free_port(), free_port(), free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="pc-bench-router-") as tmp:
        work = Path(tmp)
        try:
            procs.append(nginx(UPSTREAM_CONF.format(dir=work, port=up), work, "upstream"))
            procs.append(nginx(PROXY_CONF.format(dir=work, port=ng, upstream=up), work, "proxy"))
            router = [sys.executable, "-m", "bench.router", "--serve", str(pc), str(up)]
            procs.append(subprocess.Popen(router, cwd=Path(__file__).resolve().parents[1]))
            procs.append(nginx(front_conf(work, fr, up, False), work, "front"))
            ports = [up, ng, pc, fr]
            if args.buffering:
                procs.append(nginx(front_conf(work, fb, up, True), work, "front-buffering"))
                ports.append(fb)
            for port, proc in zip(ports, procs, strict=True):
                wait_port(port, proc)
            targets = {
                "nginx": (ng, procs[1].pid),
                "router": (pc, procs[2].pid),
                "front": (fr, procs[3].pid),
            }
            if args.buffering:
                targets["front, buffering"] = (fb, procs[4].pid)
            runs = run_pairs(targets, args.pairs, args.seconds, args.connections)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report(runs, args)


Run = tuple[float, float, float, float]  # requests/s, p50 ms, p99 ms, CPU µs per request


def run_pairs(
    targets: dict[str, tuple[int, int]], pairs: int, seconds: int, connections: int
) -> dict[str, list[Run]]:
    """wrk against each (port, pid) in turn, the order swapped every pair."""
    runs: dict[str, list[Run]] = {name: [] for name in targets}
    for port, pid in targets.values():
        wrk(port, 1, connections, pid)  # warm up
    for i in range(pairs):
        order = list(targets.items())
        for name, (port, pid) in order if i % 2 == 0 else order[::-1]:
            runs[name].append(wrk(port, seconds, connections, pid))
            print(f"pair {i + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    return runs


def report(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t2 -c{args.connections} -d{args.seconds}s, keep-alive, {args.pairs} pairs "
        f"interleaved, {os.cpu_count()} cores\n"
    )
    print("| proxy | run | requests/s | p50 (ms) | p99 (ms) | proxy CPU per request (µs) |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, results in runs.items():
        for i, (rps, p50, p99, cpu) in enumerate(results, 1):
            print(f"| {name} | {i} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} |")
        medians[name] = [statistics.median(r[k] for r in results) for k in range(4)]
        rps, p50, p99, cpu = medians[name]
        print(f"| {name} | **median** | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} |")
    print()
    for name in medians:
        if name == "nginx":
            continue
        rps_ratio = medians[name][0] / medians["nginx"][0]
        p99_ratio = medians[name][2] / medians["nginx"][2]
        cpu_ratio = medians[name][3] / medians["nginx"][3]
        print(
            f"{name} / nginx: requests/s {rps_ratio:.2f}x (goal >= 0.8x: "
            f"{'met' if rps_ratio >= 0.8 else 'MISSED'}), p99 {p99_ratio:.2f}x "
            f"(goal <= 1.5x: {'met' if p99_ratio <= 1.5 else 'MISSED'}), "
            f"CPU per request {cpu_ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
