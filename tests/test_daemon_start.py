"""A daemon that cannot finish starting says why and leaves nothing running."""

import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.ipfs]


def test_a_daemon_that_cannot_start_leaves_no_kubo_behind(node_factory):
    node = node_factory("process", start=False)
    node.pc("swarm", "create", "--name", "solo")
    with socket.socket() as taken:  # its SSH port: the last thing the daemon opens
        taken.bind(("127.0.0.1", node.ssh_port))
        taken.listen()
        r = subprocess.run(
            [sys.executable, "-m", "peoplescloud.cli", "daemon"],
            env=node.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode != 0
    assert f"{node.ssh_port}" in r.stderr and "in use" in r.stderr, r.stderr
    assert "store: ipfs" in r.stderr  # its kubo had started
    assert node.kubo_pids() == []


def test_a_daemon_stopped_while_starting_leaves_no_kubo_behind(node_factory):
    node = node_factory("process", start=False)
    node.pc("swarm", "create", "--name", "solo")
    log = node.home / "stopped.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "peoplescloud.cli", "daemon"],
            env=node.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while "store: ipfs" not in log.read_text():  # kubo runs; the swarm is starting
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()
    assert "ready" not in log.read_text()
    assert node.kubo_pids() == []
