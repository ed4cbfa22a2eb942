"""Build steps as plain processes on this host, for nodes without Docker."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from builder.errors import BuildError
from builder.executor import (
    DOWNLOAD_CACHES,
    INDENT,
    Config,
    Deadline,
    Jail,
    Say,
    check_step,
    uv_binary,
    uv_environment,
)

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # the process runtime's too


class HostExecutor:
    """Runs each step as a subprocess in the slug directory, with the host's
    python3 and npm, in a clean environment: nothing of the daemon's reaches an
    install script. With a `jail` (the node's sandbox), a step sees only the
    system and writes only the slug and the download caches. The process
    runtime later runs the slug from another path, so installers' absolute
    paths are rewritten (see `slug_moves`)."""

    stack = "host"
    slug_moves = True

    def __init__(self, timeout: int = 900, ca_bundle: str = "", jail: Jail | None = None) -> None:
        self.timeout = timeout
        self.ca_bundle = ca_bundle
        self.jail = jail
        self._python: str | None = None
        self._node: str | None = None

    def identity(self) -> str:
        if self._node is None:
            try:
                found = subprocess.run(
                    ["node", "--version"], capture_output=True, text=True, env=_system_env()
                )
                self._node = found.stdout.strip()
            except OSError:
                self._node = "none"
        return f"host {platform.machine()} python {self.python_version()} node {self._node}"

    def python_version(self) -> str:
        if self._python is None:
            argv = ["python3", "-c", "import platform; print(platform.python_version())"]
            try:
                found = subprocess.run(
                    argv, capture_output=True, text=True, check=True, env=_system_env()
                )
            except (OSError, subprocess.CalledProcessError):
                raise BuildError("this host has no working python3") from None
            self._python = found.stdout.strip()
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
        downloads = [cache / name for name in DOWNLOAD_CACHES]
        env = {**(config or {})} | _system_env(
            HOME="/tmp",
            PIP_CACHE_DIR=str(cache / "pip"),
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
            npm_config_cache=str(cache / "npm"),
            npm_config_update_notifier="false",
            **uv_environment(str(cache / "uv")),
        )
        readonly = []
        if uv := uv_binary():
            # Last on PATH: the step's python3 stays the system's, not the node's venv.
            env["PATH"] = f"{SYSTEM_PATH}:{uv.parent}"
            readonly.append(uv)
        if self.ca_bundle and os.path.isfile(self.ca_bundle):
            readonly.append(Path(self.ca_bundle))
            for name in ("PIP_CERT", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
                env[name] = self.ca_bundle
        command, fds = list(argv), tuple[int, ...]()
        if self.jail is not None:
            for d in downloads:
                d.mkdir(parents=True, exist_ok=True)
            confined = self.jail(argv, env, app, readonly, [app, *downloads])
            command, env, fds = confined.argv, confined.env, confined.fds
        try:
            proc = subprocess.Popen(
                command,
                cwd=app,
                env=env,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a timeout kills the whole step
            )
        except OSError as e:
            raise BuildError(f"could not run '{' '.join(argv)}': {e.strerror}") from None
        finally:
            if self.jail is not None:
                confined.close()
        tail: deque[str] = deque(maxlen=30)
        with Deadline(self.timeout, lambda: os.killpg(proc.pid, signal.SIGKILL)) as deadline:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                tail.append(line)
                if line.strip():
                    say(INDENT + line)
            code = proc.wait()
        check_step(argv, code, tail, deadline, shown)


def _system_env(**more: str) -> dict[str, str]:
    """The environment of a step: the system's PATH and what the step needs."""
    return {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", **more}
