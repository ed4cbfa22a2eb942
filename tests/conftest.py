"""Shared fixtures: a real node (`pc daemon` in a subprocess) driven with the
system `git` and `ssh` clients, exactly as a user would (bench/harness.py).

Tests marked `docker` need an engine and the stack image. On a laptop they skip
when none answers; with PC_REQUIRE_DOCKER=1 (set by scripts/test in CI) they
fail instead, so CI can never pass by skipping them. Tests marked `pebble` need
the ACME test server (PC_PEBBLE_BIN, from scripts/install-pebble), the same way
(PC_REQUIRE_PEBBLE=1).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# The node-driving helpers live in bench/harness.py (the benchmarks use them too);
# re-exported here for the tests that import them from tests.conftest.
from bench.harness import (  # noqa: F401 - re-exported
    APPS,
    REPO,
    NodeProc,
    cleanup_instances,
    commit_all,
    free_port,
    init_node,
    keygen,
    make_repo,
    wait_for,
)

STACK_IMAGE = os.environ.get("PC_BUILD_STACK_IMAGE", "peoplescloud/stack:bookworm")


def _docker_problem() -> str | None:
    from peoplescloud.docker_engine import connect
    from peoplescloud.stack import image_exists

    client = connect(timeout=10)
    if client is None:
        return "no Docker engine answers (scripts/start-dockerd starts one)"
    if not image_exists(client, STACK_IMAGE):
        return f"the stack image {STACK_IMAGE} is missing (`pc stack build`)"
    return None


def pebble_bin() -> str | None:
    """The ACME test server scripts/install-pebble built (PC_PEBBLE_BIN), if any."""
    path = os.environ.get("PC_PEBBLE_BIN", "")
    return path if path and os.access(path, os.X_OK) else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("pebble") is not None and pebble_bin() is None:
        problem = "no pebble: PC_PEBBLE_BIN=$(scripts/install-pebble) builds one"
        if os.environ.get("PC_REQUIRE_PEBBLE") == "1":
            pytest.fail(f"PC_REQUIRE_PEBBLE=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    if item.get_closest_marker("docker") is None:
        return
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("PC_REQUIRE_DOCKER") == "1":
        pytest.fail(f"PC_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client key pair for the pushing user (private key path)."""
    return keygen(tmp_path_factory.mktemp("keys") / "id_ed25519")


@pytest.fixture
def node_factory(tmp_path: Path, user_key: Path) -> Iterator:
    """Make nodes: `node_factory(runtime="docker")` -> a started NodeProc."""
    made: list[NodeProc] = []

    def make(runtime: str = "docker", start: bool = True) -> NodeProc:
        node = init_node(tmp_path, user_key, runtime)
        made.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in made:
        if node.proc is not None:
            node.signal_all(signal.SIGCONT)  # a test may have left it frozen
        node.stop()
        for pid in [*node.kubo_pids(), *node.front_pids()]:
            os.kill(pid, signal.SIGKILL)
        cleanup_instances(node.home, node.runtime)
