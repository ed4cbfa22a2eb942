"""Node apps: `package.json`, dependencies in `node_modules`."""

from __future__ import annotations

from pathlib import Path

from builder.cache import cache_key, install_cached
from builder.errors import BuildError
from builder.executor import Config, Executor, Say
from builder.jsonfile import read_json

BIN_DIRS = ("node_modules/.bin",)  # put on PATH when the slug runs
NAME = "Node"
KIND = "node"
LOOKS_FOR = "package.json (Node)"
NOTHING_TO_RUN = 'add a "start" script to package.json or a Procfile'
MARKERS = ("package.json", "package-lock.json")
DEPENDENCY_FILES = ("package.json", "package-lock.json", ".npmrc")
# Dependency specs that name the app's own files, and the scripts npm runs in the
# app while installing: with any of them, what lands in node_modules may depend
# on any file of the app.
_LOCAL_SPECS = ("file:", "link:", "portal:", "workspace:", ".", "/", "~")
_INSTALL_SCRIPTS = ("preinstall", "install", "postinstall", "prepare", "prepublish")
_DEPENDENCY_FIELDS = (
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "overrides",
)


def detect(tree: Path) -> bool:
    return (tree / "package.json").is_file()


def default_processes(tree: Path) -> dict[str, str]:
    scripts = _package(tree).get("scripts")
    has_start = isinstance(scripts, dict) and isinstance(scripts.get("start"), str)
    return {"bot": "npm start"} if has_start else {}


def build(tree: Path, out: Path, cache: Path, executor: Executor, say: Say, config: Config) -> None:
    """Install the dependencies into `out/node_modules`: `npm ci` when there is a
    lock file (exactly what it says), else `npm install`."""
    command = "ci" if (tree / "package-lock.json").is_file() else "install"
    key = cache_key(executor.identity(), KIND, tree, DEPENDENCY_FILES, names_local_paths(tree))

    def run_install() -> None:
        executor.run(["npm", command, "--no-audit", "--no-fund"], out, cache, say)

    install_cached(
        cache,
        key,
        out / "node_modules",
        f"Installing dependencies (npm {command})",
        run_install,
        say,
    )


def names_local_paths(tree: Path) -> bool:
    """Whether package.json may make npm read files of the app itself: a local
    dependency (`file:./lib`), workspaces, or an install script of the app."""
    package = _package(tree)
    scripts = package.get("scripts")
    if isinstance(scripts, dict) and any(name in scripts for name in _INSTALL_SCRIPTS):
        return True
    if "workspaces" in package:
        return True
    for field in _DEPENDENCY_FIELDS:
        deps = package.get(field)
        if deps is None:
            continue
        if not isinstance(deps, dict):
            return True  # not the usual shape: do not guess
        for spec in _specs(deps):
            if spec.strip().startswith(_LOCAL_SPECS):
                return True
    return False


def _specs(deps: dict) -> list[str]:
    """Every version spec in a dependencies object (overrides nest)."""
    found: list[str] = []
    for value in deps.values():
        if isinstance(value, dict):
            found += _specs(value)
        else:
            found.append(str(value))
    return found


def _package(tree: Path) -> dict:
    package = read_json(tree / "package.json")
    if not isinstance(package, dict):
        raise BuildError("package.json should hold a JSON object")
    return package
