"""A tenant's container probes another app and the node's own ports (issue 8, item 2).

The real docker runtime of a test node runs two apps; stand-ins for the node's
SSH/peer port and for its router listen on the host (0.0.0.0, free ports), and
the node's firewall is installed for the router stand-in. From inside app A's
container: app B's container and its published port must be out of reach, so
must the SSH stand-in and a port another container publishes on every address
(docker's DNAT path); the router stand-in must answer. Only addresses of what
the test made are dialled (containers, and the gateway of the node's bridge).

Needs root and iptables, as the daemon does to protect the host: where either
is missing the test skips, or fails with PC_REQUIRE_DOCKER=1 (CI runs as root).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from peoplescloud.runtime import firewall
from peoplescloud.runtime.base import InstanceKey, InstanceSpec
from tests import conftest

pytestmark = pytest.mark.docker

STACK_IMAGE = conftest.STACK_IMAGE
PROBE_TIMEOUT = 1.5  # seconds one connection attempt from inside a container may take

# Run in app A's container: try each (host, port), print which connected.
PROBE = textwrap.dedent(
    """
    import json, socket, sys
    result = {}
    for host, port in json.loads(sys.argv[1]):
        try:
            socket.create_connection((host, port), timeout=float(sys.argv[2])).close()
            result[f"{host}:{port}"] = "open"
        except OSError as e:
            result[f"{host}:{port}"] = type(e).__name__
    print(json.dumps(result))
    """
)


def _require_firewall() -> None:
    if why := firewall.missing():
        if os.environ.get("PC_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PC_REQUIRE_DOCKER=1 but {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on 0.0.0.0 at a free port, as the node's services do."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)  # connections complete in the backlog: nobody needs to accept
    yield sock
    sock.close()


ssh_standin = listener
router_standin = listener


@pytest.fixture
def node() -> Iterator[str]:
    """A test node's name; its firewall rules are removed afterwards."""
    name = "t" + uuid.uuid4().hex[:8]
    yield name
    if firewall.missing() is None:
        firewall.remove(name)


@pytest.fixture
def published(node) -> Iterator[tuple[object, int]]:
    """A container outside the node (docker's default bridge) serving on a port
    published on every address of the host, and that port."""
    from tests.test_runtime_suite import _docker_client

    container = _docker_client().containers.run(
        STACK_IMAGE,
        ["python3", "-m", "http.server", "8000"],
        detach=True,
        user="10001:10001",
        ports={"8000/tcp": ("0.0.0.0", None)},
        labels={"peoplescloud.test": node},
    )
    try:
        container.reload()
        yield container, int(container.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"])
    finally:
        container.remove(force=True)


@pytest.fixture
def slug(tmp_path: Path) -> Path:
    d = tmp_path / "slug"
    d.mkdir()
    d.chmod(0o755)
    return d


def _web(app: str, node: str, slug: Path) -> InstanceSpec:
    return InstanceSpec(
        app=app,
        process="web.1",
        release="v1",
        command="exec /usr/bin/python3 -m http.server $PORT",
        slug=slug,
        node=node,
        memory_mb=128,
        web=True,
    )


def _answers(address: str) -> bool:
    """An HTTP server answers at `address` (with any status)."""
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def test_a_container_reaches_neither_another_app_nor_the_nodes_ports(
    node, slug, ssh_standin, router_standin, published
):
    from peoplescloud.runtime.docker import DockerRuntime
    from tests.test_runtime_suite import _docker_client

    _require_firewall()
    client = _docker_client()
    router_port = router_standin.getsockname()[1]
    ssh_port = ssh_standin.getsockname()[1]
    firewall.install(node, router_port)
    firewall.install(node, router_port)  # at every daemon start: no rule twice
    runtime = DockerRuntime(client, node, STACK_IMAGE)
    try:
        a = runtime.start(_web("app-a", node, slug))
        b = runtime.start(_web("app-b", node, slug))
        assert a.address and b.address
        runtime.sweep_network()  # containers use it: it stays
        # Both serve: what fails below fails for the isolation, not for a dead app.
        other, other_port = published
        serving = [b.address, a.address, f"127.0.0.1:{other_port}"]
        conftest.wait_for(lambda: all(map(_answers, serving)), "web", timeout=30)

        network = client.networks.get(runtime.network)
        assert network.attrs["Internal"] is False  # bots keep the internet
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        container_a = client.containers.get(a.detail)
        container_b = client.containers.get(b.detail)
        address_b = container_b.attrs["NetworkSettings"]["Networks"][runtime.network]["IPAddress"]
        published_b = int(b.address.rsplit(":", 1)[1])

        targets = {
            "app B's container": (address_b, 5000),
            "app B's published port": (gateway, published_b),
            "the node's SSH": (gateway, ssh_port),
            "the router": (gateway, router_port),
            "a port published on every address": (gateway, other_port),
        }
        argv = ["python3", "-c", PROBE, json.dumps(list(targets.values())), str(PROBE_TIMEOUT)]
        code, out = container_a.exec_run(argv)
        assert code == 0, out
        seen = json.loads(out.decode().strip().splitlines()[-1])
        result = {what: seen[f"{h}:{p}"] for what, (h, p) in targets.items()}
        reached = {what for what, outcome in result.items() if outcome == "open"}
        assert reached == {"the router"}, result  # what did not connect: timeout or refused
        assert firewall.installed(node)
    finally:
        for key in (InstanceKey("app-a", "web.1", "v1"), InstanceKey("app-b", "web.1", "v1")):
            runtime.stop(key, timeout=1)

    # The node's network goes with its last container.
    left = [n for n in client.networks.list(names=[runtime.network]) if n.name == runtime.network]
    assert not left


def test_installing_twice_leaves_one_rule_and_remove_leaves_none(node):
    _require_firewall()
    binary = firewall.iptables()
    assert binary is not None

    def input_rules() -> list[str]:
        done = subprocess.run([binary, "-S", "INPUT"], capture_output=True, text=True, check=True)
        return [r for r in done.stdout.splitlines() if firewall.chain_name(node) in r]

    firewall.install(node, 8080)
    firewall.install(node, 8081)
    assert len(input_rules()) == 1
    firewall.remove(node)
    assert input_rules() == []
    assert not firewall.installed(node)


def test_the_daemon_guards_the_nodes_ports_when_it_starts(node_factory):
    _require_firewall()
    node = node_factory("docker")  # its cleanup removes the rules (bench/harness.py)
    conftest.wait_for(lambda: firewall.installed(node.name), "the firewall", timeout=30)
    binary = firewall.iptables()
    assert binary is not None
    chain = firewall.chain_name(node.name)
    listed = subprocess.run([binary, "-S", chain], capture_output=True, text=True, check=True)
    rules = [line.split(chain, 1)[1].strip() for line in listed.stdout.splitlines()[1:]]
    assert rules == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-p tcp -m tcp --dport {node.router_port} -j ACCEPT",
        "-j DROP",
    ]


def test_a_build_step_is_on_the_nodes_network_and_reaches_no_node_port(
    node, tmp_path, ssh_standin, router_standin
):
    """Install scripts are the pusher's code: a build container gets the same
    isolation as the node's apps (its network, the same firewall)."""
    import builder
    from peoplescloud.runtime.docker import DockerRuntime
    from tests.test_runtime_suite import _docker_client

    _require_firewall()
    client = _docker_client()
    router_port = router_standin.getsockname()[1]
    ssh_port = ssh_standin.getsockname()[1]
    firewall.install(node, router_port)
    runtime = DockerRuntime(client, node, STACK_IMAGE)
    executor = builder.DockerExecutor(
        client, STACK_IMAGE, "", network=runtime.holding_network, labels={"peoplescloud.node": node}
    )
    with runtime.holding_network() as name:
        gateway = client.networks.get(name).attrs["IPAM"]["Config"][0]["Gateway"]
    targets = [(gateway, ssh_port), (gateway, router_port)]
    app, cache = tmp_path / "app", tmp_path / "cache"
    app.mkdir()
    lines: list[str] = []
    argv = ["python3", "-c", PROBE, json.dumps(targets), str(PROBE_TIMEOUT)]
    try:
        executor.run(argv, app, cache, lines.append)
    finally:
        runtime.sweep_network()
    seen = json.loads(lines[-1].strip())
    assert seen[f"{gateway}:{router_port}"] == "open", seen  # it runs, on our network
    assert seen[f"{gateway}:{ssh_port}"] != "open", seen
