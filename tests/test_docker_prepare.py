"""The docker runtime's `prepare`: a bot's replacement is created while the old
instance stops, and started only once it is gone (never two copies at once)."""

from __future__ import annotations

import dataclasses

import pytest

from peoplescloud.runtime.base import InstanceKey
from tests.test_runtime_suite import (
    STACK_IMAGE,
    _docker_client,
    node_name,
    slug,  # noqa: F401 - a fixture
    spec_for,
    texts,
    wait_for,
)

pytestmark = pytest.mark.docker


def _runtime():
    from peoplescloud.runtime.docker import DockerRuntime

    return DockerRuntime(_docker_client(), node_name(), STACK_IMAGE)


def _ids(runtime) -> dict[str, str]:
    """name -> id of every container of the runtime's node, prepared ones too."""
    mine = {"label": f"peoplescloud.node={runtime.node}"}
    return {c.name: c.id for c in runtime.client.containers.list(all=True, filters=mine)}


def test_a_prepared_container_is_no_instance_until_its_start_uses_it(slug):  # noqa: F811
    runtime = _runtime()
    v1 = spec_for(runtime, slug, runtime.node, "idle")
    v2 = dataclasses.replace(v1, release="v2")
    try:
        runtime.start(v1)
        runtime.prepare(v2)
        prepared = _ids(runtime)[runtime.container_name(v2.key)]
        # Not running, so not an instance: the reconciler neither counts nor restarts it.
        assert [s.release for s in runtime.status()] == ["v1"]
        runtime.stop(v1.key, timeout=1)
        # The prepared container keeps the node's network: its start does not wait for one.
        assert runtime.client.networks.list(names=[runtime.network])
        started = runtime.start(v2)
        assert started.running
        assert _ids(runtime) == {runtime.container_name(v2.key): prepared}
    finally:
        for key in (v1.key, v2.key):
            runtime.stop(key, timeout=1)
        runtime.sweep_network()


def test_a_prepared_container_that_no_longer_fits_its_spec_is_made_again(slug):  # noqa: F811
    """Config that changed between `prepare` and `start` is never lost."""
    runtime = _runtime()
    old = spec_for(runtime, slug, runtime.node, "idle")
    new = dataclasses.replace(old, env={"GREETING": "changed"})
    try:
        runtime.prepare(old)
        prepared = _ids(runtime)[runtime.container_name(old.key)]
        runtime.start(new)
        assert _ids(runtime)[runtime.container_name(new.key)] != prepared
        wait_for(lambda: any("changed" in t for t in texts(runtime, "demo", "bot.1")), "env")
    finally:
        runtime.stop(InstanceKey("demo", "bot.1", "v1"), timeout=1)
        runtime.sweep_network()


def test_a_prepared_container_never_started_is_removed_after_a_while(slug, monkeypatch):  # noqa: F811
    from peoplescloud.runtime import docker as docker_runtime

    runtime = _runtime()
    spec = spec_for(runtime, slug, runtime.node, "idle")
    runtime.prepare(spec)
    assert _ids(runtime)
    runtime.status()
    assert _ids(runtime)  # young: its start may still come
    monkeypatch.setattr(docker_runtime, "PREPARED_FOR", 0.0)
    runtime.status()
    assert _ids(runtime) == {}
    assert not runtime.client.networks.list(names=[runtime.network])  # it went with it
