"""Apps with only a Procfile: nothing to install, the commands say it all."""

from __future__ import annotations

from pathlib import Path

from builder.executor import Config, Executor, Say

NAME = "Procfile"
KIND = "procfile"
LOOKS_FOR = "Procfile"
NOTHING_TO_RUN = "add a line like 'web: <command>' to the Procfile"
MARKERS = ("Procfile",)


def detect(tree: Path) -> bool:
    return (tree / "Procfile").is_file()


def default_processes(tree: Path) -> dict[str, str]:
    return {}  # the Procfile is the whole list


def build(tree: Path, out: Path, cache: Path, executor: Executor, say: Say, config: Config) -> None:
    """Nothing to do: the slug is the source tree."""
