"""The stack images: one Debian release each, with its Python and Node.

bookworm (Python 3.11, Node 18, the default), trixie (3.13, Node 20), forky
(3.14, Node 24), and bullseye for Python 2.7 (with virtualenv from PyPI, which
still makes Python 2 environments; no Node).

No image registry answers on the hosts we target, so the image is built from
Debian's own packages: `debootstrap` makes a minimal root filesystem, `apt-get`
adds nodejs and npm inside a chroot (debootstrap cannot: bookworm's npm breaks
its configure order), and `docker import` turns the tree into an image. The
rootfs tarball is kept in a cache dir, so a fresh Docker engine re-imports the
image in seconds instead of rebuilding it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.versions import Offer
from peoplescloud.errors import PCError

# docker-py only where an image is looked up: a lone process-runtime node reads
# the stack table (which Python a push may ask for) and never the engine.
if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class Stack:
    """One stack: a Debian suite (also the image's tag) and what is put in it."""

    name: str
    python: str  # major.minor of the suite's Python, e.g. "3.11"
    node: str  # major of the suite's Node, "" when the stack has none
    packages: tuple[str, ...]  # installed by debootstrap
    extra: tuple[str, ...] = ()  # installed by apt-get in the chroot afterwards
    wheels: tuple[str, ...] = ()  # from PyPI into /opt/virtualenv (Python 2's virtualenv)
    wheels_python: str = ""  # the suite's Python 3, which runs them

    @property
    def offer(self) -> Offer:
        return Offer(self.name, self.python, self.node)


PY3_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
NODE_PACKAGES = ("nodejs", "npm")  # not by debootstrap: bookworm's npm breaks its configure order
STACKS = {
    s.name: s
    for s in (
        # virtualenv 20.21 is the last that makes Python 2 environments (it runs on
        # the suite's Python 3.9 and seeds them with pip 20.3.4, which supports 2.7).
        Stack(
            "bullseye",
            "2.7",
            "",
            ("python2.7", "python3", "python3-venv", "ca-certificates"),
            wheels=("virtualenv==20.21.1",),
            wheels_python="3.9",
        ),
        Stack("bookworm", "3.11", "18", PY3_PACKAGES, NODE_PACKAGES),
        Stack("trixie", "3.13", "20", PY3_PACKAGES, NODE_PACKAGES),
        Stack("forky", "3.14", "24", PY3_PACKAGES, NODE_PACKAGES),
    )
}
DEFAULT_STACK = "bookworm"  # what an app that asks for no version gets, as before stacks
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")
COMMON_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)
CHROOT_MOUNTS = {"proc": "proc", "sysfs": "sys", "devpts": "dev/pts"}  # fstype: mount point
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

Say = Callable[[str], None]


def image_exists(client: docker.DockerClient, image: str) -> bool:
    """True when the engine already has `image` (by name or id)."""
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def default_cache_dir() -> Path:
    """The user's cache dir, shared by every node home on this host: `~/.cache/peoplescloud`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peoplescloud"


def cached_rootfs(cache_dir: Path, stack: str = DEFAULT_STACK) -> Path:
    """Where a stack's rootfs tarball is kept between engines."""
    return Path(cache_dir) / f"stack-{stack}.tar"


def stack_named(name: str) -> Stack:
    """The stack called `name`, or a one-line error naming the known ones."""
    if name not in STACKS:
        raise PCError(f"no stack {name!r}: the stacks are {', '.join(STACKS)}")
    return STACKS[name]


def image_of(default_image: str, stack: str) -> str:
    """A stack's image name: the default stack's repository (`[build] stack_image`)
    tagged with the stack's name; the default stack is that image itself."""
    if stack == DEFAULT_STACK:
        return default_image
    return f"{split_tag(default_image)[0]}:{stack}"


def build_stack_image(
    client: docker.DockerClient,
    image: str,
    say: Say,
    cache_dir: Path,
    stack: str = DEFAULT_STACK,
    detail: Say | None = None,
) -> bool:
    """Make `image`, of the stack named `stack`, exist on the engine; False when
    it already did (nothing done).

    Imports the cached rootfs tarball when there is one, else builds it first
    (needs root, debootstrap and a reachable Debian mirror; a few minutes).
    The tools' own output goes to `detail` (default: `say`).
    """
    if image_exists(client, image):
        return False
    spec = stack_named(stack)
    tarball = cached_rootfs(cache_dir, stack)
    if tarball.exists():
        say(f"Using the cached root filesystem {tarball}")
    else:
        build_rootfs(tarball, say, spec, detail=detail)
    say(f"Importing {tarball} as {image}")
    repository, tag = split_tag(image)
    changes = [*COMMON_CHANGES, f"LABEL org.peoplescloud.stack={stack}"]
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag, changes=changes)
    if not image_exists(client, image):
        raise PCError(f"docker import of {tarball} did not produce {image}")
    say(f"Stack image {image} is ready")
    return True


def build_stack_images(
    client: docker.DockerClient, default_image: str, names: list[str], say: Say, cache_dir: Path
) -> list[str]:
    """Build the named stacks' images at once (debootstrap mostly waits on the
    mirror, so several overlap well); each line said is prefixed with its stack.
    Returns the images that were built; raises the first failure after all ended."""
    for name in names:
        stack_named(name)

    def one(name: str) -> str | None:
        image = image_of(default_image, name)
        built = build_stack_image(
            client, image, lambda line: say(f"{name}: {line}"), cache_dir, name
        )
        return image if built else None

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = [pool.submit(one, name) for name in names]
    return [image for f in futures if (image := f.result()) is not None]


def split_tag(image: str) -> tuple[str, str]:
    """`repo:tag` -> (repo, tag); no tag means `latest`. A registry's `host:port/` is no tag."""
    if ":" in image.rsplit("/", 1)[-1]:
        repository, _, tag = image.rpartition(":")
        return repository, tag
    return image, "latest"


def build_rootfs(
    tarball: Path, say: Say, stack: Stack, mirror: str | None = None, detail: Say | None = None
) -> None:
    """Build a stack's root filesystem with debootstrap and write it to `tarball`
    (the tools' output to `detail`, default `say`)."""
    out = detail or say
    if os.geteuid() != 0:
        raise PCError("building the stack image needs root (debootstrap and chroot); run as root")
    if not shutil.which("debootstrap"):
        raise PCError("debootstrap is missing: apt-get install -y debootstrap")
    mirror = mirror or debian_mirror(stack.name)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stack-", dir=tarball.parent))
    root = work / "root"
    try:
        if stack.wheels:  # before minutes of debootstrap
            say("Downloading " + " ".join(stack.wheels) + " from PyPI")
        wheels = _download_wheels(stack, work / "wheels", out)
        say(f"debootstrap {stack.name} from {mirror} (a few minutes)")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(stack.packages),
                stack.name,
                str(root),
                mirror,
                *_debootstrap_script(stack.name),
            ],
            out,
        )
        with chroot_mounts(root):
            if stack.extra:
                say("Installing " + " ".join(stack.extra) + " in the chroot")
                _install_in_chroot(root, out, stack.extra)
            if wheels is not None:
                say("Installing " + " ".join(stack.wheels) + " in /opt/virtualenv")
                _install_wheels(root, wheels, stack, out)
        _tidy(root)
        say(f"Writing {tarball}")
        partial = work / "rootfs.tar"  # this build's own: `pc stack build` may race a push
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], out)
        partial.replace(tarball)
    finally:
        _remove_tree(work)


def _debootstrap_script(suite: str) -> list[str]:
    """A suite newer than the host's debootstrap (forky on bookworm) is made by the
    script of `sid`, as debootstrap itself does for every suite after trixie."""
    if (DEBOOTSTRAP_SCRIPTS / suite).exists():
        return []
    return [str(DEBOOTSTRAP_SCRIPTS / "sid")]


def debian_mirror(suite: str = DEFAULT_STACK, sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The first Debian mirror the host's apt uses for the stack's suite (else
    for any suite: a mirror serves every release)."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for wanted in (suite, None):
        for path in files:
            text = path.read_text(errors="replace")
            read = _mirror_in_sources if path.suffix == ".sources" else _mirror_in_list
            found = read(text, wanted)
            if found:
                return found
    return DEFAULT_MIRROR


def _mirror_in_list(text: str, suite: str | None) -> str | None:
    """One-line format: `deb [opts] URI SUITE COMPONENTS...`; suite None: any
    of Debian's own (not -security, which is served elsewhere)."""
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and _suite_matches(words[2], suite):
            return words[1]
    return None


def _suite_matches(found: str, suite: str | None) -> bool:
    return found == suite if suite is not None else "/" not in found and "-" not in found


def _mirror_in_sources(text: str, suite: str | None) -> str | None:
    """deb822 format: stanzas of `Types:`, `URIs:`, `Suites:` separated by blank lines."""
    for stanza in re.split(r"\n\s*\n", text):
        keys: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            keys[key.strip().lower()] = value.split()
        enabled = keys.get("enabled", ["yes"]) != ["no"]
        suites = keys.get("suites", [])
        if (
            enabled
            and "deb" in keys.get("types", [])
            and any(_suite_matches(x, suite) for x in suites)
        ):
            uris = keys.get("uris", [])
            if uris:
                return uris[0]
    return None


@contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev/pts inside the chroot, always unmounted afterwards."""
    mounted: list[Path] = []
    try:
        for fstype, target in CHROOT_MOUNTS.items():
            point = root / target
            point.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", fstype, fstype, str(point)], check=True)
            mounted.append(point)
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)


def _install_in_chroot(root: Path, say: Say, packages: tuple[str, ...]) -> None:
    """apt-get install the packages debootstrap could not, with the host's DNS."""
    resolv = root / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    # Keep package scripts from starting services inside the chroot.
    policy = root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
    }
    # A testing suite's Release file says until when it is valid (a week); a host
    # clock ahead of the mirror's would refuse it. The signature is still checked.
    apt = ["chroot", str(root), "apt-get", "-o", "Dpkg::Use-Pty=0", "-q"]
    apt += ["-o", "Acquire::Check-Valid-Until=false"]
    _run([*apt, "update"], say, env=env)
    _run([*apt, "install", "-y", "--no-install-recommends", *packages], say, env=env)
    _run([*apt, "clean"], say, env=env)
    policy.unlink()
    resolv.unlink()


def _download_wheels(stack: Stack, dest: Path, say: Say) -> Path | None:
    """Fetch the stack's wheels from PyPI with the host's pip (the chroot has no
    proxy CA); None when the stack needs none."""
    if not stack.wheels:
        return None
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    argv += ["--only-binary=:all:", "--python-version", stack.wheels_python, "--dest", str(dest)]
    _run([*argv, *stack.wheels], say)
    return dest


def _install_wheels(root: Path, wheels: Path, stack: Stack, say: Say) -> None:
    """Install the wheels into a venv of the suite's Python 3 at /opt/virtualenv,
    offline, and put its `virtualenv` on PATH."""
    inside = root / "tmp" / "pc-wheels"
    shutil.copytree(wheels, inside)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    _run(["chroot", str(root), "python3", "-m", "venv", "/opt/virtualenv"], say, env=env)
    pip = ["chroot", str(root), "/opt/virtualenv/bin/pip", "install", "--quiet", "--no-index"]
    _run([*pip, "--find-links", "/tmp/pc-wheels", *stack.wheels], say, env=env)
    link = root / "usr" / "local" / "bin" / "virtualenv"
    link.symlink_to("/opt/virtualenv/bin/virtualenv")
    shutil.rmtree(inside)


def _tidy(root: Path) -> None:
    """Drop what the image does not need: apt lists and caches (apt-get update restores them)."""
    for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
        path = root / sub
        for child in path.iterdir() if path.is_dir() else ():
            if child.is_file():
                child.unlink()


def _remove_tree(work: Path) -> None:
    """Delete the build dir, but never through a mount that is still there."""
    if any(os.path.ismount(work / "root" / point) for point in CHROOT_MOUNTS.values()):
        raise PCError(f"{work} still has mounts; unmount them and delete it by hand")
    shutil.rmtree(work, ignore_errors=True)


def _run(cmd: list[str], say: Say, env: dict[str, str] | None = None) -> None:
    """Run `cmd`, passing each output line to `say`; raise PCError when it fails."""
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            say(line.rstrip("\n"))
            last = line.strip() or last
    if proc.returncode != 0:
        said = f" (it said: {last})" if last else ""
        raise PCError(f"{cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}{said}")
