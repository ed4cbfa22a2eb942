"""The SSH front door: authenticate a public key, then hand the session's command
to git (`git-receive-pack` / `git-upload-pack`) or to the command table.

Nothing here reaches a shell: the command is split with shlex and dispatched.
Blocking work (dulwich, the node's methods) runs in worker threads; `ChannelIO`
gives those threads blocking reads and writes on the asyncssh channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from pathlib import Path

import asyncssh

from gitserver import commands
from gitserver.channel import WRITE_TIMEOUT, write_from_thread
from gitserver.service import NodeService
from peoplescloud.bridge import LoopBridge, in_thread
from peoplescloud.runtime.base import Terminal

log = logging.getLogger(__name__)

SHELL_MESSAGE = "This server runs commands, not shells: try `ssh ... help`.\n"

KEEPALIVE_SECONDS = 30
RECEIVE = "git-receive-pack"
UPLOAD = "git-upload-pack"
GIT_COMMANDS = {RECEIVE, UPLOAD}  # served by gitserver.git, loaded at the first one
MAX_UNKNOWN_KEYS = 3  # a connection's unknown keys recorded (clients offer several)


class ChannelIO:
    """One SSH session's stdin/stdout/stderr, usable from the event loop (`read`,
    `write`, `write_stderr`, `wait_closed`) and from worker threads (`read_blocking`,
    `write_blocking`), which is how dulwich and one-off processes talk to the client."""

    def __init__(self, process: asyncssh.SSHServerProcess, loop: asyncio.AbstractEventLoop):
        self._process = process
        self._bridge = LoopBridge(loop)
        self.terminal: Terminal | None = None
        if term := process.get_terminal_type():  # `ssh -t`: the client asked for a pty
            cols, rows, *_ = process.get_terminal_size()
            self.terminal = Terminal(term, cols, rows)
        # The client's terminal is raw under `ssh -t`: our own lines need "\r\n". A
        # command given the pty (`run`) sets this False: its pty translates.
        self.cooked = self.terminal is not None

    # --- on the event loop ------------------------------------------------------
    async def read(self, n: int) -> bytes:
        """Up to `n` bytes of stdin; b"" at EOF or when the client is gone. A window
        change of the client's pty is passed on to the command's."""
        while True:
            try:
                return await self._process.stdin.read(n)
            except asyncssh.TerminalSizeChanged as change:
                if self.terminal is not None:  # (a docker API call) before more input
                    await asyncio.to_thread(self.terminal.resize, change.width, change.height)
            except (asyncssh.Error, OSError):
                return b""

    def write(self, data: bytes) -> None:
        self._process.stdout.write(data.replace(b"\n", b"\r\n") if self.cooked else data)

    def write_stderr(self, data: bytes) -> None:
        self._process.stderr.write(data.replace(b"\n", b"\r\n") if self.cooked else data)

    async def drain(self) -> None:
        await self._process.stdout.drain()

    async def wait_closed(self) -> None:
        await self._process.wait_closed()

    # --- from a worker thread -----------------------------------------------------
    def read_blocking(self, n: int) -> bytes:
        """Exactly `n` bytes, fewer only at EOF: dulwich's `read(n)` contract."""
        return self._bridge.call(self._readexactly(n))

    def write_blocking(self, data: bytes) -> None:
        """Write and wait for the channel to take it (backpressure for big packs).
        A client that takes nothing for WRITE_TIMEOUT seconds is treated as gone
        (ConnectionError): a pusher that stopped reading cannot hold a push open."""
        write_from_thread(self._bridge, self, data, WRITE_TIMEOUT)  # ours: tests shorten it

    async def _readexactly(self, n: int) -> bytes:
        try:
            return await self._process.stdin.readexactly(n)
        except asyncio.IncompleteReadError as e:
            return e.partial


class _Server(asyncssh.SSHServer):
    """Public-key authentication only; the key names the user (the SSH user name
    is ignored). Every other hook keeps asyncssh's refusing default."""

    def __init__(self, service: NodeService):
        self._service = service
        self._conn: asyncssh.SSHServerConnection | None = None
        self._unknown: list[str] = []  # keys offered that nobody owns, for the audit trail
        self._authenticated = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def auth_completed(self) -> None:
        self._authenticated = True

    def connection_lost(self, exc: Exception | None) -> None:
        """A connection that never logged in: the keys it offered are refused logins
        (a client that logs in with its second key after an unknown first is not)."""
        if not self._authenticated and self._unknown:
            loop = asyncio.get_running_loop()
            for key in self._unknown:
                loop.run_in_executor(None, self._service.refused_login, key)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        openssh = key.export_public_key().decode().strip()
        user = await asyncio.to_thread(self._service.user_for_key, openssh)
        if user is None:
            log.info("refused key %s", key.get_fingerprint())
            if len(self._unknown) < MAX_UNKNOWN_KEYS:
                self._unknown.append(openssh)
            return False
        assert self._conn is not None
        self._conn.set_extra_info(pc_user=user)
        return True


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The node's ed25519 host key, generated (mode 0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        return key
    return asyncssh.read_private_key(path)


async def start_server(
    service: NodeService,
    host: str,
    port: int,
    host_key_path: Path,
    max_push_bytes: int = 200 * 1024 * 1024,
    max_unpacked_bytes: int = 500 * 1024 * 1024,
) -> asyncssh.SSHAcceptor:
    """Listen for SSH on host:port (port 0 picks a free one: see
    `acceptor.sockets[0].getsockname()`)."""
    host_key = await asyncio.to_thread(load_or_create_host_key, host_key_path)

    async def handle(process: asyncssh.SSHServerProcess) -> None:
        user = process.get_extra_info("pc_user")
        io = ChannelIO(process, asyncio.get_running_loop())
        try:
            limits = (max_push_bytes, max_unpacked_bytes)
            status = await _dispatch(service, user, process.command, io, *limits)
        except ConnectionError:  # BrokenPipeError included: the client left
            log.info("%s left while running %r", user, process.command)
            return
        except Exception:
            log.exception("session of %s running %r failed", user, process.command)
            with contextlib.suppress(OSError, asyncssh.Error):
                io.write_stderr(b" !     internal error; the node's log says more\n")
            status = 1
        process.exit(status)

    return await asyncssh.create_server(
        lambda: _Server(service),
        host,
        port,
        server_host_keys=[host_key],
        process_factory=handle,
        encoding=None,
        allow_pty=True,  # for `ssh -t … run APP bash`; no command gets a shell of ours
        agent_forwarding=False,
        x11_forwarding=False,
        line_editor=False,
        # A client that vanished (no FIN) is dropped after about 90 s, with what it
        # held open: a half-received push, a `logs -f`.
        keepalive_interval=KEEPALIVE_SECONDS,
        keepalive_count_max=3,
    )


async def _dispatch(
    service: NodeService,
    user: str,
    command: str | None,
    io: ChannelIO,
    max_push_bytes: int,
    max_unpacked_bytes: int,
) -> int:
    """Run one session's command; return its exit status."""
    if not command or not command.strip():
        io.write_stderr(SHELL_MESSAGE.encode())
        return 1
    try:
        argv = shlex.split(command)
    except ValueError as e:
        io.write_stderr(f" !     cannot split the command: {e}\n".encode())
        return 2
    if argv[0] in GIT_COMMANDS and len(argv) == 2:
        from gitserver import git  # dulwich loads with the first git command, not before

        return await in_thread(
            git.serve,
            service,
            user,
            argv[0],
            argv[1],
            io.read_blocking,
            io.write_blocking,
            max_push_bytes,
            max_unpacked_bytes,
        )
    return await commands.dispatch(service, user, argv, io)
