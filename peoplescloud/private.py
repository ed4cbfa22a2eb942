"""Secrets at rest: the node's home, and each file in it that holds a secret, are
readable by the node's user alone. The state holds every app's config vars, the
Raft files the same in a swarm, the logs what apps print; `pc init` makes them
so and the daemon tightens an older home when it starts."""

from __future__ import annotations

from pathlib import Path

from peoplescloud.settings import Settings


def private_paths(s: Settings) -> tuple[list[Path], list[Path]]:
    """(directories made 0700, files made 0600)."""
    raft = s.home / "raft"  # the swarm's journal and dump (swarm/entry.py)
    dirs = [s.home, s.logs_dir, raft]
    files = [s.state_file, s.config_file, s.host_key, s.swarm_file, s.home / "swarm.key"]
    if raft.is_dir():
        files += [f for f in raft.iterdir() if f.is_file()]
    return dirs, files


def make_private(s: Settings) -> None:
    """Tighten what exists of `private_paths` (a missing one is skipped)."""
    dirs, files = private_paths(s)
    s.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # before the first log is made
    for d in dirs:
        if d.is_dir():
            d.chmod(0o700)
    for f in files:
        if f.is_file():
            f.chmod(0o600)
