"""pc-shim: the small static program that supervises each instance (`pc-shim.c`).

Both runtimes put it next to every instance instead of a Python interpreter:
the process runtime runs each app under it (log capture and rotation, the lease,
the exit code), the docker runtime makes it each container's init (the lease,
signals, reaping). About 1 MB of memory where Python took 12 to 15.

It is built from its C source with the system compiler (`cc -static -Os`) the
first time a node needs it, and cached under the source's hash in
`~/.cache/peoplescloud/bin` (`$PC_CACHE_DIR/bin`), as scripts/install-kubo
caches kubo; `python -m peoplescloud.runtime.shim` builds it ahead (scripts/test
and scripts/start-node do). A static binary runs in any container image.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime import lease

SOURCE = Path(__file__).with_name("pc-shim.c")
COMPILERS = ("cc", "gcc", "clang")
INSTALL = "apt-get install -y gcc libc6-dev"  # a C compiler and the static C library


def cache_dir() -> Path:
    """Where built programs are kept (the same place as scripts/install-kubo's)."""
    return Path(os.environ.get("PC_CACHE_DIR") or Path.home() / ".cache" / "peoplescloud")


@functools.cache
def binary() -> Path:
    """The built pc-shim for this source, built now if it is not cached yet."""
    source = SOURCE.read_bytes()
    path = cache_dir() / "bin" / f"pc-shim-{hashlib.sha256(source).hexdigest()[:12]}"
    if not path.exists():
        build(path)
    return path


def build(path: Path) -> None:
    """Compile the source into `path`, atomically: nodes building at once both win."""
    compiler = next(filter(None, map(shutil.which, COMPILERS)), None)
    if compiler is None:
        raise RuntimeFailure(f"no C compiler to build the instance shim: {INSTALL}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeFailure(
            f"cannot keep the instance shim in {path.parent} ({e}): "
            "set PC_CACHE_DIR to a directory this user may write"
        ) from None
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    argv = [compiler, "-static", "-Os", "-s", "-o", str(partial), str(SOURCE)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeFailure(f"could not build the instance shim ({e}): {INSTALL}") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        detail = f" ({said[-1]})" if said else ""
        partial.unlink(missing_ok=True)
        raise RuntimeFailure(f"could not build the instance shim{detail}: {INSTALL}")
    partial.chmod(0o755)  # a container's uid runs it, bind-mounted
    partial.replace(path)


def command(
    program: str,
    process: str,
    lease_dir: str,
    *,
    init: bool = False,
    log: Path | None = None,
    first_log: int = 0,
    log_bytes: int = 0,
    exit_file: Path | None = None,
    env_fd: int | None = None,
) -> list[str]:
    """pc-shim's argv up to its `--` (the command follows): `program` is where it is
    (on the host or in a container), `lease_dir` "" for none. See pc-shim.c."""
    argv = [program, "-L", lease_dir, "-p", process]
    argv += ["-c", str(lease.CHECK_EVERY), "-g", str(lease.GRACE)]
    argv += ["-i"] if init else []
    if log is not None:
        argv += ["-o", str(log), "-n", str(first_log), "-r", str(log_bytes)]
    argv += ["-x", str(exit_file)] if exit_file is not None else []
    argv += ["-e", str(env_fd)] if env_fd is not None else []
    return [*argv, "--"]
