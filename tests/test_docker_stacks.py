"""A release's stack this engine lacks (an instance placed on, or failed over
to, a swarm member that never built it): the docker runtime builds it in the
background and says so, instead of failing on "No such image" until a host
runs `pc stack build`."""

from __future__ import annotations

import uuid

import pytest

from peoplescloud.errors import RuntimeFailure
from peoplescloud.stack import cached_rootfs, default_cache_dir, image_exists
from tests.test_runtime_suite import (
    _docker_client,
    node_name,
    slug,  # noqa: F401 - a fixture
    spec_for,
    texts,
    wait_for,
)

pytestmark = pytest.mark.docker


def test_a_missing_release_stack_is_built_here_and_the_instance_then_starts(slug):  # noqa: F811
    from peoplescloud.runtime.docker import DockerRuntime

    if not cached_rootfs(default_cache_dir(), "bullseye").exists():
        pytest.fail("no cached bullseye rootfs: run pc stack build --all first")
    client = _docker_client()
    repo = f"peoplescloud/stack-test-{uuid.uuid4().hex[:8]}"  # a stack nobody has yet
    runtime = DockerRuntime(client, node_name(), f"{repo}:bookworm")
    codename = "grep VERSION_CODENAME /etc/os-release; sleep 60"
    spec = spec_for(runtime, slug, runtime.node, "idle", stack=f"{repo}:bullseye", command=codename)
    try:
        with pytest.raises(RuntimeFailure, match="the bullseye stack is not on this node yet"):
            runtime.start(spec)

        def started() -> bool:
            try:
                runtime.start(spec)
            except RuntimeFailure as e:  # the reconciler's next pass, until the build ends
                assert "not on this node yet" in str(e)
                return False
            return True

        wait_for(started, timeout=180, interval=1)
        wait_for(lambda: texts(runtime, "demo", "bot.1") == ["VERSION_CODENAME=bullseye"])
        # An image that is no stack of ours is left to the engine's own error.
        assert runtime.stacks.stack_of("python:3.12-slim") is None
    finally:
        runtime.stop(spec.key, timeout=1)
        runtime.sweep_network()
        if image_exists(client, f"{repo}:bullseye"):
            client.images.remove(f"{repo}:bullseye", force=True)
