"""The sandbox of the process runtime and of its builds: bubblewrap, with limits.

What a sandboxed process gets (everything else of the host is simply absent):
  - read-only: the system (/usr and the /bin, /lib links), a few files of /etc
    (`ETC`: TLS roots, name resolution, the dynamic linker's cache), a passwd
    and group naming only its own user, and what the caller lists (the slug);
  - writable: a private /tmp of `tmp_mb`, and what the caller lists (a build's dirs);
  - its own /dev, /proc, pid and IPC namespaces; the host's network;
  - a user namespace: uid 65534 inside, no capabilities, no further user namespaces;
  - the environment it is given and nothing else (`--clearenv`, the values read
    from a file descriptor, so they appear in no command line and never reach
    the programs that set the sandbox up: LD_PRELOAD acts on the app alone);
  - limits (`Limits`): data memory per process, file size, processes of its
    host uid, nice 10.

Two bubblewraps, because a root daemon's single bwrap with `--unshare-user`
leaves the app uid 0 on the host (bwrap maps the sandbox uid to its caller's),
while a bwrap started as an unprivileged uid cannot bind a slug that lies
under a home only root may enter. So when the daemon is root: the outer bwrap
(root, no user namespace) builds the allow-listed view, `setpriv` drops to the
host uid `uid` (no capabilities, empty bounding set, no_new_privs), and the
inner bwrap (that uid) makes the user namespace and sets the environment. A
daemon that is not root runs its apps as its own uid: the outer bwrap then
makes the user namespace itself.

Not isolated: the network. Apps share the host's, so they reach its loopback
services (kubo's RPC API, the node's ports): the process runtime therefore
does not isolate tenants (see `ProcessRuntime.capabilities`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

INSIDE_UID = 65534  # the app's uid and gid inside its user namespace
PASSWD = b"app:x:65534:65534:app:/tmp:/usr/sbin/nologin\n"
GROUP = b"app:x:65534:\n"
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",  # Debian's python3, node, ... may be links through here
    "/etc/os-release",  # what pip and others tell the index they run on
    "/etc/debian_version",
    "/etc/lsb-release",
)
MOUNTED = ("/", "/tmp", "/dev", "/proc", "/etc")  # made by the sandbox itself
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # what the setup programs get
NICE = 10


@dataclass(frozen=True)
class Limits:
    """What one sandboxed process tree may use; each 0 means not limited."""

    memory_mb: int = 0  # RLIMIT_DATA of each process (heap and private mappings)
    file_mb: int = 0  # RLIMIT_FSIZE: the largest file it may write
    pids: int = 0  # RLIMIT_NPROC: processes and threads of the sandbox's host uid
    tmp_mb: int = 256  # size of its private /tmp

    def prlimit(self) -> list[str]:
        """`nice` and `prlimit` in front of a command (both are util-linux / coreutils)."""
        argv = ["nice", "-n", str(NICE)]
        limits = []
        if self.memory_mb:
            limits.append(f"--data={self.memory_mb << 20}")
        if self.file_mb:
            limits.append(f"--fsize={self.file_mb << 20}")
        if self.pids:
            limits.append(f"--nproc={self.pids}")
        return [*argv, "prlimit", *limits, "--"] if limits else argv


@dataclass
class Launch:
    """What Popen needs to start a sandboxed command: `argv`, the setup's clean
    `env`, and `fds` to pass (files read by bwrap). `close()` once it started."""

    argv: list[str]
    env: dict[str, str]
    fds: tuple[int, ...] = ()
    files: list[IO[bytes]] = field(default_factory=list)

    def close(self) -> None:
        for f in self.files:
            f.close()


@dataclass(frozen=True)
class Sandbox:
    """bwrap at `bwrap`; `uid`: the host uid sandboxed processes run as when we are root."""

    bwrap: str
    uid: int = 65534

    def launch(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: Path,
        limits: Limits,
        readonly: Iterable[Path] = (),
        writable: Iterable[Path] = (),
        die_with_parent: bool = False,
    ) -> Launch:
        """Run `argv` in `cwd` with exactly `env`, seeing the system, `readonly`
        (read-only) and `writable`, each at its host path."""
        root = os.geteuid() == 0
        files = [data_file(PASSWD), data_file(GROUP), data_file(_nul_args(env))]
        passwd, group, values = (str(f.fileno()) for f in files)
        outer = [*limits.prlimit(), self.bwrap, "--unshare-pid", "--unshare-ipc"]
        outer += ["--die-with-parent"] if die_with_parent else []
        for path in SYSTEM:
            outer += _system_mount(path)
        outer += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700
        for path in ETC:
            if os.path.exists(path):
                outer += ["--ro-bind", path, path]
        outer += ["--perms", "0644", "--ro-bind-data", passwd, "/etc/passwd"]
        outer += ["--perms", "0644", "--ro-bind-data", group, "/etc/group"]
        outer += ["--dev", "/dev", "--proc", "/proc"]
        outer += ["--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
        made: set[str] = set()
        for flag, paths in (("--ro-bind", readonly), ("--bind", writable)):
            for mount in paths:
                real = str(Path(mount).resolve())
                outer += _parents(real, made) + [flag, real, real]
        inner = [self.bwrap, "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID)]
        inner += ["--dev-bind", "/", "/", "--disable-userns", "--cap-drop", "ALL"]
        # An instance's bwraps die of the SIGTERM sent to its group while the app
        # lives on to finish its shutdown: only one-offs and builds die with them.
        inner += ["--die-with-parent"] if die_with_parent else []
        inner += ["--chdir", str(Path(cwd).resolve())]
        inner += ["--clearenv", "--args", values, "--", *argv]
        if root:
            drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
            drop += ["--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
            command = [*outer, "--", *drop, *inner]
        else:  # an unprivileged bwrap makes mounts only in a user namespace of its own
            command = [*outer, "--unshare-user", "--", *inner]
        fds = tuple(f.fileno() for f in files)
        return Launch(command, dict(CLEAN_ENV), fds, files)

    def for_builds(self, limits: Limits) -> Callable[..., Launch]:
        """A `builder.executor.Jail`: build steps in this sandbox, owning what they write."""

        def jail(
            argv: Sequence[str],
            env: dict[str, str],
            cwd: Path,
            readonly: list[Path],
            writable: list[Path],
        ) -> Launch:
            self.chown(writable)
            return self.launch(argv, env, cwd, limits, readonly, writable, die_with_parent=True)

        return jail

    def chown(self, paths: Iterable[Path]) -> None:
        """Give `paths` (recursively) to the sandbox's uid, so a build may write them."""
        if os.geteuid() != 0:
            return  # ours already
        for top in paths:
            for where, dirs, names in os.walk(top):
                for name in (where, *(os.path.join(where, n) for n in (*dirs, *names))):
                    os.lchown(name, self.uid, self.uid)


def plain(argv: Sequence[str], env: dict[str, str], limits: Limits) -> Launch:
    """No sandbox: the command as it is, with `env` and what limits apply."""
    return Launch([*limits.prlimit(), *argv], dict(env))


def probe(uid: int) -> tuple[Sandbox | None, str]:
    """A sandbox if bubblewrap can make one here, else None and why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "no bubblewrap (apt-get install -y bubblewrap)"
    sandbox = Sandbox(bwrap, uid)
    launch = sandbox.launch(["true"], {}, Path("/"), Limits())
    try:
        done = subprocess.run(
            launch.argv, env=launch.env, pass_fds=launch.fds, capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"bubblewrap does not run here ({e})"
    finally:
        launch.close()
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {said[-1]}" if said else ""
        return None, f"bubblewrap cannot make a user namespace here{detail}"
    return sandbox, "bubblewrap"


def _system_mount(path: str) -> list[str]:
    """/bin, /lib, ... as the host has them: a link (merged /usr) or a directory."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def _parents(path: str, made: set[str]) -> list[str]:
    """`--dir` for each parent of a mount point not made yet: bwrap would make them
    0700 (root's), which the sandbox's uid could not pass through."""
    out: list[str] = []
    for parent in reversed([str(p) for p in Path(path).parents]):
        if parent in MOUNTED or parent in made or parent.startswith(SYSTEM):
            continue
        made.add(parent)
        out += ["--perms", "0755", "--dir", parent]
    return out


def _nul_args(env: dict[str, str]) -> bytes:
    """`--setenv NAME VALUE` for each variable, as bwrap's `--args` reads them."""
    out = b""
    for name, value in env.items():
        for part in ("--setenv", name, value):
            out += part.encode("utf-8", "surrogateescape") + b"\0"
    return out


def data_file(content: bytes) -> IO[bytes]:
    """An unnamed file holding `content`, at its start (bwrap reads it by descriptor)."""
    f = tempfile.TemporaryFile()  # noqa: SIM115 (Launch.close closes it)
    f.write(content)
    f.flush()
    f.seek(0)
    return f
