"""The one place that opens a Docker client.

Everything that talks to Docker (runtime, builder, doctor, the stack image)
gets its client from `connect`, so how we find the engine (DOCKER_HOST, the
default socket) and what "no engine" means is decided once.
"""

from __future__ import annotations

import docker
import docker.errors
import requests.exceptions

DEFAULT_TIMEOUT = 60  # seconds for one API call; imports and builds pass their own


def connect(timeout: int = DEFAULT_TIMEOUT) -> docker.DockerClient | None:
    """A client of the engine named by the environment (DOCKER_HOST or the default
    socket), or None when no engine answers a ping."""
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException:
        return None
    try:
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        client.close()
        return None
    return client
