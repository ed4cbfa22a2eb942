"""Push-to-running and idle memory, on each runtime. Prints a table.

    python -m bench.push_to_running [--runtime docker|process|both]

For each runtime: a fresh node; a first push of a bot with one requirement
(empty dependency cache) and a source-only second push, each timed from
`git push` starting to the bot's first log line of the new release (read with
`ssh logs`); then the daemon's RSS after it has idled a few seconds. In the
same run, the baseline: a bare `python3 -m venv` and `pip install` of the same
requirement on the host, with an empty pip cache (what a first push must beat).
Numbers vary with the machine's load: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.harness import (
    NodeProc,
    cleanup_instances,
    commit_all,
    init_node,
    keygen,
    make_repo,
)

BOT = """\
import os, time
import {module}
print("first line of", os.environ["PC_RELEASE"], flush=True)
while True:
    time.sleep(60)
"""
# A small requirement that no earlier run has in the dependency cache: the cache
# key is the requirements file, so a comment with a fresh token makes it new.
REQUIREMENT = "six==1.17.0  # bench {token}\n"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_push(node: NodeProc, work: Path, release: str) -> float:
    """Seconds from `git push` starting to the new release's first log line. The
    push itself returns a little later: it waits until the bot kept running."""
    start = time.monotonic()
    pushed: list[subprocess.CompletedProcess[str]] = []
    pusher = threading.Thread(
        target=lambda: pushed.append(node.git(work, "push", node.remote("benchbot"), "main"))
    )
    pusher.start()
    while f"first line of {release}" not in node.ssh("logs", "benchbot", "-n", "20").stdout:
        if time.monotonic() - start > 300 or (pushed and pushed[0].returncode != 0):
            pusher.join()
            raise SystemExit(f"the bot never logged its first line:\n{pushed[0].stderr}")
        time.sleep(0.05)
    took = time.monotonic() - start
    pusher.join()
    if pushed[0].returncode != 0:
        raise SystemExit(f"push failed:\n{pushed[0].stderr}")
    return took


def baseline(root: Path) -> float:
    """Seconds for `python3 -m venv` + `pip install` of the requirement, cold cache."""
    venv, cache = root / f"baseline-{uuid.uuid4().hex}", root / f"pip-{uuid.uuid4().hex}"
    start = time.monotonic()
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--cache-dir", str(cache), "six==1.17.0"], check=True)
    return time.monotonic() - start


def measure(runtime: str, root: Path, key: Path) -> dict[str, float]:
    node = init_node(root, key, runtime)
    node.start()
    try:
        work = make_repo(root, "python-bot")
        (work / "bot.py").write_text(BOT.format(module="six"))
        (work / "requirements.txt").write_text(REQUIREMENT.format(token=uuid.uuid4().hex))
        commit_all(work, "first")
        first = timed_push(node, work, "v1")
        (work / "bot.py").write_text(BOT.format(module="six") + "# source change\n")
        commit_all(work, "second")
        second = timed_push(node, work, "v2")
        time.sleep(5)
        assert node.proc is not None
        return {"first": first, "second": second, "rss": rss_mb(node.proc.pid)}
    finally:
        node.stop()
        cleanup_instances(node.home, runtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["docker", "process", "both"], default="both")
    args = parser.parse_args()
    runtimes = ["docker", "process"] if args.runtime == "both" else [args.runtime]
    with tempfile.TemporaryDirectory(prefix="pc-bench-") as tmp:
        root = Path(tmp)
        key = keygen(root / "id_ed25519")
        rows = [(rt, measure(rt, root, key)) for rt in runtimes]
        bare = baseline(root)
    print()
    print(
        "| runtime | first push, 1 requirement (s) | source-only push (s) | idle daemon RSS (MB) |"
    )
    print("|---|---|---|---|")
    for rt, m in rows:
        print(f"| {rt} | {m['first']:.2f} | {m['second']:.2f} | {m['rss']:.0f} |")
    print(f"| baseline: host venv + pip install | {bare:.2f} | | |")
    print(
        "\ngoals: first push at most the baseline and about 1.8 s (0.6x Piku's 3.0 s),"
        " source-only < 1 s"
    )


if __name__ == "__main__":
    main()
