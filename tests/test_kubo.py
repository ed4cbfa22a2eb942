"""kubo as a node's child: the quiet config it gets, the private network, peering.

Tests marked `ipfs` need kubo (scripts/install-kubo builds it). They skip when
it is missing, and fail instead with PC_REQUIRE_IPFS=1.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from bench import harness
from bench.harness import REPO, free_port
from peoplescloud.errors import ConfigError, RuntimeFailure
from swarm.ipfs import IpfsStore
from swarm.ipfs.api import KuboError, KuboUnreachable
from swarm.ipfs.config import (
    PUBLIC_SWITCHES,
    QUIET_CONFIG,
    public_switches_on,
    set_dotted,
    split_multiaddr,
    swarm_key_file,
)
from swarm.ipfs.external import ExternalKubo
from swarm.ipfs.kubo import Kubo, find_binary

SWARM_KEY = secrets.token_hex(32)


def kubo_binary() -> Path:
    """The kubo to test with; skips (or fails with PC_REQUIRE_IPFS=1) when there is none."""
    try:
        return find_binary()
    except ConfigError as e:
        if os.environ.get("PC_REQUIRE_IPFS") == "1":
            pytest.fail(f"PC_REQUIRE_IPFS=1 but {e}", pytrace=False)
        pytest.skip(str(e))


def new_kubo(repo: Path, swarm_key: str, peers: tuple[str, ...] = ()) -> Kubo:
    """An initialised, started kubo on loopback with ports of its own (bench/harness.py),
    run from the kubo to test with."""
    return harness.new_kubo(repo, swarm_key, peers, binary=kubo_binary())


def dotted(config: dict, key: str):
    for name in key.split("."):
        config = config[name]
    return config


def strings(value: None | str | list[str]) -> list[str]:
    """kubo writes a list of addresses as null, a string or a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def two_kubos(root: Path) -> Iterator[tuple[Kubo, Kubo]]:
    a = new_kubo(root / "a", SWARM_KEY)
    b = new_kubo(root / "b", SWARM_KEY)
    yield a, b
    b.stop()
    a.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kubo, Kubo]]:
    yield from two_kubos(tmp_path_factory.mktemp("kubo"))


# --- without kubo ------------------------------------------------------------------------


def test_swarm_key_must_be_64_hex_digits(tmp_path: Path):
    for bad in ("", "abc", "g" * 64, "A" * 64, "0" * 63):
        with pytest.raises(ConfigError):
            Kubo(tmp_path, bad, 1, 2, binary=Path("/bin/true"))


def test_split_multiaddr():
    assert split_multiaddr("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooX") == (
        "/ip4/127.0.0.1/tcp/4001",
        "12D3KooX",
    )
    for bad in ("/ip4/127.0.0.1/tcp/4001", "/p2p/12D3KooX", "/ip4/1.2.3.4/tcp/1/p2p/"):
        with pytest.raises(ConfigError):
            split_multiaddr(bad)


def test_find_binary_prefers_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    binary = tmp_path / "ipfs"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PC_IPFS_BIN", str(binary))
    with pytest.raises(ConfigError, match="not an executable"):
        find_binary()
    binary.chmod(0o755)
    assert find_binary() == binary


def test_a_kubo_that_does_not_answer_is_unreachable_not_missing():
    store = IpfsStore(f"http://127.0.0.1:{free_port()}", fetch_timeout=1)
    try:
        with pytest.raises(KuboUnreachable):
            store.has("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
        with pytest.raises(KuboUnreachable):
            store.pin("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    finally:
        store.close()


# --- with kubo ---------------------------------------------------------------------------


@pytest.mark.ipfs
def test_init_writes_a_quiet_loopback_config(tmp_path: Path):
    peer = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWFF8ENRDGR5U3LaK1aGQQWgwgDWjpbncfkwYNVSGijCfJ"
    kubo = Kubo(tmp_path / "repo", "ab" * 32, 15001, 15002, peers=[peer], binary=kubo_binary())
    kubo.init()
    kubo.init()  # again on an existing repo: same result, no error
    config = kubo.config_show()
    for key, value in QUIET_CONFIG.items():
        if key.startswith("Addresses."):
            assert strings(dotted(config, key)) == value, key
        else:
            assert dotted(config, key) == value, key
    # The ones that matter most, spelled out.
    assert config["Bootstrap"] == []
    assert config["Discovery"]["MDNS"]["Enabled"] is False
    assert config["AutoConf"]["Enabled"] is False
    assert config["Routing"]["Type"] == "none"
    assert config["Plugins"]["Plugins"]["telemetry"]["Disabled"] is True
    assert strings(config["Addresses"]["API"]) == ["/ip4/127.0.0.1/tcp/15001"]
    assert strings(config["Addresses"]["Swarm"]) == ["/ip4/127.0.0.1/tcp/15002"]
    assert strings(config["Addresses"]["Gateway"]) == []
    assert config["Peering"]["Peers"] == [
        {"ID": peer.rsplit("/", 1)[1], "Addrs": ["/ip4/127.0.0.1/tcp/4001"]}
    ]
    assert kubo.peer_id == config["Identity"]["PeerID"]
    key_file = tmp_path / "repo" / "swarm.key"
    assert key_file.read_text() == "/key/swarm/psk/1.0.0/\n/base16/\n" + "ab" * 32 + "\n"
    assert key_file.stat().st_mode & 0o077 == 0


@pytest.mark.ipfs
def test_kubo_refuses_to_start_outside_a_private_network(tmp_path: Path):
    kubo = Kubo(tmp_path / "repo", "cd" * 32, free_port(), free_port(), binary=kubo_binary())
    kubo.init()
    (tmp_path / "repo" / "swarm.key").unlink()
    with pytest.raises(RuntimeFailure, match="private network"):
        kubo.start()
    assert not kubo.running


@pytest.mark.ipfs
def test_connect_and_peering_survives_a_restart(pair: tuple[Kubo, Kubo]):
    a, b = pair
    assert a.multiaddr.startswith("/ip4/127.0.0.1/tcp/")
    b.connect(a.multiaddr)
    assert a.peer_id in b.connected_peers()
    assert b.peer_id in a.connected_peers()
    peering = json.loads(b.api.call("config", "Peering.Peers").text)["Value"]
    assert [p["ID"] for p in peering] == [a.peer_id]
    b.connect(a.multiaddr)  # idempotent
    assert len(json.loads(b.api.call("config", "Peering.Peers").text)["Value"]) == 1

    # A new Kubo on B's repo, told of no peers: the Peering.Peers that connect()
    # saved bring A back as soon as it starts.
    b.stop()
    assert not b.running
    again = Kubo(b.repo, SWARM_KEY, b.api_port, b.swarm_port, binary=b.binary)
    again.init()
    again.start()
    try:
        assert a.peer_id in again.connected_peers()
    finally:
        again.stop()
    b.start()


@pytest.mark.ipfs
def test_a_kubo_left_running_is_adopted(tmp_path: Path):
    """A node process starts kubo and dies; the next one takes that kubo over."""
    repo, ports = tmp_path / "repo", (free_port(), free_port())
    earlier_node = (
        "import sys; from pathlib import Path; from swarm.ipfs import Kubo; "
        "k = Kubo(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "
        "binary=Path(sys.argv[5])); k.init(); k.start()"
    )
    args = [str(repo), SWARM_KEY, *map(str, ports), str(kubo_binary())]
    subprocess.run([sys.executable, "-c", earlier_node, *args], check=True, cwd=REPO)
    pid = int((repo / "daemon.pid").read_text())
    kubo = Kubo(repo, SWARM_KEY, *ports, binary=kubo_binary())
    try:
        kubo.init()
        kubo.start()
        assert kubo.running
        assert kubo.connected_peers() == set()
        kubo.stop()
        assert not kubo.running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.ipfs
def test_a_node_with_another_swarm_key_cannot_connect(pair: tuple[Kubo, Kubo], tmp_path: Path):
    a, _ = pair
    stranger = new_kubo(tmp_path / "stranger", secrets.token_hex(32))
    try:
        with pytest.raises(KuboError, match="failed to negotiate security protocol"):
            stranger.connect(a.multiaddr)
        assert stranger.peer_id not in a.connected_peers()
    finally:
        stranger.stop()


# --- a kubo the operator runs ([ipfs] api) -----------------------------------------------


def test_an_external_kubo_that_does_not_answer_is_refused_clearly(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"
    kubo = ExternalKubo(url, SWARM_KEY, tmp_path / "swarm.key")
    assert not kubo.running
    with pytest.raises(RuntimeFailure, match=f"kubo RPC API configured at {url}.*does not answer"):
        kubo.start()
    assert not (tmp_path / "swarm.key").exists()
    kubo.stop()  # not ours: nothing to do, no error


def test_an_external_kubo_is_dialled_on_the_advertised_host(tmp_path: Path):
    peer = "12D3KooWFF8ENRDGR5U3LaK1aGQQWgwgDWjpbncfkwYNVSGijCfJ"
    ident = {
        "ID": peer,
        "Addresses": [
            f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{peer}",
            f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}",
            f"/ip4/192.0.2.7/tcp/4001/p2p/{peer}",
            f"/ip4/192.0.2.7/tcp/4002/ws/p2p/{peer}",
        ],
    }
    on = ExternalKubo("http://127.0.0.1:1", SWARM_KEY, tmp_path / "k", host="192.0.2.7")
    assert on._pick_address(ident) == f"/ip4/192.0.2.7/tcp/4001/p2p/{peer}"
    off = ExternalKubo("http://127.0.0.1:1", SWARM_KEY, tmp_path / "k", host="198.51.100.1")
    assert off._pick_address(ident) == f"/ip4/192.0.2.7/tcp/4001/p2p/{peer}"  # not loopback
    with pytest.raises(RuntimeFailure, match="no TCP address"):
        on._pick_address({"ID": peer, "Addresses": ident["Addresses"][:1]})
    local_only = {"ID": peer, "Addresses": ident["Addresses"][:2]}
    with pytest.raises(RuntimeFailure, match="listens on loopback only"):
        on._pick_address(local_only)
    one_machine = ExternalKubo("http://127.0.0.1:1", SWARM_KEY, tmp_path / "k")
    assert one_machine._pick_address(local_only) == f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"


def test_an_external_kubo_with_public_transports_has_no_swarm_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """kubo listens on QUIC & co only without a swarm.key: refused, with the fix.
    (A unit test: the API's answers are given; the real kubo tests follow.)"""
    peer = "12D3KooWFF8ENRDGR5U3LaK1aGQQWgwgDWjpbncfkwYNVSGijCfJ"
    public = ExternalKubo("http://127.0.0.1:1", SWARM_KEY, tmp_path / "swarm.key")
    addresses = [
        f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}",
        f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{peer}",
    ]
    monkeypatch.setattr(public, "_id", lambda: {"ID": peer, "Addresses": addresses})
    quiet: dict = {}
    for key, value in QUIET_CONFIG.items():
        set_dotted(quiet, key, value)
    monkeypatch.setattr(public.api, "json", lambda *a, **kw: quiet)
    with pytest.raises(ConfigError, match="has no swarm key .*quic-v1") as e:
        public.start()
    assert str(tmp_path / "swarm.key") in str(e.value)
    assert (tmp_path / "swarm.key").read_text() == swarm_key_file(SWARM_KEY)


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kubo, Kubo]]:
    """Two kubos as an operator would run them (quiet, on the swarm's key), with
    no peering config yet (the tests on `pair` write some)."""
    yield from two_kubos(tmp_path_factory.mktemp("operated"))


@pytest.mark.ipfs
def test_an_external_kubo_is_used_through_its_api(operated: tuple[Kubo, Kubo], tmp_path: Path):
    a, b = operated
    key_file = tmp_path / "home" / "swarm.key"
    kubo = ExternalKubo(a.api_url + "/", SWARM_KEY, key_file)
    assert kubo.running
    kubo.start()
    assert kubo.api_url == a.api_url
    assert kubo.peer_id == a.peer_id
    assert kubo.multiaddr == a.multiaddr
    # The swarm key, ready for the operator to put in that kubo's repo.
    assert key_file.read_text() == swarm_key_file(SWARM_KEY)
    assert key_file.stat().st_mode & 0o077 == 0

    kubo.connect(b.multiaddr)
    assert b.peer_id in kubo.connected_peers()
    assert a.peer_id in b.connected_peers()
    assert a.config_show()["Peering"]["Peers"] in (None, [])  # its config stays the operator's

    kubo.stop()  # not ours to stop
    assert a.running and kubo.running


@pytest.mark.ipfs
def test_an_external_kubo_on_the_public_network_is_refused(
    operated: tuple[Kubo, Kubo], tmp_path: Path
):
    _, b = operated
    kubo = ExternalKubo(b.api_url, SWARM_KEY, tmp_path / "swarm.key")
    # Set through the API, as an operator might; kubo applies it only at its next
    # start, so nothing is dialled here (and the address is loopback anyway).
    public = [f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{b.peer_id}"]
    b.api.call("config", "Bootstrap", json.dumps(public), json=True)
    b.api.call("config", "Discovery.MDNS.Enabled", "true", json=True)
    try:
        with pytest.raises(ConfigError) as refused:
            kubo.start()
        message = str(refused.value)
        assert "public network (Bootstrap, Discovery.MDNS.Enabled)" in message
        assert "ipfs bootstrap rm --all" in message
        assert "ipfs config --json Discovery.MDNS.Enabled false" in message
        assert (tmp_path / "swarm.key").exists()  # there to copy while fixing the rest
    finally:
        b.api.call("config", "Bootstrap", "[]", json=True)
        b.api.call("config", "Discovery.MDNS.Enabled", "false", json=True)
    kubo.start()


@pytest.mark.ipfs
def test_kubos_defaults_are_all_public_switches(tmp_path: Path):
    """What `ipfs init` writes, read the way the node reads an operator's kubo."""
    env = {**os.environ, "IPFS_PATH": str(tmp_path / "repo")}
    run = [str(kubo_binary())]
    subprocess.run([*run, "init", "--empty-repo"], env=env, check=True, capture_output=True)
    shown = subprocess.run([*run, "config", "show"], env=env, check=True, capture_output=True)
    assert set(public_switches_on(json.loads(shown.stdout))) == set(PUBLIC_SWITCHES)
