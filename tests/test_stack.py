"""The stack image: where the host's Debian mirror is found, and what the image holds."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from peoplescloud.docker_engine import connect
from peoplescloud.errors import PCError
from peoplescloud.stack import (
    CHROOT_MOUNTS,
    STACKS,
    build_rootfs,
    build_stack_image,
    cached_rootfs,
    chroot_mounts,
    debian_mirror,
    default_cache_dir,
    image_exists,
    image_of,
    split_tag,
)
from tests.conftest import STACK_IMAGE


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://security.example.org/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "# a comment\n"
        "URIs: http://mirror.example.org/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert debian_mirror("bookworm", (tmp_path,)) == "http://mirror.example.org/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "a.list").write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb-src http://src.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example.org/debian bookworm main\n"
    )
    (tmp_path / "b.list.disabled").write_text("deb http://other.example.org/debian bookworm main\n")
    assert debian_mirror("bookworm", (tmp_path,)) == "http://mirror.example.org/debian"


def test_another_suite_uses_the_mirror_of_the_hosts_suite(tmp_path: Path) -> None:
    """A mirror serves every release: forky's comes from the host's bookworm line,
    never from a -security or -updates one (served elsewhere, or not a release)."""
    (tmp_path / "a.list").write_text(
        "deb http://security.example.org/debian-security bookworm-security main\n"
        "deb http://mirror.example.org/debian bookworm main\n"
    )
    assert debian_mirror("forky", (tmp_path,)) == "http://mirror.example.org/debian"


def test_mirror_defaults_to_debian_when_none_is_configured(tmp_path: Path) -> None:
    assert debian_mirror("bookworm", (tmp_path / "missing.list",)) == "http://deb.debian.org/debian"


def test_split_tag() -> None:
    assert split_tag("peoplescloud/stack:bookworm") == ("peoplescloud/stack", "bookworm")
    assert split_tag("localhost:5000/stack") == ("localhost:5000/stack", "latest")
    assert split_tag("localhost:5000/stack:v2") == ("localhost:5000/stack", "v2")


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("debootstrap"), reason="needs root and debootstrap"
)


@needs_root
def testchroot_mounts_are_gone_after_a_failure(tmp_path: Path) -> None:
    points = [tmp_path / target for target in CHROOT_MOUNTS.values()]
    with pytest.raises(RuntimeError), chroot_mounts(tmp_path):
        assert all(os.path.ismount(p) for p in points)
        raise RuntimeError("the install failed")
    assert not any(os.path.ismount(p) for p in points)


@needs_root
def test_a_failed_rootfs_build_raises_and_leaves_nothing(tmp_path: Path) -> None:
    said: list[str] = []
    tarball = tmp_path / "cache" / "stack-bookworm.tar"
    with pytest.raises(PCError, match="debootstrap failed"):
        # Port 9 (discard) on loopback: nothing answers, debootstrap fails at once.
        build_rootfs(tarball, said.append, STACKS["bookworm"], mirror="http://127.0.0.1:9/debian")
    assert list(tarball.parent.iterdir()) == []
    assert any("127.0.0.1:9" in line for line in said)


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    engine = connect()
    assert engine is not None, "the docker mark guarantees an engine"
    yield engine
    engine.close()


@pytest.mark.docker
def test_build_is_a_no_op_when_the_image_exists(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    said: list[str] = []
    # An empty cache dir: were anything rebuilt, it would show here.
    assert build_stack_image(client, STACK_IMAGE, said.append, tmp_path) is False
    assert image_exists(client, STACK_IMAGE)
    assert said == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_a_fresh_engine_imports_the_cached_rootfs(client: docker.DockerClient) -> None:
    if not cached_rootfs(default_cache_dir()).exists():
        pytest.skip("no cached rootfs here (the image was built on another engine)")
    image = f"peoplescloud/stack-test:{uuid.uuid4().hex[:8]}"
    said: list[str] = []
    try:
        assert build_stack_image(client, image, said.append, default_cache_dir()) is True
        assert image_exists(client, image)
        assert any("cached root filesystem" in line for line in said)
        labels = client.images.get(image).labels
        assert labels.get("org.peoplescloud.stack") == "bookworm"
    finally:
        if image_exists(client, image):
            client.images.remove(image, force=True)


@pytest.mark.docker
def test_the_image_runs_python_node_and_npm_as_a_non_root_user(
    client: docker.DockerClient,
) -> None:
    script = (
        "id -u; python3 -c 'import sys; print(*sys.version_info[:2])'; "
        "python3 -m venv /tmp/v && echo venv-ok; node --version; npm --version"
    )
    out = client.containers.run(
        STACK_IMAGE,
        ["sh", "-c", script],
        user="10001",
        environment={"HOME": "/tmp"},
        network_mode="none",
        remove=True,
    )
    uid, python, venv, node, npm = out.decode().split("\n")[:5]
    assert uid == "10001"
    assert tuple(int(n) for n in python.split()) >= (3, 11)
    assert venv == "venv-ok"
    assert node.startswith("v") and int(node[1:].split(".")[0]) >= 18
    assert npm.split(".")[0].isdigit()


@pytest.mark.docker
@pytest.mark.parametrize(
    ("stack", "python", "node"),
    [("bullseye", "2.7", ""), ("trixie", "3.13", "v20."), ("forky", "3.14", "v24.")],
)
def test_each_stack_has_its_python_and_node(
    client: docker.DockerClient, stack: str, python: str, node: str
) -> None:
    """Each stack's own versions; bullseye's Python 2 gets its venvs from virtualenv."""
    image = image_of(STACK_IMAGE, stack)
    if not image_exists(client, image):
        pytest.fail(f"{image} is missing: pc stack build --all")
    interpreter = "python2.7" if python == "2.7" else "python3"
    make_venv = (
        "virtualenv -q --no-download --python python2.7 /tmp/v"
        if python == "2.7"
        else "python3 -m venv /tmp/v"
    )
    script = (
        f"{interpreter} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; "
        f"{make_venv} && /tmp/v/bin/pip --version; node --version 2>/dev/null || echo no-node"
    )
    out = client.containers.run(
        image,
        ["sh", "-c", script],
        user="10001",
        environment={"HOME": "/tmp"},
        network_mode="none",
        remove=True,
    )
    found, pip, node_version = out.decode().split("\n")[:3]
    assert found == python
    assert f"(python {python})" in pip
    assert node_version.startswith(node) if node else node_version == "no-node"
