"""The docker runtime: one container per instance, from the stack image.

The slug is bind-mounted read-only at /app; the container runs as an
unprivileged user with a read-only root, a private /tmp, a memory limit and no
capabilities. Every container carries the instance's labels, and `status()`
lists containers by the node label, which is how a restarted daemon re-adopts
them (and how several nodes share one engine). No restart policy: the daemon
decides about restarts. Each instance's init (PID 1) is `pc-shim`
(`runtime.shim`, a small static program bind-mounted read-only), which runs
the app's command as its child, passes `docker stop`'s signal on to every
process of the container, reaps orphans, and ends the app once the node's lease
passes (`peoplescloud.runtime.lease`); the lease directory is mounted read-only for it.

The node's containers are on a network of its own (`pc_<node>`, made when the
daemon starts or with the first container, removed with the last container; a
bot's replacement is created before its old container goes (`prepare`), so the
network stays: removing and making it again would cost the replacement half a
second) where docker forwards nothing between
containers (`enable_icc=false`): one app cannot reach another's containers, nor
its own other instances (as dynos on Heroku). The network is an ordinary
bridge, so bots reach the internet; its Linux bridge is named for `firewall`,
whose rules keep the containers away from the node's own ports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from socket import SHUT_WR
from typing import Any

import docker
import docker.errors
from docker.types import LogConfig
from docker.utils.socket import frames_iter

from builder.docker_executor import BUILD_LABEL
from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime import firewall, images, lease, shim
from peoplescloud.runtime.base import (
    LABEL_APP,
    LABEL_NODE,
    LABEL_PROCESS,
    LABEL_RELEASE,
    WEB_PORT,
    Capabilities,
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    LogLine,
    Terminal,
    on_set,
    search_path,
    shell_script,
)
from peoplescloud.runtime.stacks import StackImages

LABEL_ONEOFF = "peoplescloud.oneoff"  # one-off `run` containers: not instances
LABEL_SPEC = "peoplescloud.spec"  # what an instance's container was created with (a hash)
PREPARED_FOR = 60.0  # seconds a prepared container waits for its start, at most
APP_USER = "10001:10001"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# `docker stop` signals the container's init, pc-shim, which passes it on to
# every process of the container, so the app gets SIGTERM even when `sh -c` did
# not exec it (see `shell_script`: then sh traps the signal and waits for the app
# instead of dying first, when the container would end and SIGKILL the app
# mid-shutdown). `exec 2>&1`: one stream, so docker stores lines in the order of
# their timestamps (its stdout and stderr readers race), which timestamp cursors rely on.
SH_PREFIX = "exec 2>&1; "
LEASE_MOUNT = "/run/pc"  # the lease directory, inside a container
SHIM_MOUNT = "/run/pc-shim"  # pc-shim, inside a container
TMPFS = "rw,nosuid,nodev,size=256m,mode=1777"  # /tmp, and a Dockerfile app's VOLUMEs
LOG_CONFIG = LogConfig(type=LogConfig.types.JSON, config={"max-size": "10m", "max-file": "3"})


class DockerRuntime:
    """Instances as containers of one Docker engine, for node `node`."""

    name = "docker"
    # Non-root containers with memory, CPU and pid limits; network isolation
    # between apps and from the node's ports is the docker runtime's own part.
    capabilities = Capabilities(True, "apps run in Docker containers")

    def __init__(
        self,
        client: docker.DockerClient,
        node: str,
        image: str,
        lease_dir: Path | None = None,
    ) -> None:
        """`lease_dir`: where the daemon keeps the node's lease (None: never enforced)."""
        self.client = client
        self.node = node
        self.image = image
        self.lease_dir = lease_dir
        self.network = f"pc_{node}"  # '_' is in no node name: no other node's
        self.app_images = images.AppImages(client, node)  # Dockerfile apps' (the reconciler's)
        self.stacks = StackImages(client, image)  # a release's stack missing here: built
        # Held while the network is made and a container put on it, or it is removed.
        self._network_lock = threading.Lock()

    def container_name(self, key: InstanceKey) -> str:
        # '_' cannot appear in node, app or release names, so "my" + "bot-x.1" and
        # "my-bot" + "x.1" can never share a name.
        return f"pc_{self.node}_{key.app}_{key.process}_{key.release}"

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        if not spec.image:
            self.stacks.need(_stack_image(spec, self.image))
        try:
            with self._network_lock:  # one creator at a time; the network stays meanwhile
                container = self._made(spec)
            container.start()
            container.reload()
        except docker.errors.DockerException as e:
            if (left := self._get(spec.key)) is not None:
                self._remove(left)  # created but not started
            self._drop_network()
            raise RuntimeFailure(f"could not start {spec.key}: {e}") from None
        return _status(container)

    def prepare(self, spec: InstanceSpec) -> None:
        """Create the instance's container without starting it, while the one it
        replaces stops: `start` then only starts it. Best effort: `start` makes
        it again (and says why it cannot) if this did not work."""
        with contextlib.suppress(docker.errors.DockerException, RuntimeFailure), self._network_lock:
            self._made(spec)

    def _made(self, spec: InstanceSpec) -> Any:
        """The instance's container, created (with `_network_lock` held): the one
        `prepare` made if it is still exactly what `spec` asks for, else a new one."""
        args = {**self._create_args(spec), "labels": spec.labels()}
        made = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()
        args["labels"] = {**spec.labels(), LABEL_SPEC: made}
        ready = None
        for old in self._slot(spec.app, spec.process):
            labels = old.attrs.get("Labels") or {}
            if old.status == "created" and labels.get(LABEL_SPEC) == made:
                ready = old  # prepared for this very spec
            elif old.status != "running":
                self._remove(old)  # exited, of this release or an older one
            elif labels.get(LABEL_RELEASE) == spec.release:
                raise RuntimeFailure(f"{spec.key} is already running")
        return ready or self.client.containers.create(**args, network=self._network())

    def _create_args(self, spec: InstanceSpec) -> dict[str, Any]:
        """What the instance's container is created with (but its labels and network)."""
        env = {**spec.environment(WEB_PORT if spec.web else None), **_path(spec)}
        # pc-shim is the init (tini, docker's, is not needed: it does its part).
        sandbox = {**self._sandbox(spec), "init": False}
        sandbox["volumes"][str(shim.binary())] = {"bind": SHIM_MOUNT, "mode": "ro"}
        if self.lease_dir is not None:
            lease.make_lease_dir(self.lease_dir)
            mount = {"bind": LEASE_MOUNT, "mode": "ro"}
            sandbox["volumes"][str(self.lease_dir.resolve())] = mount
        init = shim.command(SHIM_MOUNT, spec.process, LEASE_MOUNT, init=True)
        argv = [*init, "sh", "-c", SH_PREFIX + shell_script(spec.command)]
        # Host port None: the engine picks a free one (docker-py takes it; its stubs
        # know only int ports).
        ports: dict[str, Any] | None = (
            {f"{WEB_PORT}/tcp": ("127.0.0.1", None)} if spec.web else None
        )
        return dict(
            **_command(spec, argv, self.image),
            name=self.container_name(spec.key),
            environment=env,
            ports=ports,
            log_config=LOG_CONFIG,
            **sandbox,
        )

    def stop(self, key: InstanceKey, timeout: float = 10) -> None:
        container = self._get(key)
        if container is None:
            return
        with contextlib.suppress(docker.errors.NotFound):  # gone meanwhile
            container.stop(timeout=math.ceil(timeout))
        self._remove(container)
        self._drop_network()

    def status(self) -> list[InstanceStatus]:
        containers = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_NODE}={self.node}"}, ignore_removed=True
        )
        # The node's one-offs and builds carry its label too (so it sweeps their
        # leftovers), but they are no instances; nor is a container `prepare` made,
        # until it starts (one its start never came for is removed after a while).
        found = []
        for c in containers:
            if LABEL_ONEOFF in c.labels or BUILD_LABEL in c.labels:
                continue
            if c.status == "created":
                if _age(c) > PREPARED_FOR:
                    self._remove(c)
                    self._drop_network()
                continue
            found.append(_status(c))
        return found

    def logs(self, key: InstanceKey, follow: bool, cursor: str | None) -> Iterator[LogLine]:
        """Docker's own log, with timestamps; the cursor is docker's full-precision
        timestamp of the last line seen (resumed with `since`, the boundary skipped)."""
        while True:
            container = self._get(key)
            if container is None:
                return
            for line in _read_logs(container, follow, cursor):
                cursor = line.cursor
                yield line
            # A follow stream can end early (a broken connection): resume while it runs.
            if not follow or not self._running(container):
                return

    def run(
        self,
        spec: InstanceSpec,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None = None,
        cancel: threading.Event | None = None,
        terminal: Terminal | None = None,
    ) -> int:
        """A one-off container like `docker run --rm -i` (`-it` with a terminal),
        attached before it starts."""
        tty = terminal is not None
        if not spec.image:
            self.stacks.need(_stack_image(spec, self.image))
        try:
            with self._network_lock:
                container = self.client.containers.create(
                    **_command(spec, argv, self.image),
                    name=f"pc_{self.node}_{spec.app}_run-{uuid.uuid4().hex[:8]}",
                    environment={
                        **spec.environment(None),
                        **_path(spec),
                        **({"TERM": terminal.term} if terminal else {}),
                    },
                    labels={**spec.labels(), LABEL_ONEOFF: "1"},
                    stdin_open=stdin is not None,
                    tty=tty,
                    network=self._network(),
                    **self._sandbox(spec),
                )
        except docker.errors.DockerException as e:
            self._drop_network()
            raise RuntimeFailure(f"could not run {argv[:1]} for {spec.app}: {e}") from None
        try:
            params = {"stdout": 1, "stderr": 1, "stream": 1, "stdin": int(stdin is not None)}
            sock = container.attach_socket(params=params)
            container.start()
            if terminal is not None:
                terminal.resize = lambda cols, rows: _resize(container, cols, rows)
                terminal.resize(terminal.cols, terminal.rows)
            if cancel is not None:  # removing the container ends the stream below
                on_set(cancel, lambda: self._remove(container))
            if stdin is not None:
                threading.Thread(target=_feed, args=(sock, stdin, tty), daemon=True).start()
            for _stream, data in frames_iter(sock, tty=tty):
                output(data)
            sock.close()
            return int(container.wait()["StatusCode"])
        finally:
            self._remove(container)
            self._drop_network()

    @contextlib.contextmanager
    def holding_network(self) -> Iterator[str]:
        """The node's network, made if missing and kept while a container outside
        this runtime (a build step) joins it: builds get the same isolation."""
        with self._network_lock:
            yield self._network()

    def make_network(self) -> None:
        """Make the node's network now (at the daemon's start), so that the first
        build or instance does not wait for it."""
        with self._network_lock:
            self._network()

    def sweep_network(self) -> None:
        """Remove the node's network when no container uses it (a daemon killed
        between removing the last container and the network left it; one that
        stops with no container left)."""
        self._drop_network()

    # -- helpers --

    def _networks(self) -> list[Any]:
        # The engine's name filter matches parts of names: keep the exact one.
        found = self.client.networks.list(names=[self.network])
        return [n for n in found if n.name == self.network]

    def _network(self) -> str:
        """The node's network, made if missing (with `_network_lock` held)."""
        if not self._networks():
            self.client.networks.create(
                self.network,
                driver="bridge",
                check_duplicate=True,
                labels={LABEL_NODE: self.node},
                options={
                    "com.docker.network.bridge.name": firewall.bridge_name(self.node),
                    "com.docker.network.bridge.enable_icc": "false",
                },
            )
        return self.network

    def _drop_network(self) -> None:
        """Remove the node's network once no container of the node is left."""
        with self._network_lock:
            mine = f"{LABEL_NODE}={self.node}"
            if self.client.containers.list(all=True, filters={"label": mine}, sparse=True):
                return  # (sparse: no inspect per container, which a node with many would pay)
            for network in self._networks():
                try:
                    network.remove()
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as e:  # a container not ours joined it
                    if e.status_code not in (403, 409):
                        raise

    def _sandbox(self, spec: InstanceSpec) -> dict[str, Any]:
        """What every container of an app gets: the slug, limits, no privileges
        (a Dockerfile app: its own image instead of the slug, see `images.sandbox`)."""
        box = dict(
            volumes={str(spec.slug.resolve()): {"bind": "/app", "mode": "ro"}},
            working_dir="/app",
            user=APP_USER,
            init=True,
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            nano_cpus=int(spec.cpus * 1e9),
            pids_limit=512,
            read_only=True,
            tmpfs={"/tmp": TMPFS},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
        )
        return images.sandbox(self.client, self.node, spec, box) if spec.image else box

    def _slot(self, app: str, process: str) -> list[Any]:
        """This node's containers of `process` of `app`, of any release, as the
        engine lists them (sparse: their labels are in `attrs["Labels"]`)."""
        labels = [f"{LABEL_NODE}={self.node}", f"{LABEL_APP}={app}", f"{LABEL_PROCESS}={process}"]
        found = self.client.containers.list(all=True, filters={"label": labels}, sparse=True)
        return [c for c in found if LABEL_ONEOFF not in (c.attrs.get("Labels") or {})]

    def _get(self, key: InstanceKey) -> Any:
        try:
            container = self.client.containers.get(self.container_name(key))
        except docker.errors.NotFound:
            return None
        labels = container.labels
        mine = (labels.get(LABEL_APP), labels.get(LABEL_PROCESS), labels.get(LABEL_RELEASE))
        return container if labels.get(LABEL_NODE) == self.node and mine == key else None

    def _running(self, container: Any) -> bool:
        try:
            container.reload()
        except docker.errors.NotFound:
            return False
        return container.status == "running"

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # 409: a removal already in progress
            if e.status_code != 409:
                raise
            # Wait for it: the node's network is removed only once no container is left.
            with contextlib.suppress(docker.errors.DockerException, OSError):
                container.wait(condition="removed", timeout=30)


def _command(spec: InstanceSpec, argv: list[str], stack: str) -> dict[str, Any]:
    """The image and command of a container of the app: its release's stack (the
    node's default stack for a release that names none, or was built on the
    host), or a Dockerfile app's own image, whose ENTRYPOINT is replaced (else it
    would be put before the command)."""
    if spec.image:
        return {"image": spec.image, "entrypoint": argv}
    return {"image": _stack_image(spec, stack), "command": argv}


def _stack_image(spec: InstanceSpec, default: str) -> str:
    """The stack image the release runs in: its own, or the node's default."""
    return spec.stack if spec.stack not in ("", "host") else default


def _status(container: Any) -> InstanceStatus:
    state = container.attrs["State"]
    labels = container.labels
    running = state["Running"]
    address = None
    bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{WEB_PORT}/tcp")
    if running and bindings:
        address = f"127.0.0.1:{bindings[0]['HostPort']}"
    return InstanceStatus(
        app=labels.get(LABEL_APP, ""),
        process=labels.get(LABEL_PROCESS, ""),
        release=labels.get(LABEL_RELEASE, ""),
        running=running,
        exit_code=None if running else state.get("ExitCode"),
        started_at=state.get("StartedAt", "")[:19] + "Z",
        address=address,
        detail=container.short_id,
        oom_killed=not running and bool(state.get("OOMKilled")),
    )


def _read_logs(container: Any, follow: bool, cursor: str | None) -> Iterator[LogLine]:
    since = None
    if cursor:
        # docker-py takes a float; step back a microsecond so rounding never
        # skips a line, then drop what is not after the cursor.
        seconds, nanos = _ts_key(cursor)
        since = max(seconds + nanos / 1e9 - 1e-6, 1e-6)
    try:
        stream = container.logs(stream=True, follow=follow, timestamps=True, since=since)
        for raw in _split_lines(stream):
            line = _log_line(raw)
            if line and (cursor is None or _ts_key(line.cursor) > _ts_key(cursor)):
                yield line
    except docker.errors.NotFound:
        return


def _age(container: Any) -> float:
    """Seconds since the container was created."""
    seconds, nanos = _ts_key(container.attrs["Created"][:30].rstrip("Z") + "Z")
    return time.time() - (seconds + nanos / 1e9)


def _path(spec: InstanceSpec) -> dict[str, str]:
    """PATH with the slug's executables first; a Dockerfile app keeps its image's."""
    return {} if spec.image else {"PATH": search_path("/app", spec.path, SYSTEM_PATH)}


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Whole lines from a stream of chunks (the last one even without its newline)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from lines
    if buffer:
        yield buffer


def _log_line(raw: bytes) -> LogLine | None:
    """'2026-11-23T21:00:03.123456789Z text' -> LogLine."""
    stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
    if not stamp.endswith("Z"):
        return None
    return LogLine(cursor=stamp, timestamp=stamp[:19] + "Z", text=text.rstrip("\r"))


def _ts_key(stamp: str) -> tuple[int, int]:
    """Docker's RFC 3339 nano timestamp as (unix seconds, nanoseconds), comparable."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds), int((frac + "000000000")[:9])


def _feed(sock: Any, stdin: Callable[[], bytes], tty: bool) -> None:
    """Copy stdin into the attached socket, then half-close it: the app sees EOF.
    Not on a pty: there Docker ends the whole attachment, output and all (a user
    ends a shell with exit or Ctrl-D, which are bytes like any other)."""
    raw = getattr(sock, "_sock", sock)
    try:
        while data := stdin():
            raw.sendall(data)
        if not tty:
            raw.shutdown(SHUT_WR)
    except OSError:
        pass  # the container ended first


def _resize(container: Any, cols: int, rows: int) -> None:
    """Give a one-off's pty the client's window size (0 x 0: the client did not say)."""
    if cols > 0 and rows > 0:
        with contextlib.suppress(docker.errors.DockerException):  # it may have ended
            container.resize(height=rows, width=cols)
