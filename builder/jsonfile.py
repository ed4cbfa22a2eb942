"""JSON files of the pushed tree (package.json, app.json), read one way: a file
that is not valid JSON fails the push with its line and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.errors import BuildError


def read_json(path: Path) -> Any:
    """The file's JSON value (a UTF-8 byte-order mark is allowed); BuildError
    naming the file, line and column when it is no JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise BuildError(f"{path.name} is not UTF-8 text: save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise BuildError(
            f"{path.name} line {e.lineno} column {e.colno}: {e.msg}; fix the JSON and push again"
        ) from None
