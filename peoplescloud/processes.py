"""Process names: an instance of type `web` is `web.1`, `web.2`, ... One place
knows the shape, so nobody parses it by hand."""

from __future__ import annotations

from collections.abc import Mapping


def process_name(ptype: str, n: int) -> str:
    return f"{ptype}.{n}"


def ptype_of(process: str) -> str:
    """'web.2' -> 'web'."""
    return process.rsplit(".", 1)[0]


def is_web(process: str) -> bool:
    return ptype_of(process) == "web"


def process_names(scale: Mapping[str, int]) -> list[str]:
    """{'web': 2, 'bot': 1} -> ['web.1', 'web.2', 'bot.1'] (in the scale's order)."""
    return [process_name(ptype, n) for ptype, count in scale.items() for n in range(1, count + 1)]
