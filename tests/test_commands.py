"""The SSH command table with a fake node: parsing, --help, exit codes, formats."""

from __future__ import annotations

import asyncio
import shlex
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import gitserver.channel
from gitserver.commands import COMMANDS, dispatch, node_table, parse_assignments
from gitserver.service import AppRow, NodeRow, PsRow, QuotaRow, ReleaseRow, ResourceRow
from peoplescloud.errors import Forbidden, NotFound, PCError, UsageError


class FakeChannel:
    """Collects stdout/stderr; stdin is given up front; `close()` is the client leaving."""

    def __init__(self, stdin: bytes = b""):
        self.stdout = b""
        self.stderr = b""
        self._stdin = stdin
        self._closed = asyncio.Event()
        self.terminal = None  # no pty asked for
        self.cooked = False

    async def read(self, n: int) -> bytes:
        data, self._stdin = self._stdin[:n], self._stdin[n:]
        return data

    def write(self, data: bytes) -> None:
        self.stdout += data

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data

    async def drain(self) -> None:
        pass

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()


class FakeNode:
    """Records every call as (method, args); answers with canned rows."""

    node_name = "node1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.vars = {"TOKEN": "abc=def", "MSG": "hi there"}
        self.log_stopped = False

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record

    def apps(self, user: str) -> list[AppRow]:
        return [
            AppRow("mybot", user, "v3", "running", "bot=1", "owner"),
            AppRow("a-much-longer-name", "bob (removed)", "-", "not deployed", "", "collaborator"),
        ]

    def ps(self, user: str, app: str) -> list[PsRow]:
        if app == "ghost":
            raise NotFound("no app named 'ghost'")
        if app == "theirs":
            raise Forbidden("theirs belongs to bob")
        return [
            PsRow("bot.1", "v3", "node1", "up", "2026-11-23T21:00:00Z", "python bot.py"),
            PsRow("web.1", "v3", "node2", "crashed", "2026-11-23T21:01:00Z", "gunicorn", "exit 1"),
        ]

    def config(self, user: str, app: str) -> dict[str, str]:
        return dict(self.vars)

    def releases(self, user: str, app: str) -> list[ReleaseRow]:
        return [
            ReleaseRow("v2", True, "Rollback to v1", "alice", "2026-11-23T21:02:00Z", "bafyslug2"),
            ReleaseRow("v1", False, "Deploy 1a2b3c4", "alice", "2026-11-23T21:00:00Z", "bafyslug1"),
        ]

    def rollback(self, user: str, app: str, version: str) -> str:
        self.calls.append(("rollback", (user, app, version)))
        return "v9"

    def quota(self, user: str, who: str | None = None) -> list[QuotaRow]:
        self.calls.append(("quota", (user, who)))
        if who == "bob":
            raise Forbidden("only an admin may see another user's quota; `quota` shows yours")
        return [
            QuotaRow("apps", "apps", 5, 2, "node default ([quotas])"),
            QuotaRow("instances", "process instances", 20, 3, f"set for {who or user}"),
        ]

    def resources(self, user: str, app: str) -> list[ResourceRow]:
        return [
            ResourceRow("bot", 512, 0.25, "node default"),
            ResourceRow("web", 256, 0.5, "set for web"),
        ]

    def resources_set(
        self, user: str, app: str, ptype: str | None, memory_mb: int | None, cpus: float | None
    ) -> str | None:
        self.calls.append(("resources_set", (user, app, ptype, memory_mb, cpus)))
        return "v4"

    def run(
        self,
        user: str,
        app: str,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None,
        cancel: threading.Event | None = None,
        terminal: object = None,
    ) -> int:
        assert stdin is not None
        received = b""
        while chunk := stdin():
            received += chunk
        output(b"got " + received + b"\n")
        return 42

    async def logs(
        self, user: str, app: str, lines: int, ptype: str | None, follow: bool
    ) -> AsyncIterator[str]:
        self.calls.append(("logs", (user, app, lines, ptype, follow)))
        if app == "ghost":
            raise NotFound("no app named 'ghost'")
        try:
            yield "line 1"
            if follow:
                yield "line 2"
                await asyncio.Event().wait()  # no more lines, ever
        finally:
            self.log_stopped = True


def call(command: str, node: FakeNode | None = None, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run one command line as the server would (shlex-split); (status, stdout, stderr)."""
    node = node or FakeNode()
    channel = FakeChannel(stdin)
    status = asyncio.run(dispatch(node, "alice", shlex.split(command), channel))
    return status, channel.stdout.decode(), channel.stderr.decode()


def test_every_command_has_help():
    for cmd in COMMANDS:
        status, out, err = call(f"{cmd.name} --help")
        assert status == 0 and err == ""
        assert out == f"{cmd.name}: {cmd.summary}\nusage: {cmd.name} {cmd.args}".rstrip() + "\n"


def test_help_lists_all_commands():
    status, out, _ = call("help")
    assert status == 0
    for cmd in COMMANDS:
        assert cmd.name in out and cmd.summary in out
    assert "config:set APP 'MSG=\"hi there\"'" in out  # how to quote values with spaces


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("logs", "missing APP"),
        ("logs mybot -n", "-n needs a value"),
        ("logs mybot -n lots", "-n needs a number"),
        ("logs mybot --bogus", "unexpected option '--bogus'"),
        ("ps", "missing APP"),
        ("ps mybot extra", "unexpected argument 'extra'"),
        ("ps:scale mybot", "missing TYPE=N"),
        ("ps:scale mybot web", "'web' is not TYPE=N"),
        ("ps:scale mybot web=-1", "web needs a number"),
        ("config:get mybot", "missing KEY"),
        ("config:set mybot", "missing KEY=VALUE"),
        ("config:set mybot NOVALUE", "'NOVALUE' is not KEY=VALUE"),
        ("config:set mybot =x", "'=x' is not KEY=VALUE"),
        ("config:unset mybot", "missing KEY"),
        ("rollback mybot 3", "'3' is not a release like v3"),
        ("run mybot", "missing CMD"),
        ("apps:destroy mybot", "repeat with --confirm mybot"),
        ("apps:create", "missing APP"),
        ("apps:create mybot extra", "unexpected argument 'extra'"),
        ("apps:destroy mybot --confirm other", "repeat with --confirm mybot"),
        ("quota ann extra", "unexpected argument 'extra'"),
        ("quota:set", "missing USER"),
        ("quota:set ann", "missing NAME=N"),
        ("quota:set ann apps", "'apps' is not NAME=N"),
        ("quota:set ann apps=lots", "apps needs a number"),
        ("resources", "missing APP"),
        ("resources:set mybot", "missing memory=SIZE or cpu=N"),
        ("resources:set mybot web", "missing memory=SIZE or cpu=N"),
        ("resources:set mybot disk=1G", "'disk=1G' is neither memory=SIZE nor cpu=N"),
        ("resources:set mybot memory=lots", "give megabytes or gigabytes, like 256M"),
        ("resources:set mybot cpu=half", "give a number of CPUs, like 0.5"),
    ],
)
def test_wrong_arguments_say_why_and_show_usage(command: str, reason: str):
    node = FakeNode()
    status, out, err = call(command, node)
    name = command.split()[0]
    usage = next(c.usage for c in COMMANDS if c.name == name)
    assert status == UsageError.exit_code == 2
    assert out == ""
    assert err.startswith(" !     ") and reason in err and usage in err
    assert node.calls == []  # nothing was done


def test_unknown_command_suggests_help_and_close_names():
    status, _, err = call("frobnicate")
    assert status == 2 and err.startswith(" !     unknown command 'frobnicate'") and "help" in err
    status, _, err = call("config:sett mybot A=1")
    assert status == 2 and "did you mean `config:set`?" in err
    status, _, err = call("help frobnicate")
    assert status == 2 and "unknown command" in err


def test_service_errors_become_their_exit_codes():
    status, out, err = call("ps ghost")
    assert (status, out, err) == (NotFound.exit_code, "", " !     no app named 'ghost'\n")
    status, _, err = call("ps theirs")
    assert status == Forbidden.exit_code == 4 and err == " !     theirs belongs to bob\n"
    status, _, err = call("logs ghost")
    assert status == 3 and "no app named 'ghost'" in err
    status, _, err = call("config:get mybot NOPE")
    assert status == 3 and "mybot has no config var NOPE" in err


def test_apps_is_an_aligned_table():
    status, out, _ = call("apps")
    lines = out.splitlines()
    head = ["NAME", "OWNER", "ROLE", "RELEASE", "STATE", "SCALE"]
    assert status == 0 and lines[0].split() == head
    assert lines[1].split() == ["mybot", "alice", "owner", "v3", "running", "bot=1"]
    assert lines[2].split("  ")[0:1] == ["a-much-longer-name"] and "bob (removed)" in lines[2]
    assert lines[2].split()[3:] == ["collaborator", "-", "not", "deployed", "-"]
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # OWNER column lines up


def test_ps_shows_states_and_why():
    status, out, _ = call("ps mybot")
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:2] == ["PROCESS", "STATE"]
    assert " up " in lines[1] and "python bot.py" in lines[1]
    assert "crashed (exit 1)" in lines[2]


def test_releases_mark_the_current_one():
    status, out, _ = call("releases mybot")
    lines = out.splitlines()
    assert status == 0
    assert lines[1].startswith("*") and "v2" in lines[1] and "Rollback to v1" in lines[1]
    assert lines[2].startswith(" ") and "v1" in lines[2]


def test_config_is_key_value_lines_and_get_prints_the_value():
    assert call("config mybot")[1] == "MSG=hi there\nTOKEN=abc=def\n"
    assert call("config:get mybot TOKEN")[1] == "abc=def\n"


def test_config_set_splits_at_the_first_equals_sign():
    node = FakeNode()
    # What `ssh host config:set mybot 'MSG="hi there"' URL=a=b` sends to the server.
    status, out, _ = call("""config:set mybot MSG="hi there" URL=a=b EMPTY=""", node)
    assert status == 0 and out.startswith("-----> Setting MSG, URL, EMPTY on mybot")
    assert node.calls == [
        ("config_set", ("alice", "mybot", {"MSG": "hi there", "URL": "a=b", "EMPTY": ""}))
    ]
    assert parse_assignments(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}


def test_commands_pass_their_arguments():
    node = FakeNode()
    for command in [
        "ps:scale mybot web=2 worker=0",
        "ps:restart mybot",
        "ps:restart mybot web",
        "ps:stop mybot",
        "ps:start mybot",
        "config:unset mybot A B",
        "apps:destroy mybot --confirm mybot",
        "apps:create newbot",
    ]:
        assert call(command, node)[0] == 0, command
    assert node.calls == [
        ("scale", ("alice", "mybot", {"web": 2, "worker": 0})),
        ("restart", ("alice", "mybot", None)),
        ("restart", ("alice", "mybot", "web")),
        ("stop", ("alice", "mybot")),
        ("start", ("alice", "mybot")),
        ("config_unset", ("alice", "mybot", ["A", "B"])),
        ("destroy", ("alice", "mybot")),
        ("create", ("alice", "newbot")),
    ]


def test_rollback_prints_the_new_release():
    node = FakeNode()
    status, out, _ = call("rollback mybot v1", node)
    assert status == 0 and "-----> Release v9 running" in out
    assert node.calls == [("rollback", ("alice", "mybot", "v1"))]


def test_run_streams_output_forwards_stdin_and_passes_the_exit_code():
    status, out, _ = call("run mybot python -c 'print(1)' --help", stdin=b"input")
    assert status == 42 and out == "got input\n"


def test_logs_options():
    node = FakeNode()
    status, out, _ = call("logs mybot -n 5 --ps web", node)
    assert status == 0 and out == "line 1\n"
    assert node.calls == [("logs", ("alice", "mybot", 5, "web", False))]
    assert call("logs mybot", node)[0] == 0
    assert node.calls[-1] == ("logs", ("alice", "mybot", 100, None, False))


def test_logs_follow_stops_when_the_client_leaves():
    node = FakeNode()
    channel = FakeChannel()

    async def scenario() -> int:
        task = asyncio.ensure_future(dispatch(node, "alice", ["logs", "mybot", "-f"], channel))
        while b"line 2" not in channel.stdout:  # the follower is now waiting for more
            await asyncio.sleep(0.01)
        channel.close()
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(scenario()) == 0
    assert channel.stdout == b"line 1\nline 2\n"
    assert node.log_stopped  # the log stream was closed, not left hanging


def test_version_names_the_node():
    status, out, _ = call("version")
    assert status == 0 and out.startswith("peoplescloud ") and "node1" in out


def test_run_ends_when_the_client_takes_nothing(monkeypatch: pytest.MonkeyPatch):
    """One-off output goes through the same write loop as git, with its timeout: a
    client that takes nothing is treated as gone, the rest is dropped and the
    process told to stop."""
    monkeypatch.setattr(gitserver.channel, "WRITE_TIMEOUT", 0.2)

    class StuckChannel(FakeChannel):
        async def drain(self) -> None:
            await asyncio.Event().wait()  # the client's window never opens again

    seen: dict[str, bool] = {}

    class Chatty(FakeNode):
        def run(
            self,
            user: str,
            app: str,
            argv: list[str],
            output: Callable[[bytes], None],
            stdin: Callable[[], bytes] | None,
            cancel: threading.Event | None = None,
            terminal: object = None,
        ) -> int:
            output(b"first\n")  # never taken
            output(b"second\n")  # dropped at once
            seen["cancelled"] = cancel is not None and cancel.is_set()
            return 0

    channel = StuckChannel()
    started = time.monotonic()
    status = asyncio.run(dispatch(Chatty(), "alice", ["run", "mybot", "chat"], channel))
    assert status == 0 and seen == {"cancelled": True}
    assert channel.stdout == b"first\n"
    assert time.monotonic() - started < 10


def test_node_table_lines_up_the_swarm_members():
    lines = node_table(
        [
            NodeRow("node1", "up", "10.0.0.1:7000", "2048 MB, 1 cpu, 20 apps", "512 MB, 1 app", 1),
            NodeRow("a-longer-node", "down", "10.0.0.2:7000", "-", "-", 0),
        ]
    )
    assert lines[0].split() == ["NODE", "STATE", "ADDRESS", "SHARES", "USES", "INSTANCES"]
    assert lines[2].split() == ["a-longer-node", "down", "10.0.0.2:7000", "-", "-", "0"]
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # STATE lines up


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("ps:scale mybot web=²", "web needs a number"),  # str.isdigit says yes, int() no
        ("ps:scale mybot web=٣", "web needs a number"),  # int() takes it: still refused
        ("logs mybot -n ²", "-n needs a number"),
        ("logs mybot -n ٣", "-n needs a number"),
        ("logs mybot -n 99999999999", "-n is at most 10000"),
        (f"logs mybot -n {10**30}", "-n is at most 10000"),
        ("rollback mybot v٣", "'v٣' is not a release like v3"),
    ],
)
def test_numbers_are_ascii_digits_within_bounds(command: str, reason: str):
    node = FakeNode()
    status, out, err = call(command, node)
    name = command.split()[0]
    usage = next(c.usage for c in COMMANDS if c.name == name)
    assert (status, out) == (UsageError.exit_code, "")
    assert err.startswith(" !     ") and reason in err and usage in err
    assert "Traceback" not in err and "internal error" not in err
    assert node.calls == []  # nothing was done


def test_the_largest_log_count_is_taken():
    node = FakeNode()
    assert call("logs mybot -n 10000", node)[0] == 0
    assert node.calls == [("logs", ("alice", "mybot", 10000, None, False))]


class RefusingNode(FakeNode):
    """A service whose checks refuse every change."""

    def scale(self, user: str, app: str, counts: dict[str, int]) -> None:
        raise UsageError("mybot has no process type 'nosuchtype'")

    def destroy(self, user: str, app: str) -> None:
        raise Forbidden("mybot belongs to bob")

    def rollback(self, user: str, app: str, version: str) -> str:
        raise NotFound("mybot has no release v7")

    def create(self, user: str, app: str) -> None:
        raise PCError(f"{app} is taken: choose another name")


@pytest.mark.parametrize(
    "command",
    [
        "ps:scale mybot nosuchtype=1",
        "apps:destroy mybot --confirm mybot",
        "rollback mybot v7",
        "apps:create mybot",
    ],
)
def test_no_progress_line_for_a_change_the_service_refuses(command: str):
    status, out, err = call(command, RefusingNode())
    assert status != 0 and err.startswith(" !     ")
    assert out == ""  # no progress line before the refusal


def test_progress_lines_of_changes_that_were_made():
    node = FakeNode()
    assert call("ps:scale mybot web=2 worker=0", node)[1] == "-----> Scaled mybot: web=2 worker=0\n"
    assert call("apps:destroy mybot --confirm mybot", node)[1] == "-----> Destroyed mybot\n"
    out = call("apps:create newbot", node)[1]
    assert out == "-----> Created newbot: set its config and scale, then push it\n"
    out = call("rollback mybot v1", node)[1]
    assert out == "-----> Rolled back mybot to v1\n-----> Release v9 running\n"


def test_keys_add_and_users_add_read_the_key_from_stdin():
    node = FakeNode()
    node.key_add = lambda user, text: node.calls.append(("key_add", (user, text))) or "SHA256:x"  # type: ignore[attr-defined]
    status, out, _ = call("keys:add", node, stdin=b"ssh-ed25519 AAAA me@laptop\n")
    assert status == 0 and out == "-----> Added key SHA256:x\n"
    assert node.calls == [("key_add", ("alice", "ssh-ed25519 AAAA me@laptop"))]
    status, out, _ = call("users:add eve --admin", node, stdin=b"ssh-ed25519 BBBB\n")
    assert status == 0 and "eve (admin) can now log in" in out
    assert node.calls[-1] == ("user_add", ("alice", "eve", "ssh-ed25519 BBBB", True))
    status, _, err = call("keys:add", node)  # nothing on stdin
    assert status == 2 and "no key on stdin" in err
    status, _, err = call("users:add eve", node, stdin=b"x" * 20000)
    assert status == 2 and "more than 16384 bytes" in err


def test_people_commands_call_the_node():
    node = FakeNode()
    for command, expected in [
        ("keys:remove SHA256:abc", ("key_remove", ("alice", "SHA256:abc"))),
        ("users:remove eve", ("user_remove", ("alice", "eve"))),
        ("sharing:add mybot bob", ("sharing_add", ("alice", "mybot", "bob"))),
        ("sharing:remove mybot bob", ("sharing_remove", ("alice", "mybot", "bob"))),
        ("apps:transfer mybot bob", ("transfer", ("alice", "mybot", "bob"))),
    ]:
        status, out, err = call(command, node)
        assert (status, err) == (0, "") and out.startswith("-----> ")
        assert node.calls[-1] == expected


def test_events_and_sharing_tables():
    from gitserver.service import EventRow, KeyRow, UserRow

    node = FakeNode()
    asked: list[tuple] = []

    def events(user: str, app: str | None, n: int) -> list[EventRow]:
        asked.append((app, n))
        return [EventRow("2026-11-23T21:00:00Z", "ann", "mybot", "config: Set TOKEN")]

    node.events = events  # type: ignore[attr-defined]
    node.sharing = lambda user, app: ["bob", "eve"]  # type: ignore[attr-defined]
    node.keys = lambda user: [KeyRow("SHA256:abc", "ssh-ed25519")]  # type: ignore[attr-defined]
    node.users = lambda user: [UserRow("ann", True, 2, 1)]  # type: ignore[attr-defined]
    status, out, _ = call("events mybot -n 5", node)
    assert status == 0 and out.splitlines()[1].split() == [
        "2026-11-23T21:00:00Z",
        "ann",
        "mybot",
        "config:",
        "Set",
        "TOKEN",
    ]
    assert call("events", node)[0] == 0 and asked == [("mybot", 5), (None, 50)]
    assert call("events -n 5000", node)[0] == 2
    assert call("sharing mybot", node)[1] == "bob\neve\n"
    assert call("keys", node)[1].splitlines()[1].split() == ["SHA256:abc", "ssh-ed25519"]
    assert call("users", node)[1].splitlines()[1].split() == ["ann", "yes", "2", "1"]


def test_quota_shows_limits_and_usage_and_quota_set_passes_the_numbers():
    node = FakeNode()
    status, out, _ = call("quota", node)
    assert status == 0
    assert out.splitlines() == [
        "QUOTA      USED  LIMIT  COUNTS             LIMIT FROM",
        "apps       2     5      apps               node default ([quotas])",
        "instances  3     20     process instances  set for alice",
    ]
    assert call("quota ann", node)[0] == 0
    status, out, err = call("quota bob", node)
    assert (status, out) == (Forbidden.exit_code, "")
    assert err == " !     only an admin may see another user's quota; `quota` shows yours\n"
    status, out, _ = call("quota:set ann apps=7 instances=20", node)
    assert (status, out) == (0, "-----> Quota of ann: apps=7 instances=20\n")
    assert node.calls == [
        ("quota", ("alice", None)),
        ("quota", ("alice", "ann")),
        ("quota", ("alice", "bob")),
        ("quota_set", ("alice", "ann", {"apps": 7, "instances": 20})),
    ]


def test_resources_shows_each_type_and_resources_set_parses_sizes():
    node = FakeNode()
    status, out, _ = call("resources mybot", node)
    assert status == 0
    assert out.splitlines() == [
        "TYPE  MEMORY  CPU   FROM",
        "bot   512 MB  0.25  node default",
        "web   256 MB  0.5   set for web",
    ]
    status, out, _ = call("resources:set mybot web memory=256M cpu=0.5", node)
    assert status == 0
    assert out == (
        "-----> Resources of mybot (web): memory=256 MB cpu=0.5\n"
        "-----> Release v4: restarting the app's processes\n"
    )
    for command in ("resources:set mybot memory=1G", "resources:set mybot cpu=.25 memory=300"):
        assert call(command, node)[0] == 0
    assert [c for c in node.calls if c[0] == "resources_set"] == [
        ("resources_set", ("alice", "mybot", "web", 256, 0.5)),
        ("resources_set", ("alice", "mybot", None, 1024, None)),
        ("resources_set", ("alice", "mybot", None, 300, 0.25)),
    ]
