"""Fuzzing the parsers users reach: the SSH command line (on a real Node with an
in-memory runtime) and the Procfile. Whatever comes in, the answer is a result
or one of the handled errors: never another exception, never "internal error".
Bounded: a few hundred examples each, no deadline (threads and files)."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder import BuildError
from builder.procfile import parse_procfile, read_procfile
from gitserver.commands import COMMANDS, Command, dispatch
from peoplescloud.service import Node
from tests.fakes import FakeBus
from tests.test_bounds import BlockingRuntime, make_node
from tests.test_commands import FakeChannel

BOUNDED = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class QuickChannel(FakeChannel):
    """A client that leaves as soon as it is waited for (ends `logs -f`, `run`)."""

    async def wait_closed(self) -> None:
        await asyncio.sleep(0.01)


class LogBus(FakeBus):
    """Empty logs; following waits for lines that never come, like the real bus."""

    def tail(self, app: str, lines: int, ptype: str | None) -> list[str]:
        return []

    async def follow(
        self, app: str, ptype: str | None = None, backlog: int = 0
    ) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""


@pytest.fixture
def node() -> Iterator[Node]:
    with tempfile.TemporaryDirectory() as tmp:
        node = make_node(Path(tmp))
        node.logbus = LogBus()  # type: ignore[assignment]
        runtime: BlockingRuntime = node.runtime  # type: ignore[assignment]
        runtime.release.set()  # one-offs end at once
        yield node


NAMES = [c.name for c in COMMANDS]
APPS = ["annbot", "bobbot", "ghost", "annbot\n", "", "²"]
# Values that broke the commands before, and others at the edges.
VALUE = st.sampled_from(["1", "0", "²", "٣", "9" * 40, "-1", "", "1.5", " 2", "bot", "web"])
NAME = st.sampled_from(["bot", "web", "LD_PRELOAD", "PATH", "X", "", "1A", "é"])
WORD = st.one_of(
    VALUE,
    NAME,
    st.sampled_from(["-n", "-f", "--ps", "--confirm", "--help", "-", *APPS, *NAMES[:3]]),
    st.text(max_size=10),
)
# What each word of a usage line ("APP [-n N] TYPE=N...") may be given.
SLOT = {
    "APP": st.sampled_from(APPS),
    "COMMAND": st.sampled_from(NAMES),
    "VERSION": st.one_of(VALUE, st.builds("v{}".format, VALUE)),
    "KEY": NAME,
    "TYPE": NAME,
    "N": VALUE,
}


def _slot(token: str) -> st.SearchStrategy[list[str]]:
    if token.startswith("["):
        inner = [_slot(t) for t in token.strip("[]").split()]
        return st.one_of(st.just([]), st.tuples(*inner).map(lambda ws: sum(ws, [])))
    if token.startswith("-"):
        return st.just([token])
    many = token.endswith("...")
    token = token.removesuffix("...")
    one = st.builds("{}={}".format, NAME, VALUE) if "=" in token else SLOT.get(token, WORD)
    return st.lists(one, min_size=1, max_size=3) if many else one.map(lambda w: [w])


def arguments(usage: str) -> st.SearchStrategy[list[str]]:
    """Words that follow a usage line, or nearly: one may be missing or extra."""
    tokens = re.findall(r"\[[^\]]*\]|\S+", usage)
    exact = st.tuples(*(_slot(t) for t in tokens)).map(lambda ws: sum(ws, []))
    return st.one_of(
        exact,
        st.tuples(exact, WORD).map(lambda x: [*x[0], x[1]]),
        exact.map(lambda ws: ws[:-1]),
    )


async def _dispatch(node: Node, user: str, argv: list[str]) -> tuple[int, bytes]:
    channel = QuickChannel()
    status = await asyncio.wait_for(dispatch(node, user, argv, channel), 30)
    return status, channel.stderr


def answered(status: int, stderr: bytes) -> None:
    assert isinstance(status, int)
    assert b"internal error" not in stderr
    if status:
        assert stderr.startswith(b" !     "), stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
@settings(BOUNDED, max_examples=40)
@given(user=st.sampled_from(["ann", "bob"]), data=st.data())
def test_each_command_answers_any_arguments(
    node: Node, command: Command, user: str, data: st.DataObject
) -> None:
    words = data.draw(arguments(command.args), label="words")
    answered(*asyncio.run(_dispatch(node, user, [command.name, *words])))


@BOUNDED
@given(argv=st.lists(st.one_of(st.sampled_from(NAMES), WORD), min_size=1, max_size=6))
def test_any_words_get_an_answer(node: Node, argv: list[str]) -> None:
    answered(*asyncio.run(_dispatch(node, "ann", argv)))


PROCFILE_CHARS = st.sampled_from(list("abwe019_-: \t#\n\r\x0b\x0c\x1c\x85\u2028é\x00web"))
PROCFILE_LINE = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,8}:[ \t]*\S.{0,10}", fullmatch=True),
    st.text(PROCFILE_CHARS, max_size=20),
)
TYPE = re.compile(r"[a-z][a-z0-9_-]*")


@BOUNDED
@given(lines=st.lists(PROCFILE_LINE, max_size=12), text=st.text(max_size=200))
def test_any_procfile_text_parses_or_is_refused(lines: list[str], text: str) -> None:
    for source in ("\n".join(lines), text):
        try:
            processes = parse_procfile(source)
        except BuildError as e:
            assert str(e)
            continue
        assert processes
        for ptype, command in processes.items():
            assert TYPE.fullmatch(ptype) and command == command.strip() and command


@BOUNDED
@given(data=st.binary(max_size=200))
def test_any_procfile_bytes_parse_or_are_refused(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Procfile").write_bytes(data)
        try:
            assert read_procfile(Path(tmp))
        except BuildError as e:
            assert str(e)
