"""Build steps in throwaway containers of the stack image."""

from __future__ import annotations

import contextlib
import copy
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import docker
import docker.errors

from builder.errors import BuildError
from builder.executor import (
    DOWNLOAD_CACHES,
    INDENT,
    UV_DIR_IN_CONTAINER,
    Config,
    Deadline,
    Say,
    check_step,
    uv_binary,
    uv_environment,
)

BUILD_LABEL = "peoplescloud.build"
# The unprivileged uid:gid build steps run as, the runtime's own (its APP_USER),
# when this node's daemon is root and can hand the work directories to it.
BUILD_UID = 10001
CA_IN_CONTAINER = "/etc/ssl/certs/pc-ca.crt"
# Run each step through sh only to set the umask: the argv follows as "$@",
# never as shell text. 022 keeps everything readable by the runtime's user.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's default
_UMASK_WRAPPER = ["sh", "-c", 'umask 022 && exec "$@"', "sh"]


class DockerExecutor:
    """Runs each step in a fresh container of `image`, the slug at /app (so the
    venv is created at the path it runs from) and the cache at /cache.

    Install scripts are the pusher's code, so every step is boxed in: never root
    (uid 10001, the runtime's, when the daemon is root and so can give it the
    work directories; else the daemon's own unprivileged uid), no capabilities,
    no setuid, a read-only root filesystem with a size-limited /tmp, memory and
    pids limits, and a wall-clock timeout. The slug and the app's own download
    caches are the only writable mounts; the slug's size is checked after the
    build (`builder.build`), as Docker cannot bound a bind mount. Steps run with
    umask 022, so the runtime's non-root user can read what they wrote.
    """

    slug_moves = False  # the runtime mounts the slug at /app, where it was built

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        ca_bundle: str,
        memory_mb: int = 1024,
        timeout: int = 900,
        pids: int = 512,
        network: str | Callable[[], AbstractContextManager[str]] = "bridge",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.stack = image
        self.ca_bundle = ca_bundle
        self.memory_mb = memory_mb
        self.timeout = timeout
        self.pids = pids
        # Root hands the work directories to BUILD_UID; anyone else keeps them.
        self.uid, self.gid = (BUILD_UID, BUILD_UID) if os.getuid() == 0 else _own_ids()
        # The network steps join: a name, or a context that yields one and keeps
        # it while a container joins it (the node's isolated network, which the
        # docker runtime makes on demand and removes with its last container).
        self.network = network
        # Which node's builds these are, so a node sweeps only its own leftovers.
        self.labels = {BUILD_LABEL: "1", **(labels or {})}
        self.python = "python3"  # the stack's Python, as python_version() runs it
        self._python: str | None = None

    def with_stack(self, image: str, python: str = "python3") -> DockerExecutor:
        """This executor, on another stack image (`python`: its interpreter's name)."""
        other = copy.copy(self)
        other.stack, other.python, other._python = image, python, None
        return other

    def identity(self) -> str:
        try:
            image = self.client.images.get(self.stack)
        except docker.errors.ImageNotFound:
            raise BuildError(f"the stack image {self.stack} is not on this node") from None
        assert image.id is not None  # an image the engine describes always has its id
        return image.id

    def python_version(self) -> str:
        if self._python is None:
            lines: list[str] = []
            argv = [self.python, "-c", "import platform; print(platform.python_version())"]
            self._run(argv, {}, lines.append)
            self._python = lines[-1].strip() if lines else ""
        return self._python

    def run(
        self,
        argv: Sequence[str],
        app: Path,
        cache: Path,
        say: Say,
        shown: str = "",
        config: Config | None = None,
    ) -> None:
        # Only this app's download caches: the built dependencies in cache/deps are
        # hard-linked into its slugs, so no install script may write there.
        self._give(app, whole=True)
        volumes = {str(app.resolve()): {"bind": "/app", "mode": "rw"}}
        if uv := uv_binary():  # the node's own uv, read-only
            volumes[str(uv)] = {"bind": f"{UV_DIR_IN_CONTAINER}/uv", "mode": "ro"}
        for name in DOWNLOAD_CACHES:
            (cache / name).mkdir(parents=True, exist_ok=True)
            self._give(cache / name, whole=False)
            volumes[str((cache / name).resolve())] = {"bind": f"/cache/{name}", "mode": "rw"}

        def show(line: str) -> None:
            if line.strip():
                say(INDENT + line)

        self._run(argv, volumes, show, shown, config or {})

    def _give(self, path: Path, whole: bool) -> None:
        """Make `path` the build user's, so a step can write there."""
        if (self.uid, self.gid) != _own_ids():
            _give_tree(path, self.uid, self.gid, whole)

    def _run(
        self,
        argv: Sequence[str],
        volumes: dict,
        on_line: Say,
        shown: str = "",
        config: Config | None = None,
    ) -> None:
        """One container: start it, stream its output, wait, remove it."""
        environment = {
            **(config or {}),
            "PATH": f"{IMAGE_PATH}:{UV_DIR_IN_CONTAINER}",
            "HOME": "/tmp",
            "PIP_CACHE_DIR": "/cache/pip",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            "npm_config_cache": "/cache/npm",
            "npm_config_update_notifier": "false",
            **uv_environment("/cache/uv"),
        }
        if self.ca_bundle and os.path.isfile(self.ca_bundle):
            volumes = {**volumes, self.ca_bundle: {"bind": CA_IN_CONTAINER, "mode": "ro"}}
            for name in ("PIP_CERT", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
                environment[name] = CA_IN_CONTAINER
        network = self.network
        joining = nullcontext(network) if isinstance(network, str) else network()
        try:
            # create + start, not run: run() would try to pull a missing image
            with joining as network_name:
                container = self._create(argv, volumes, environment, network_name)
        except docker.errors.ImageNotFound:
            raise BuildError(f"the stack image {self.stack} is not on this node") from None
        except docker.errors.APIError as e:
            raise BuildError(f"could not create a build container: {e.explanation or e}") from None
        tail: deque[str] = deque(maxlen=30)
        try:
            try:
                container.start()
            except docker.errors.APIError as e:
                raise BuildError(
                    f"could not start a build container: {e.explanation or e}"
                ) from None
            with Deadline(self.timeout, container.kill) as deadline:
                for line in _lines(container.logs(stream=True, follow=True)):
                    tail.append(line)
                    on_line(line)
                code = container.wait().get("StatusCode", -1)
        finally:
            with contextlib.suppress(docker.errors.APIError):  # already gone
                container.remove(force=True)
        if code == 137 and not deadline.expired:
            step = " ".join(argv)
            raise BuildError(f"'{step}' was killed: did it need more than {self.memory_mb} MB?")
        check_step(argv, code, tail, deadline, shown)

    def _create(
        self, argv: Sequence[str], volumes: dict, environment: dict[str, str], network: str
    ) -> Any:
        """A build step's container, made but not started."""
        return self.client.containers.create(
            self.stack,
            [*_UMASK_WRAPPER, *argv],
            labels=self.labels,
            volumes=volumes,
            working_dir="/app",
            environment=environment,
            user=f"{self.uid}:{self.gid}",
            mem_limit=f"{self.memory_mb}m",
            memswap_limit=f"{self.memory_mb}m",
            network_mode=network,
            # Install scripts are the pusher's code: no capabilities, no setuid, bounded.
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=self.pids,
            read_only=True,  # writes go to /app, the caches and /tmp, nowhere else
            # HOME is /tmp; tmpfs pages count against the memory limit too.
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.memory_mb}m,mode=1777"},
        )


def _own_ids() -> tuple[int, int]:
    return os.getuid(), os.getgid()


def _give_tree(top: Path, uid: int, gid: int, whole: bool) -> None:
    """chown `top` (and, if `whole`, all under it) to uid:gid, never through a symlink."""
    paths = [str(top)]
    if whole:
        for dirpath, dirnames, filenames in os.walk(top):
            paths += [os.path.join(dirpath, n) for n in (*dirnames, *filenames)]
    for path in paths:
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Whole lines out of a stream of byte chunks cut anywhere."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace").rstrip("\r")
