"""Which executor a push builds with (peoplescloud.stack_choice): the host's, or a
stack image's, built on first use."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builder.errors import BuildError
from peoplescloud.docker_engine import connect
from peoplescloud.stack import cached_rootfs, default_cache_dir, image_exists
from peoplescloud.stack_choice import StackChooser


class HostLike:
    """An executor without stacks, as the host's: one Python, asked only when needed."""

    stack = "host"

    def __init__(self) -> None:
        self.asked = 0

    def python_version(self) -> str:
        self.asked += 1
        return "3.11.2"


def chooser(executor: Any, stack_image: str = "peoplescloud/stack:bookworm") -> StackChooser:
    settings: Any = SimpleNamespace(build=SimpleNamespace(stack_image=stack_image))
    return StackChooser(settings, executor)


def test_the_host_meets_its_own_python_and_refuses_others(tmp_path: Path) -> None:
    host = HostLike()
    said: list[str] = []
    (tmp_path / "requirements.txt").write_text("six\n")
    assert chooser(host).executor_for(tmp_path, said.append) is host
    assert host.asked == 0 and said == []  # no request: nothing to check
    (tmp_path / ".python-version").write_text("3.11\n")
    assert chooser(host).executor_for(tmp_path, said.append) is host
    (tmp_path / ".python-version").write_text("3.13\n")
    with pytest.raises(BuildError, match=r"asks for 3\.13; it offers Python 3\.11"):
        chooser(host).executor_for(tmp_path, said.append)


class Stacked(HostLike):
    def with_stack(self, image: str, python: str) -> Any:
        raise AssertionError("a Dockerfile app gets no stack")


def test_a_dockerfile_app_keeps_its_own_versions(tmp_path: Path) -> None:
    """Its image brings its Python: a .python-version no stack has does not matter."""
    (tmp_path / "Dockerfile").write_text("FROM peoplescloud/stack:bookworm\n")
    (tmp_path / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    (tmp_path / ".python-version").write_text("3.12\n")
    executor = Stacked()
    said: list[str] = []
    assert chooser(executor).executor_for(tmp_path, said.append) is executor
    assert said == [] and executor.asked == 0


@pytest.mark.docker
def test_a_missing_stack_is_built_on_first_use_and_said(tmp_path: Path) -> None:
    """With a fresh image name the trixie stack is missing: the push says so and
    imports it (from the cached root filesystem scripts/test made)."""
    import builder

    if not cached_rootfs(default_cache_dir(), "trixie").exists():
        pytest.fail("no cached trixie rootfs: run pc stack build --all first")
    client = connect()
    assert client is not None
    repo = f"peoplescloud/stack-test-{uuid.uuid4().hex[:8]}"
    executor = builder.DockerExecutor(client, f"{repo}:bookworm", "")
    (tmp_path / "requirements.txt").write_text("six\n")
    (tmp_path / ".python-version").write_text("# comment\n3.13\n")
    said: list[str] = []
    try:
        chosen = chooser(executor, f"{repo}:bookworm").executor_for(tmp_path, said.append)
        assert chosen.stack == f"{repo}:trixie"
        assert said[0] == "-----> Stack trixie (Python 3.13, Node 20)"
        assert said[1] == (
            f"-----> The trixie stack is not on this node yet: building {repo}:trixie (first use)"
        )
        assert image_exists(client, f"{repo}:trixie")
        assert chosen.python_version().startswith("3.13.")
        said.clear()
        chooser(executor, f"{repo}:bookworm").executor_for(tmp_path, said.append)
        assert said == ["-----> Stack trixie (Python 3.13, Node 20)"]  # there now
    finally:
        if image_exists(client, f"{repo}:trixie"):
            client.images.remove(f"{repo}:trixie", force=True)
        client.close()
