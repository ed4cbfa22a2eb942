"""The build itself: detect the kind, copy the source, install, name the processes."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from builder.cache import size_of
from builder.errors import BuildError
from builder.executor import DOWNLOAD_CACHES, Config, Executor, Say
from builder.kinds import ORDER, dockerfile
from builder.procfile import read_procfile
from builder.tree import check_tree

# Where a slug keeps its executables, relative to its top: runtimes put these
# first on PATH (kinds own their layout; runtimes never guess it).
SLUG_PATH: tuple[str, ...] = tuple(d for kind in ORDER for d in getattr(kind, "BIN_DIRS", ()))
# Slug paths that may be absolute symlinks, resolved where the app runs (a venv's
# interpreter); every other symlink must stay inside the slug.
SYSTEM_LINKS: tuple[str, ...] = tuple(
    p for kind in ORDER for p in getattr(kind, "SYSTEM_LINKS", ())
)
DEFAULT_MAX_SLUG_MB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class BuildResult:
    kind: str  # "python" | "node" | "procfile" | "dockerfile"
    stack: str  # image name used, or "host"
    processes: dict[str, str]  # type -> command line (a Procfile replaces the defaults)
    image: str = ""  # a Dockerfile app's image id (its slug is only a marker)
    user: str = ""  # "uid:gid" its instances run as ("": the runtime's own user)


def build(
    src: Path,
    out: Path,
    cache: Path,
    executor: Executor,
    say: Say,
    max_slug_mb: int = DEFAULT_MAX_SLUG_MB,
    config: Config | None = None,
    image_repo: str = "pc-app",
    archive_image: bool = False,
) -> BuildResult:
    """Build the checked-out tree `src` into the slug directory `out` (missing or
    empty): the source plus installed dependencies. `cache` is kept between builds
    of the same app, and of that app only (see `builder.cache.app_cache`). The
    slug is checked once built: no symlink out of it, at most `max_slug_mb`.
    `config` (the app's config vars) reaches the steps that run the app's own
    code, as on Heroku (Django's collectstatic reads its settings).
    A Dockerfile app is built into an image tagged `image_repo` instead, its
    slug a marker (and with `archive_image`, the saved image: see builder.image).
    Raises BuildError, with a reason the pusher can act on."""
    kind = kind_of(src)
    found = [name for name in (*kind.MARKERS, "Procfile") if (src / name).is_file()]
    say(f"-----> {kind.NAME} app detected ({', '.join(dict.fromkeys(found))})")
    if kind is dockerfile:
        return _build_image(src, out, executor, say, image_repo, archive_image)
    processes = processes_for(kind, src)
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"slug directory {out} is not empty")
    shutil.copytree(src, out, symlinks=True, dirs_exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        kind.build(src, out, cache, executor, say, config or {})
    finally:
        _trim_downloads(cache, max_slug_mb * MB)
    size = check_tree(out, system_links=SYSTEM_LINKS)
    if size > max_slug_mb * MB:
        raise BuildError(
            f"the built app is {size // MB} MB, more than the {max_slug_mb} MB this node "
            "allows ([build] max_slug_mb): leave data and build leftovers out of it"
        )
    say(f"-----> Process types: {', '.join(processes)}")
    return BuildResult(kind=kind.KIND, stack=executor.stack, processes=processes)


def _build_image(
    src: Path, out: Path, executor: Executor, say: Say, repo: str, archive: bool
) -> BuildResult:
    """A Dockerfile app: its Procfile's types run in the image, else the image's
    own command is the web process."""
    procfile = read_procfile(src)
    from builder.image import build_app  # docker-py: only a Dockerfile app needs it

    image = build_app(executor, src, out, repo, archive, say)
    processes = procfile or ({"web": image.command} if image.command else {})
    if not processes:
        raise BuildError(f"nothing to run: {dockerfile.NOTHING_TO_RUN}")
    say(f"-----> Process types: {', '.join(processes)}")
    # `stack` stays the node's stack name (the runtime does not use it for an image
    # app): whatever starts a release's stack still finds a real one.
    return BuildResult(dockerfile.KIND, executor.stack, processes, image.id, image.user)


def _trim_downloads(cache: Path, limit: int) -> None:
    """Empty the app's pip and npm download caches once they hold more than
    `limit` bytes: they only save downloads, and must not grow without bound."""
    for name in DOWNLOAD_CACHES:
        path = cache / name
        if path.is_dir() and not path.is_symlink() and size_of(path) > limit:
            shutil.rmtree(path, ignore_errors=True)


def kind_of(src: Path) -> ModuleType:
    """The kind that builds the tree: the Dockerfile when app.json asks for it,
    else the first of `ORDER` that recognises it."""
    return dockerfile if dockerfile.wanted(src) else detect(src)


def detect(tree: Path) -> ModuleType:
    """The first kind of `ORDER` that recognises the tree."""
    for kind in ORDER:
        if kind.detect(tree):
            return kind
    looked_for = ", ".join(kind.LOOKS_FOR for kind in ORDER)
    raise BuildError(f"no app found: looked for {looked_for}")


def processes_for(kind: ModuleType, tree: Path) -> dict[str, str]:
    """The app's process types: its Procfile when it has one, else the kind's defaults."""
    processes = read_procfile(tree)
    if processes is None:
        processes = kind.default_processes(tree)
    if not processes:
        raise BuildError(f"nothing to run: {kind.NOTHING_TO_RUN}")
    return processes
