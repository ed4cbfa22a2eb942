"""The stack image: Debian bookworm with python3, venv, pip, nodejs and npm.

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
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

from peoplescloud.errors import PCError

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
EXTRA_PACKAGES = ("nodejs", "npm")
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "LABEL org.peoplescloud.stack=bookworm",
    'CMD ["/bin/bash"]',
)
CHROOT_MOUNTS = {"proc": "proc", "sysfs": "sys", "devpts": "dev/pts"}  # fstype: mount point
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

Say = Callable[[str], None]


def image_exists(client: docker.DockerClient, image: str) -> bool:
    """True when the engine already has `image` (by name or id)."""
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def default_cache_dir() -> Path:
    """The user's cache dir, shared by every node home on this host: `~/.cache/peoplescloud`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peoplescloud"


def cached_rootfs(cache_dir: Path) -> Path:
    """Where the stack's rootfs tarball is kept between engines."""
    return Path(cache_dir) / f"stack-{SUITE}.tar"


def build_stack_image(client: docker.DockerClient, image: str, say: Say, cache_dir: Path) -> bool:
    """Make `image` exist on the engine; False when it already did (nothing done).

    Imports the cached rootfs tarball when there is one, else builds it first
    (needs root, debootstrap and a reachable Debian mirror; a few minutes).
    """
    if image_exists(client, image):
        return False
    tarball = cached_rootfs(cache_dir)
    if tarball.exists():
        say(f"Using the cached root filesystem {tarball}")
    else:
        build_rootfs(tarball, say)
    say(f"Importing {tarball} as {image}")
    repository, tag = split_tag(image)
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tag, changes=list(IMAGE_CHANGES)
    )
    if not image_exists(client, image):
        raise PCError(f"docker import of {tarball} did not produce {image}")
    say(f"Stack image {image} is ready")
    return True


def split_tag(image: str) -> tuple[str, str]:
    """`repo:tag` -> (repo, tag); no tag means `latest`. A registry's `host:port/` is no tag."""
    if ":" in image.rsplit("/", 1)[-1]:
        repository, _, tag = image.rpartition(":")
        return repository, tag
    return image, "latest"


def build_rootfs(tarball: Path, say: Say, mirror: str | None = None) -> None:
    """Build the stack's root filesystem with debootstrap and write it to `tarball`."""
    if os.geteuid() != 0:
        raise PCError("building the stack image needs root (debootstrap and chroot); run as root")
    if not shutil.which("debootstrap"):
        raise PCError("debootstrap is missing: apt-get install -y debootstrap")
    mirror = mirror or debian_mirror()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stack-", dir=tarball.parent))
    root = work / "root"
    try:
        say(f"debootstrap {SUITE} from {mirror} (a minute or so)")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                SUITE,
                str(root),
                mirror,
            ],
            say,
        )
        say("Installing " + " ".join(EXTRA_PACKAGES) + " in the chroot")
        with chroot_mounts(root):
            _install_in_chroot(root, say)
        _tidy(root)
        say(f"Writing {tarball}")
        partial = tarball.with_suffix(".tar.partial")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], say)
        partial.replace(tarball)
    finally:
        _remove_tree(work)


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The first Debian mirror the host's apt uses for the stack's suite."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for path in files:
        text = path.read_text(errors="replace")
        found = _mirror_in_sources(text) if path.suffix == ".sources" else _mirror_in_list(text)
        if found:
            return found
    return DEFAULT_MIRROR


def _mirror_in_list(text: str) -> str | None:
    """One-line format: `deb [opts] URI SUITE COMPONENTS...`."""
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1]
    return None


def _mirror_in_sources(text: str) -> str | None:
    """deb822 format: stanzas of `Types:`, `URIs:`, `Suites:` separated by blank lines."""
    for stanza in re.split(r"\n\s*\n", text):
        keys: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            keys[key.strip().lower()] = value.split()
        enabled = keys.get("enabled", ["yes"]) != ["no"]
        if enabled and "deb" in keys.get("types", []) and SUITE in keys.get("suites", []):
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


def _install_in_chroot(root: Path, say: Say) -> None:
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
    apt = ["chroot", str(root), "apt-get", "-o", "Dpkg::Use-Pty=0", "-q"]
    _run([*apt, "update"], say, env=env)
    _run([*apt, "install", "-y", "--no-install-recommends", *EXTRA_PACKAGES], say, env=env)
    _run([*apt, "clean"], say, env=env)
    policy.unlink()
    resolv.unlink()


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
        for line in proc.stdout:
            say(line.rstrip("\n"))
    if proc.returncode != 0:
        raise PCError(f"{cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}")
