"""git over SSH with dulwich: `git-upload-pack` (clone, fetch) and
`git-receive-pack` (push), where a push to main or master deploys.

dulwich's hooks return their output only when they finish, and its pre-receive
runs before the pack is stored. So `DeployingReceivePack` uses the per-ref
`_on_update` step instead, which dulwich calls after the pack is stored and
before the ref moves: it deploys the new commit while each line reaches the
pusher on the progress side-band, and a failure leaves the ref where it was and
answers `ng <ref> <reason>`, so a stock `git push` exits non-zero.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from dulwich.errors import HangupException
from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID
from dulwich.protocol import SIDE_BAND_CHANNEL_PROGRESS, Protocol
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import (
    Backend,
    FileSystemBackend,
    ReceivePackHandler,
    UploadPackHandler,
)

from gitserver.packscan import PackScanner, PushTooLarge, mb
from gitserver.server import RECEIVE
from gitserver.service import NodeService
from peoplescloud.errors import PCError
from peoplescloud.locks import KeyedLocks

log = logging.getLogger(__name__)

DEPLOY_REFS = {Ref(b"refs/heads/main"), Ref(b"refs/heads/master")}

Deploy = Callable[[str, Callable[[str], None]], str]

_pushing = KeyedLocks()  # one receive-pack at a time per repo


def app_from_path(path: str) -> str:
    """`'/mybot'`, `'mybot.git'`, `'/mybot.git/'` -> `mybot` (the service checks the name)."""
    app = path.strip("/")
    return app.removesuffix(".git")


class LimitedReader:
    """`read(n)` that refuses (PushTooLarge) once more than `limit` bytes came in,
    so an oversized pack stops while it arrives."""

    def __init__(self, read: Callable[[int], bytes], limit: int):
        self._read = read
        self.limit = limit
        self.total = 0

    def __call__(self, n: int) -> bytes:
        data = self._read(n)
        self.total += len(data)
        if self.total > self.limit:
            raise PushTooLarge(
                f"push refused: larger than this node's limit of {mb(self.limit)} "
                "([build] max_push_mb); push less at a time or ask the host"
            )
        return data


class DeployingReceivePack(ReceivePackHandler):
    """receive-pack where main/master deploy before their ref moves (see the module doc)."""

    def __init__(
        self,
        backend: Backend,
        args: list[str],
        proto: Protocol,
        deploy: Deploy,
        max_unpacked: int = 500 * 1024 * 1024,
    ):
        """`max_unpacked`: the most bytes the pushed objects may unpack to."""
        super().__init__(backend, args, proto)
        self._deploy = deploy
        self._max_unpacked = max_unpacked
        self._say_lock = threading.Lock()
        self._client_gone = False

    def say(self, line: str) -> None:
        """One `remote: ` line on the pusher's screen, now. Never raises: a pusher who
        hung up must not break the deploy that is under way."""
        if self._client_gone or not self.has_capability(b"side-band-64k"):
            return
        data = line.rstrip("\n").encode("utf-8", "replace") + b"\n"
        with self._say_lock:
            try:
                self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, data)
            except Exception:
                self._client_gone = True

    def handle(self) -> None:
        super().handle()
        self._point_head()

    def _point_head(self) -> None:
        """A new bare repo's HEAD names a branch that may never exist (master when the
        app deploys main): point it at a deployed branch, so `git clone` checks it out."""
        refs = self.repo.refs.as_dict()
        if b"HEAD" in refs:
            return
        for branch in sorted(DEPLOY_REFS):
            if branch in refs:
                self.repo.refs.set_symbolic_ref(Ref(b"HEAD"), branch)
                return

    def _apply_pack(
        self, refs: list[tuple[ObjectID, ObjectID, Ref]]
    ) -> Iterator[tuple[bytes, bytes]]:
        # The pack is read here (the commands before it were read already): count
        # what its objects unpack to as it arrives.
        scanner, read = PackScanner(self._max_unpacked), self.proto.read
        self.proto.read = lambda n: scanner.feed(read(n))
        try:
            status = list(super()._apply_pack(refs))
        finally:
            self.proto.read = read
        unpack = status[0][1]
        if unpack != b"ok":
            # dulwich leaves its partial temp pack behind. Any temp pack is garbage
            # here: one push at a time per repo (see `serve`).
            # FileSystemBackend opens a dulwich Repo: its objects are on disk
            objects = Path(cast(DiskObjectStore, self.repo.object_store).path)
            for leftover in objects.glob("tmp_pack_*"):
                leftover.unlink(missing_ok=True)
            self.say(f" !     {unpack.decode('utf-8', 'replace')}")
            # Name each ref too, so git prints "[remote rejected]" for it.
            status += [(ref, b"unpacker error") for _, _, ref in refs]
        return iter(status)

    def _on_update(self, ref_name: Ref, old_sha: ObjectID, new_sha: ObjectID) -> bytes | None:
        """Called after the pack is stored, before `ref_name` moves: None lets it move,
        bytes refuse it with that reason."""
        deleting = new_sha == b"0" * len(new_sha)
        branch = ref_name.decode("utf-8", "replace").removeprefix("refs/heads/")
        if ref_name not in DEPLOY_REFS:
            if deleting:
                return None
            if not any(ref in DEPLOY_REFS for ref in self.repo.refs.as_dict()):
                # A new app exists once it deploys: other branches cannot hold it open.
                app = app_from_path(Path(cast(Repo, self.repo).path).name)
                reason = f"push main first: {app} has no deployed branch yet"
                self.say(f" !     {reason}")
                return reason.encode()
            self.say(f"-----> Stored {branch}, not deployed: only main or master deploy")
            return None
        if deleting:
            self.say(f" !     {branch} is the deployed branch: it cannot be deleted")
            return b"deleting the deployed branch is refused"
        try:
            self._deploy(new_sha.decode("ascii"), self.say)
        except PCError as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            self.say(f" !     {reason}")
            return reason.encode("utf-8", "replace")
        except Exception:
            log.exception("deploy of %s crashed", new_sha.decode("ascii"))
            self.say(" !     deploy failed: internal error (the node's log says more)")
            return b"deploy failed: internal error"
        return None


def serve(
    service: NodeService,
    user: str,
    command: str,
    path: str,
    read: Callable[[int], bytes],
    write: Callable[[bytes], None],
    max_push_bytes: int,
    max_unpacked_bytes: int = 500 * 1024 * 1024,
) -> int:
    """Serve one git command (`git-receive-pack` or `git-upload-pack`) for `path` on
    the blocking `read(n)` / `write(data)` of an SSH channel. Returns the exit status.
    Blocks: run it in a worker thread."""
    app = app_from_path(path)
    pushing = command == RECEIVE
    # Only a push sends much; refuse it once it passes the limit, while it arrives.
    proto = Protocol(LimitedReader(read, max_push_bytes) if pushing else read, write)
    try:
        repo = service.repo_for(user, app, write=pushing)
    except PCError as e:
        _refuse(proto, str(e))
        return e.exit_code
    backend = FileSystemBackend(str(repo.parent))  # open_repository wants a relative path
    if not pushing:
        return _handle(UploadPackHandler(backend, [repo.name], proto))

    with _pushing.try_hold(str(repo)) as free:
        if not free:
            _refuse(proto, f"another push to {app} is under way; try again when it ends")
            return 1
        deploy = functools.partial(service.deploy, user, app)  # (commit, say) -> release
        handler = DeployingReceivePack(backend, [repo.name], proto, deploy, max_unpacked_bytes)
        try:
            return _handle(handler)
        finally:
            service.push_ended(user, app)  # nothing deployed: nothing of the app stays


def _handle(handler: ReceivePackHandler | UploadPackHandler) -> int:
    """Run a dulwich handler to its end; a client that hangs up is not an error."""
    try:
        handler.handle()
        return 0
    except (HangupException, ConnectionError) as e:
        log.info("git client hung up: %s", e)
        return 1
    finally:
        cast(Repo, handler.repo).close()  # FileSystemBackend opens a dulwich Repo


def _refuse(proto: Protocol, reason: str) -> None:
    """Answer with git's `ERR` line instead of the ref advertisement: the client
    prints `fatal: remote error: <reason>` and exits non-zero."""
    proto.write_pkt_line(b"ERR " + " ".join(reason.split()).encode("utf-8", "replace"))
