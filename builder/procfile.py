"""Reading a Procfile: one `type: command` per line, strictly."""

from __future__ import annotations

import re
from pathlib import Path

from builder.errors import BuildError

PROCESS_TYPE = re.compile(r"[a-z][a-z0-9_-]*")  # what a Procfile may name a type
_LINE = re.compile(rf"({PROCESS_TYPE.pattern}):[ \t]*(\S.*)")


def parse_procfile(text: str) -> dict[str, str]:
    """Process types of a Procfile, in file order. Blank lines and `#` comments are
    skipped; anything else that is not `type: command` is refused with its line
    number, so a typo never silently drops a process."""
    processes: dict[str, str] = {}
    # Notepad and some editors start UTF-8 files with a byte-order mark: not part
    # of the first type's name.
    text = text.removeprefix("\ufeff")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise BuildError(
                f"Procfile line {number}: expected 'type: command' with a type of "
                f"lowercase letters, digits, '-' or '_', got {line!r}"
            )
        ptype, command = match.groups()
        if ptype in processes:
            raise BuildError(f"Procfile line {number}: process type {ptype!r} is defined twice")
        processes[ptype] = command.strip()
    if not processes:
        raise BuildError("Procfile defines no process types: add a line like 'web: <command>'")
    return processes


def read_procfile(tree: Path) -> dict[str, str] | None:
    """The tree's Procfile parsed, or None when it has none."""
    path = tree / "Procfile"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BuildError("Procfile is not UTF-8 text") from None
    return parse_procfile(text)
