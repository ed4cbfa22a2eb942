"""detect -> build -> release, like buildpacks.

`build(src, out, cache, executor, say)` turns a checked-out tree into a slug
directory and says which process types it has. Each app kind is a small module
in `builder.kinds` with `detect`, `build`, `default_processes`; the order they
are tried in is `builder.kinds.ORDER`.
"""

from builder.appjson import AppJson, CronJob, HealthCheck, read_app_json
from builder.build import SLUG_PATH, BuildResult, build
from builder.cache import app_cache
from builder.checkout import checkout
from builder.docker_executor import DockerExecutor
from builder.errors import BuildError
from builder.executor import Executor
from builder.host_executor import HostExecutor

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
