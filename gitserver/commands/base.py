"""What every command handler shares: its `Context`, the `Args` it parses, the
`Command` row of the table, and the output and parsing helpers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gitserver.channel import Channel
from gitserver.service import NodeService
from peoplescloud.bridge import in_pool
from peoplescloud.errors import UsageError


@dataclass
class Context:
    """What a handler works with: the node, who asks, and their channel."""

    service: NodeService
    user: str
    channel: Channel

    def out(self, line: str = "") -> None:
        """One line of stdout."""
        self.channel.write(line.encode() + b"\n")

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """A blocking service method, off the event loop."""
        return await in_pool(method, self.user, *args)


class Args:
    """The words after the command name. Options are taken out first (anywhere),
    then positionals left to right; leftovers or mistakes raise UsageError."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)

    def flag(self, *names: str) -> bool:
        """Whether any of `names` was given (each taken out)."""
        found = False
        for name in names:
            while name in self.words:
                self.words.remove(name)
                found = True
        return found

    def option(self, *names: str) -> str | None:
        """The value after the first of `names` given, or None."""
        for name in names:
            if name in self.words:
                i = self.words.index(name)
                if i + 1 >= len(self.words):
                    raise UsageError(f"{name} needs a value")
                value = self.words[i + 1]
                del self.words[i : i + 2]
                return value
        return None

    def word(self, what: str) -> str:
        """The next positional, `what` naming it in the error when missing."""
        if not self.words:
            raise UsageError(f"missing {what}")
        if self.words[0].startswith("-"):
            raise UsageError(f"unknown option {self.words[0]}")
        return self.words.pop(0)

    def rest(self) -> list[str]:
        """All the words left, untouched."""
        rest, self.words = self.words, []
        return rest

    def done(self) -> None:
        """Refuse any word left over."""
        if self.words:
            what = "option" if self.words[0].startswith("-") else "argument"
            raise UsageError(f"unexpected {what} {self.words[0]!r}")


Handler = Callable[[Context, Args], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One row of the command table."""

    name: str
    args: str  # the usage after the name: "APP KEY=VALUE..."
    summary: str
    handler: Handler
    verbatim: bool = False  # words after APP are passed on untouched (`run`)

    @property
    def usage(self) -> str:
        return f"usage: {self.name} {self.args}".rstrip()


# --- output ----------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    ]


# --- parsing ---------------------------------------------------------------------------
def count(text: str, what: str, most: int = 1_000_000) -> int:
    """`text` as a number from 0 to `most`; `what` names it in the error. ASCII
    digits only: `str.isdigit` also takes "²" and "٣", which are no counts here."""
    if not re.fullmatch(r"[0-9]+", text):
        raise UsageError(f"{what} needs a number >= 0, not {text!r}")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(most)) or int(digits) > most:  # no int() of a huge string
        raise UsageError(f"{what} is at most {most}, not {text}")
    return int(digits)


def parse_assignments(words: Sequence[str], what: str = "KEY=VALUE") -> dict[str, str]:
    """`["A=1", "B=x=y"]` -> `{"A": "1", "B": "x=y"}`: split at the first `=`."""
    values = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UsageError(f"{word!r} is not {what}")
        values[key] = value
    if not values:
        raise UsageError(f"missing {what}")
    return values


def parse_counts(words: Sequence[str], what: str) -> dict[str, int]:
    """`["web=2", "bot=0"]` -> `{"web": 2, "bot": 0}` (`what`: "TYPE=N", "NAME=N")."""
    return {name: count(n, name) for name, n in parse_assignments(words, what).items()}
