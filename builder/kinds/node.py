"""Node apps: `package.json`, dependencies in `node_modules`."""

from __future__ import annotations

import json
from pathlib import Path

from builder.cache import cache_key, install_cached
from builder.errors import BuildError
from builder.executor import Executor, Say

BIN_DIRS = ("node_modules/.bin",)  # put on PATH when the slug runs
NAME = "Node"
KIND = "node"
LOOKS_FOR = "package.json (Node)"
NOTHING_TO_RUN = 'add a "start" script to package.json or a Procfile'
MARKERS = ("package.json", "package-lock.json")
DEPENDENCY_FILES = ("package.json", "package-lock.json")


def detect(tree: Path) -> bool:
    return (tree / "package.json").is_file()


def default_processes(tree: Path) -> dict[str, str]:
    scripts = _package(tree).get("scripts")
    has_start = isinstance(scripts, dict) and isinstance(scripts.get("start"), str)
    return {"bot": "npm start"} if has_start else {}


def build(tree: Path, out: Path, cache: Path, executor: Executor, say: Say) -> None:
    """Install the dependencies into `out/node_modules`: `npm ci` when there is a
    lock file (exactly what it says), else `npm install`."""
    command = "ci" if (tree / "package-lock.json").is_file() else "install"
    key = cache_key(executor.identity(), KIND, tree, DEPENDENCY_FILES)

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


def _package(tree: Path) -> dict:
    try:
        package = json.loads((tree / "package.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BuildError(f"package.json is not valid JSON: {e}") from None
    if not isinstance(package, dict):
        raise BuildError("package.json should hold a JSON object")
    return package
