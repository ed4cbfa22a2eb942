"""The Store contract on a kubo daemon: slugs are UnixFS directories in the swarm's
private IPFS network.

What a round trip keeps: the tree (files, directories, empty ones too), file
contents, symlinks with their targets (absolute or relative, verbatim), and the
permission bits (0o777) of files and directories, stored as UnixFS 1.5 `mode`
(`add --preserve-mode`), so executables stay executable. What it drops:
mtimes (left out on purpose, so the same build gives the same CID), owners,
setuid/setgid/sticky bits, hard links (each becomes its own file; the blocks
are shared anyway), and special files (sockets, fifos, devices are skipped).
get() also clears group/other write bits (tarfile's "tar" filter).

`has(cid)` means "pinned on this node": what this node keeps for sure.
Unpinned blocks may still sit in the repo until kubo's GC removes them, so they
do not count.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from peoplescloud.errors import NotFound
from swarm.ipfs.api import KuboAPI, KuboError, KuboUnreachable

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 1 << 20
PIN_NAME = "peoplescloud-slug"  # labels this project's pins in `ipfs pin ls --names`


def _part(boundary: str, name: str, kind: str, mode: int | None) -> bytes:
    """The headers of one multipart entry in the form kubo's add reads
    (boxo/files/multipartfile.go): the path in `filename`, the mode in the form name."""
    form = "file" if mode is None else f"file?mode=0{mode:o}"
    quoted = quote(os.fsencode(name), safe="")
    return (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{form}"; filename="{quoted}"\r\n'
        f"Content-Type: {kind}\r\n\r\n"
    ).encode()


def multipart_tree(root: Path, boundary: str) -> Iterator[bytes]:
    """The directory `root` as one multipart body, read file by file (never all in memory).
    Each directory's entries follow it, which is the order kubo expects."""

    def walk(path: Path, name: str) -> Iterator[bytes]:
        yield _part(boundary, name, "application/x-directory", stat.S_IMODE(path.stat().st_mode))
        yield b"\r\n"
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            child = f"{name}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                yield _part(boundary, child, "application/symlink", None)
                yield os.readlink(entry.path).encode() + b"\r\n"
            elif stat.S_ISDIR(st.st_mode):
                yield from walk(Path(entry.path), child)
            elif stat.S_ISREG(st.st_mode):
                yield _part(boundary, child, "application/octet-stream", st.st_mode & 0o777)
                with open(entry.path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        yield chunk
                yield b"\r\n"

    yield from walk(root, root.name or "slug")
    yield f"--{boundary}--\r\n".encode()


class _StreamReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        view = memoryview(buffer)  # the reader hands a memoryview of bytes
        n = min(len(view), len(self._rest))
        view[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


class IpfsStore:
    """Slugs in kubo, through its RPC API at `api_url` (e.g. http://127.0.0.1:5001).

    `fetch_timeout` bounds how long pin() and get() look for blocks on peers.
    `ready_dir` holds slugs unpacked ahead of need (`prepare`): get() of one of
    them is a rename, so an instance that fails over here starts at once.
    Calls block: run them off the event loop.
    """

    name = "ipfs"

    def __init__(
        self, api_url: str, fetch_timeout: float = 120.0, ready_dir: Path | None = None
    ) -> None:
        self.api = KuboAPI(api_url)
        self.fetch_timeout = fetch_timeout
        self.ready_dir = ready_dir

    def close(self) -> None:
        self.api.close()

    def add(self, path: Path) -> str:
        """Add the tree at `path`, pinned, and return its CID. `path` is left in place."""
        boundary = secrets.token_hex(16)
        options = {
            "cid-version": 1,
            "preserve-mode": True,
            "pin": True,
            "pin-name": PIN_NAME,
            "quieter": True,
            "progress": False,
            "stream-channels": True,
        }
        with self.api.stream(
            "add",
            content=multipart_tree(Path(path), boundary),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            **options,
        ) as response:
            lines = [line for line in response.iter_lines() if line.strip()]
        if not lines:
            raise KuboError("kubo add answered nothing")
        last = json.loads(lines[-1])
        if "Hash" not in last:
            raise KuboError(f"kubo add failed: {last.get('Message', last)}")
        return last["Hash"]

    def _not_found(self, cid: str, error: KuboError) -> KuboError | NotFound:
        if isinstance(error, KuboUnreachable):
            return error
        return NotFound(
            f"slug {cid} could not be fetched from the swarm "
            f"within {self.fetch_timeout:.0f}s ({error})"
        )

    def fetch(self, cid: str) -> None:
        """Bring every block of `cid` into this node (from peers if needed), without pinning."""
        try:
            with self.api.stream(
                "refs", cid, recursive=True, unique=True, timeout=f"{self.fetch_timeout}s"
            ) as response:
                for line in response.iter_lines():
                    if line.strip() and (err := json.loads(line).get("Err")):
                        raise KuboError(err)
        except KuboError as e:
            raise self._not_found(cid, e) from None

    def get(self, cid: str, dest: Path) -> None:
        """Write the slug to `dest` (which must not exist yet): whole or not at all."""
        dest = Path(dest)
        if self.ready_dir is not None:
            with contextlib.suppress(FileNotFoundError):  # not prepared (or taken meanwhile)
                os.rename(self.ready_dir / cid, dest)  # the same file system: the node's home
                return
        self._unpack(cid, dest)

    def prepare(self, cid: str) -> None:
        """Unpack a slug this node pins into `ready_dir`, for a get() that cannot wait."""
        if self.ready_dir is None or (self.ready_dir / cid).exists():
            return
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        self._unpack(cid, self.ready_dir / cid)

    def prepared(self) -> set[str]:
        """The slugs unpacked in `ready_dir`."""
        if self.ready_dir is None or not self.ready_dir.is_dir():
            return set()
        return {d.name for d in self.ready_dir.iterdir() if not d.name.endswith(".partial")}

    def discard(self, cid: str) -> None:
        """Drop a slug's unpacked copy from `ready_dir`. Renamed first: a get() that
        takes it at the same moment gets all of it or none of it."""
        if self.ready_dir is None:
            return
        gone = self.ready_dir / f"{cid}.gone.partial"
        try:
            os.rename(self.ready_dir / cid, gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def _unpack(self, cid: str, dest: Path) -> None:
        self.fetch(cid)
        staging = dest.with_name(dest.name + ".partial")  # the slug GC leaves these alone
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with self.api.stream("get", cid, archive=True, offline=True) as resp:
                reader = io.BufferedReader(_StreamReader(resp.iter_bytes(CHUNK)), CHUNK)
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    tar.extractall(staging, filter="tar")
            (top,) = staging.iterdir()
            os.rename(top, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def pin(self, cid: str) -> None:
        """Pin `cid` here, fetching it from peers first when this node lacks blocks."""
        try:
            self.api.call(
                "pin/add", cid, recursive=True, name=PIN_NAME, timeout=f"{self.fetch_timeout}s"
            )
        except KuboError as e:
            raise self._not_found(cid, e) from None

    def unpin(self, cid: str) -> None:
        """Drop the pin (a no-op when absent); kubo's GC frees the blocks later."""
        if self.has(cid):
            self.api.call("pin/rm", cid, recursive=True)

    def pinned(self) -> set[str]:
        """Every slug this node pins (checked locally)."""
        keys = self.api.json("pin/ls", type="recursive", offline=True).get("Keys") or {}
        return set(keys)

    def has(self, cid: str) -> bool:
        """Whether this node pins `cid` (checked locally, never over the network)."""
        try:
            keys = self.api.json("pin/ls", cid, type="recursive", offline=True).get("Keys")
        except KuboError as e:
            if "not pinned" in str(e):
                return False
            raise
        return bool(keys)
