"""The runtime contract, shared by every implementation.

Like Nomad's task drivers: a runtime knows how to start one process instance,
stop it, report what runs, give its output and run a one-off command. It keeps
no state the daemon must save: everything it needs to re-adopt its instances
after a daemon restart is on the instances themselves (container labels,
a handle file next to a process), so `status()` after a restart finds them.
Restart policy, log aggregation and placement live around the runtime, not in it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from peoplescloud.processes import ptype_of

# Labels every container (and every process handle) carries.
LABEL_NODE = "peoplescloud.node"
LABEL_APP = "peoplescloud.app"
LABEL_PROCESS = "peoplescloud.process"
LABEL_RELEASE = "peoplescloud.release"

WEB_PORT = 5000  # $PORT inside a container; the process runtime picks a free host port


class InstanceKey(NamedTuple):
    """Which instance: `bot.1` of release `v3` of app `mybot`. The release is part of
    it, so a new release's `web.1` can run beside the old one's while it takes over."""

    app: str
    process: str  # "<type>.<n>", e.g. "bot.1"
    release: str  # "v3"

    @property
    def slot(self) -> tuple[str, str]:
        """(app, process): the place the instance fills, whatever its release."""
        return (self.app, self.process)

    def __str__(self) -> str:
        return f"{self.app} {self.process} ({self.release})"


@dataclass(frozen=True)
class InstanceSpec:
    """One process instance to run: `bot.1` of release `v3` of app `mybot`."""

    app: str
    process: str  # "<type>.<n>", e.g. "bot.1"
    release: str  # "v3"
    command: str  # a shell command line from the Procfile, run by `sh -c`
    slug: Path  # the built app directory on this node (read-only to the app)
    node: str
    env: dict[str, str] = field(default_factory=dict)  # config vars of the app
    memory_mb: int = 512
    cpus: float = 0.25
    web: bool = False  # gets $PORT and an address the router can reach
    path: tuple[str, ...] = ()  # the slug's executable dirs, relative to it: first on PATH
    # A Dockerfile app's image id: it runs instead of the stack, without the slug
    # mounted (the slug holds the image's archive, for a node that lacks it).
    image: str = ""
    user: str = ""  # "uid:gid" for the image ("": the runtime's own unprivileged user)
    stack: str = ""  # the release's stack image ("" or "host": the runtime's default)

    @property
    def ptype(self) -> str:
        return ptype_of(self.process)

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.app, self.process, self.release)

    def environment(self, port: int | None) -> dict[str, str]:
        """Config vars plus what every instance gets; ours win over the user's."""
        env = dict(self.env)
        env.update(
            PC_APP=self.app,
            PC_PROCESS=self.process,
            PC_RELEASE=self.release,
            PC_NODE=self.node,
            HOME="/tmp",
            PYTHONUNBUFFERED="1",  # a bot's print() reaches the logs when it happens
        )
        if port is not None:
            env["PORT"] = str(port)
        return env

    def labels(self) -> dict[str, str]:
        return {
            LABEL_NODE: self.node,
            LABEL_APP: self.app,
            LABEL_PROCESS: self.process,
            LABEL_RELEASE: self.release,
        }


@dataclass(frozen=True)
class InstanceStatus:
    app: str
    process: str
    release: str
    running: bool
    exit_code: int | None = None  # when not running
    started_at: str = ""  # RFC 3339, UTC
    address: str | None = None  # "127.0.0.1:49153" for web instances the router can reach
    detail: str = ""  # runtime-specific: container id, pid
    oom_killed: bool = False  # it ended because it went over its memory limit

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.app, self.process, self.release)


@dataclass(frozen=True)
class LogLine:
    """One line of an instance's output. `cursor` resumes `logs()` after it."""

    cursor: str
    timestamp: str  # RFC 3339 UTC, second precision: "2026-11-23T21:00:03Z"
    text: str  # without the trailing newline


@dataclass
class Terminal:
    """The pty a client asked for (`ssh -t … run APP bash`): its type and size. A
    runtime that gives the command a pty sets `resize`, which the SSH server calls
    when the client's window changes."""

    term: str
    cols: int
    rows: int
    resize: Callable[[int, int], None] = lambda cols, rows: None


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can promise, declared rather than probed (like Nomad's
    `Capabilities()`): `isolates_tenants` when one user's app can neither read
    the host's secrets nor reach its local services nor other users' apps;
    `why` says what it is or lacks, in words a host can act on."""

    isolates_tenants: bool
    why: str

    def owner_only(self) -> str:
        """The sentence a node says where it runs only its host's apps."""
        return (
            f"this node runs only its host's apps (apps run as plain processes here: "
            f"{self.why}); ask the host for a node with Docker"
        )


# One simple command: no list, pipe, redirection, subshell or substitution (`;&|<>()`
# and backquotes stay out, even quoted: this errs on the side of the trap below).
_SIMPLE_COMMAND = re.compile(r"[A-Za-z0-9_./:@%+,=$'\"{}~*?\[\]# \t-]+")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# Built into sh, with no program of that name: `exec` would not find them.
_BUILTINS = frozenset(
    {".", ":", "alias", "bg", "break", "cd", "command", "continue", "eval", "exit", "export"}
    | {"fg", "getopts", "hash", "jobs", "local", "read", "readonly", "return", "set", "shift"}
    | {"times", "trap", "type", "ulimit", "umask", "unalias", "unset", "wait"}
)


def shell_script(command: str) -> str:
    """What `sh -c` runs for an instance's (Procfile) command.

    The instance is stopped with SIGTERM to its whole process group, the shell
    included. A simple command (`python bot.py`, `gunicorn app:app -b :$PORT`)
    replaces the shell (`exec`): the app alone gets the signal, and no shell is
    left to print `Terminated` into the app's log when the app dies of it. Any
    other command line runs under a shell that traps the signal, so that it waits
    for the app to finish its shutdown instead of ending first (the container, or
    the process runtime's watch, would end with it and cut the app short); that
    shell still reports an app killed by the signal, as sh does."""
    words = command.split()
    if words[:1] == ["exec"] and _SIMPLE_COMMAND.fullmatch(command):
        return command  # replaces the shell already
    if (
        _SIMPLE_COMMAND.fullmatch(command)
        and words
        and not _ASSIGNMENT.match(words[0])
        and words[0] not in _BUILTINS
    ):
        return f"exec {command}"
    return f"trap : TERM INT HUP; {command}"


def image_repo(node: str, app: str) -> str:
    """The repository a node tags a Dockerfile app's images with: the node's own,
    so that nodes sharing one engine each keep (and prune) only theirs."""
    return f"pc-{node}/{app}"


def search_path(slug: Path | str, dirs: tuple[str, ...], system: str) -> str:
    """$PATH for an instance: the slug's executable dirs first, then the system's."""
    return ":".join([*(f"{slug}/{d}" for d in dirs), system])


def on_set(event: threading.Event, action: Callable[[], None]) -> None:
    """Call `action` from a thread of its own once `event` is set (how a one-off
    `run` is ended when its client leaves). The caller sets `event` when the run
    is over in any case, so the thread ends; `action` must then do nothing."""

    def act_when_set() -> None:
        if event.wait():
            action()

    threading.Thread(target=act_when_set, daemon=True).start()


class Runtime(Protocol):
    name: str

    @property
    def capabilities(self) -> Capabilities:
        """What this runtime promises (see `Capabilities`)."""

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Start the instance; an exited instance with the same key is replaced."""

    def stop(self, key: InstanceKey, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout`; then forget the instance. No error if absent."""

    def status(self) -> list[InstanceStatus]:
        """Every instance of this node (running or exited), re-adopted after a restart."""

    def logs(self, key: InstanceKey, follow: bool, cursor: str | None) -> Iterator[LogLine]:
        """Output of one instance (stdout and stderr), from just after `cursor` (None: start).

        With `follow`, blocks for new lines and ends when the instance is gone.
        """

    def run(
        self,
        spec: InstanceSpec,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None = None,
        cancel: threading.Event | None = None,
        terminal: Terminal | None = None,
    ) -> int:
        """Run a one-off command in the app's environment; stream output; return its exit
        code. Setting `cancel` (the client left) kills it. With a `terminal` (the
        client asked for a pty) the command gets one, where the runtime can."""
