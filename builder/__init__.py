"""detect -> build -> release, like buildpacks.

`build(src, out, cache, executor, say)` turns a checked-out tree into a slug
directory and says which process types it has. Each app kind is a small module
in `builder.kinds` with `detect`, `build`, `default_processes`; the order they
are tried in is `builder.kinds.ORDER`.
"""

from typing import TYPE_CHECKING, Any

from builder.appjson import AppJson, CronJob, HealthCheck, read_app_json
from builder.build import SLUG_PATH, BuildResult, build
from builder.cache import app_cache
from builder.checkout import checkout
from builder.errors import BuildError
from builder.executor import Executor
from builder.host_executor import HostExecutor

if TYPE_CHECKING:
    from builder.docker_executor import DockerExecutor


def __getattr__(name: str) -> Any:
    """`DockerExecutor` is imported when first asked for: docker-py is loaded only
    where builds run in Docker."""
    if name == "DockerExecutor":
        from builder.docker_executor import DockerExecutor

        return DockerExecutor
    raise AttributeError(f"module 'builder' has no attribute {name!r}")


__all__ = [
    "AppJson",
    "HealthCheck",
    "BuildError",
    "BuildResult",
    "DockerExecutor",
    "Executor",
    "HostExecutor",
    "SLUG_PATH",
    "app_cache",
    "build",
    "checkout",
    "read_app_json",
    "CronJob",
]
