"""The doctor reports what is missing, each gap with the command that fixes it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from peoplescloud.doctor import (
    check_binary,
    check_docker,
    check_firewall,
    check_other_stacks,
    check_port,
    check_stack_image,
    checks,
)
from peoplescloud.runtime import firewall
from peoplescloud.settings import Settings


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on for the length of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty dir: every binary is missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_a_port_in_use_is_reported_with_a_fix(busy_port: int) -> None:
    check = check_port("ssh_port", "127.0.0.1", busy_port)
    assert not check.ok
    assert str(busy_port) in check.detail
    assert f"sport = :{busy_port}" in check.fix
    assert "PC_SSH_PORT=" in check.fix


def test_a_free_port_passes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert check_port("router_port", "127.0.0.1", port).ok
    assert check_port("router_port", "127.0.0.1", 0).ok


def test_checks_name_the_busy_setting(busy_port: int, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, listen="127.0.0.1", dashboard_port=busy_port)
    by_name = {c.name: c for c in checks(settings)}
    busy = by_name[f"dashboard_port 127.0.0.1:{busy_port}"]
    assert not busy.ok
    assert "PC_DASHBOARD_PORT=" in busy.fix


def test_missing_binaries_have_install_commands(empty_path: Path) -> None:
    git = check_binary("git", "git client", "apt-get install -y git")
    assert not git.ok and git.required
    assert git.fix == "apt-get install -y git"


def test_checks_report_missing_tools_and_which_are_optional(
    empty_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swarm.ipfs.kubo

    monkeypatch.delenv("PC_IPFS_BIN", raising=False)  # no kubo anywhere
    monkeypatch.setattr(swarm.ipfs.kubo, "CACHED_BIN", tmp_path / "no-ipfs")
    by_name = {c.name: c for c in checks(Settings(home=tmp_path, listen="127.0.0.1"))}
    assert not by_name["git"].ok and by_name["git"].fix == "apt-get install -y git"
    assert not by_name["ssh"].ok and by_name["ssh"].fix == "apt-get install -y openssh-client"
    assert not by_name["bwrap"].ok and not by_name["bwrap"].required
    assert by_name["bwrap"].fix == "apt-get install -y bubblewrap"
    assert not by_name["ipfs"].ok and not by_name["ipfs"].required
    assert by_name["ipfs"].fix.startswith("bash scripts/install-kubo")
    assert all(c.fix for c in by_name.values() if not c.ok)


def test_no_iptables_means_no_container_firewall(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firewall, "SBIN", str(empty_path))  # not even in /usr/sbin
    check = check_firewall()
    assert not check.ok and not check.required  # the node runs, its ports less guarded
    assert "iptables is not installed" in check.detail
    assert "SSH, peer and Raft ports" in check.detail and "root" in check.fix


def test_a_daemon_not_root_cannot_guard_the_nodes_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 1000)
    check = check_firewall()
    assert not check.ok and not check.required
    assert firewall.missing() in check.detail
    with pytest.raises(firewall.FirewallError, match="iptables|root"):
        firewall.install("node1", 8080)  # refused before any rule is touched
    assert firewall.protect("node1", 8080) == firewall.missing()  # the daemon only warns


def test_a_present_binary_passes(empty_path: Path) -> None:
    tool = empty_path / "git"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    check = check_binary("git", "git client", "apt-get install -y git")
    assert check.ok
    assert str(tool) in check.detail


def test_no_docker_installed_says_install_it(empty_path: Path) -> None:
    check = check_docker(None)
    assert not check.ok
    assert check.fix == "apt-get install -y docker.io"


def test_docker_installed_but_stopped_says_start_it(empty_path: Path) -> None:
    dockerd = empty_path / "dockerd"
    dockerd.write_text("#!/bin/sh\n")
    dockerd.chmod(0o755)
    check = check_docker(None)
    assert not check.ok
    assert check.fix == "scripts/start-dockerd"


def test_stack_image_without_an_engine_says_build_it() -> None:
    check = check_stack_image(None, "peoplescloud/stack:bookworm")
    assert not check.ok
    assert check.fix == "pc stack build"


def test_other_stacks_are_optional_and_named_when_missing() -> None:
    class Engine:
        """Has only the default stack's image."""

        class images:  # noqa: N801 - docker-py's shape
            @staticmethod
            def get(name: str) -> object:
                if name != "peoplescloud/stack:bookworm":
                    raise docker.errors.ImageNotFound(name)
                return object()

    check = check_other_stacks(Engine(), "peoplescloud/stack:bookworm")  # type: ignore[arg-type]
    assert not check.ok and not check.required
    assert check.detail == "bullseye, trixie, forky missing (a push that asks for one builds it)"
    assert check.fix == "pc stack build --all"
