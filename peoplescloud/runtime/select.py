"""Pick the node's runtime from its settings."""

from __future__ import annotations

from collections.abc import Callable

from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime.base import Runtime
from peoplescloud.runtime.process import ProcessRuntime
from peoplescloud.runtime.sandbox import Limits
from peoplescloud.settings import Settings

CONNECT_TIMEOUT = 10  # seconds for the engine's ping


def open_runtime(settings: Settings, say: Callable[[str], None]) -> Runtime:
    """`docker` or `process` as configured; `auto` is docker when an engine answers.
    Both enforce the lease the daemon keeps in `<run_dir>/lease/` (see runtime.lease)."""
    lease_dir = settings.lease_dir
    if settings.runtime != "process":
        # docker-py only where Docker may be used: a process-runtime node is smaller.
        from peoplescloud import docker_engine
        from peoplescloud.runtime.docker import DockerRuntime

        client = docker_engine.connect(CONNECT_TIMEOUT)
        if client is not None:
            return DockerRuntime(client, settings.name, settings.build.stack_image, lease_dir)
        if settings.runtime == "docker":
            raise RuntimeFailure("runtime is 'docker' but no Docker engine answers")
        say("No Docker engine answers: apps run as plain processes")
    shares = settings.shares
    limits = Limits(
        file_mb=shares.sandbox_file_mb, pids=shares.sandbox_pids, tmp_mb=shares.sandbox_tmp_mb
    )
    return ProcessRuntime(
        settings.run_dir,
        settings.name,
        lease_dir=lease_dir,
        uid=shares.sandbox_uid,
        limits=limits,
        log_mb=shares.log_mb,
    )
