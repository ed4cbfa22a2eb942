"""What a build step runs on: the contract shared by the Docker and host executors."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from builder.errors import BuildError

Say = Callable[[str], None]
Config = Mapping[str, str]  # the app's config vars, for the steps that read them

# Where a build step finds uv (installed with the node as a Python package, a
# static-enough binary in its wheel): the Docker executor mounts it here, the
# host executor puts its directory last on PATH. Either way the kinds call "uv".
UV_DIR_IN_CONTAINER = "/opt/pc/bin"

INDENT = " " * 7  # build output under a "-----> " line, Heroku style


class Executor(Protocol):
    """Runs build steps with the slug directory as the working directory.

    A step sees the slug as its current directory (`/app` in a container) and
    finds the pip and npm download caches through its environment, so the kinds
    write the same argv for every executor.
    """

    stack: str  # the image name, or "host"
    # True when the slug later runs at another path than the one it was built at
    # (the process runtime), so absolute paths written by installers must go.
    slug_moves: bool

    def identity(self) -> str:
        """What the installed dependencies depend on (image id, host versions):
        part of the dependency cache key."""
        ...

    def python_version(self) -> str:
        """The stack's Python, e.g. "3.11.2"."""
        ...

    def run(
        self,
        argv: Sequence[str],
        app: Path,
        cache: Path,
        say: Say,
        shown: str = "",
        config: Config | None = None,
    ) -> None:
        """Run one step in `app`, sending each output line to `say` as it comes.
        Raises BuildError on a non-zero exit or a timeout, naming the step as
        `shown` (default: its argv). `config`: the app's config vars, in the
        step's environment under the executor's own (PATH, HOME, caches)."""
        ...


def uv_binary() -> Path | None:
    """The uv binary installed beside the node, which Python builds use."""
    try:
        from uv import find_uv_bin  # a tiny module: only its path is needed

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def uv_environment(cache: str) -> dict[str, str]:
    """How uv runs in a build step: its cache in the app's own, files copied out
    of it (the slug is on another mount), only the stack's Python, plain output."""
    return {
        "UV_CACHE_DIR": cache,
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON_PREFERENCE": "only-system",
        "NO_COLOR": "1",
    }


DOWNLOAD_CACHES = ("pip", "npm", "uv")  # per app, mounted into every build step


class Confined(Protocol):
    """A command made ready to run in a sandbox: what Popen needs; `close()` after."""

    argv: list[str]
    env: dict[str, str]
    fds: tuple[int, ...]

    def close(self) -> None: ...


class Jail(Protocol):
    """Confines a build step on the host (the process runtime's sandbox, given by
    the node): `argv` in `cwd` with exactly `env`, seeing `readonly` and writing
    only `writable` besides its private /tmp."""

    def __call__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: Path,
        readonly: list[Path],
        writable: list[Path],
    ) -> Confined: ...


def last_meaningful(lines: Iterable[str]) -> str:
    """The last output line worth showing as the reason a step failed: pip and npm
    end with notices and log-file pointers that say nothing about the cause."""
    boring = ("[notice]", "npm ERR! A complete log", "npm error A complete log")
    best = ""
    for line in lines:
        text = line.strip().removeprefix("cause: ")  # uv: "error: …" then "cause: why"
        if text and not text.startswith(boring) and text not in ("npm ERR!", "npm error"):
            best = text
    return best


class Deadline:
    """Calls `kill` if the step is still running after `seconds` (a context manager
    around the step); `expired` tells afterwards whether it had to."""

    def __init__(self, seconds: float, kill: Callable[[], None]) -> None:
        self.seconds = seconds
        self.expired = False
        self._kill = kill
        self._timer = threading.Timer(seconds, self._fire)

    def _fire(self) -> None:
        self.expired = True
        with contextlib.suppress(Exception):  # it may have ended on its own meanwhile
            self._kill()

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def check_step(
    argv: Sequence[str], code: int, tail: Iterable[str], deadline: Deadline, shown: str = ""
) -> None:
    """Raise the BuildError a finished step deserves, if any."""
    step = shown or " ".join(argv)
    if deadline.expired:
        raise BuildError(f"'{step}' took longer than {deadline.seconds:g} s and was stopped")
    if code != 0:
        reason = last_meaningful(tail) or f"exit status {code}"
        raise BuildError(f"'{step}' failed: {reason}")
