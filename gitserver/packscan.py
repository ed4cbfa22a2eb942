"""What a pack unpacks to, known while it arrives.

A pack is small when it compresses well: 1 MB of pack can hold 1 GiB of zeros,
which dulwich would inflate into memory and a build would write out. Every
object in a pack says its size in its header, before its data, and a delta says
the size of the object it makes in its first bytes: `PackScanner` follows the
stream as it is read, adds these up, and refuses (`PushTooLarge`) as soon as the
total passes the limit, before dulwich has inflated the object that passes it.

It only counts; checking the pack is dulwich's job. A stream it cannot follow
(not a pack, or a malformed object) is left to dulwich to refuse.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

OFS_DELTA, REF_DELTA = 6, 7
_CHUNK = 64 * 1024  # most bytes inflated at once: our memory stays this small


class PushTooLarge(OSError):
    """The pushed data passed the node's limit. An OSError so dulwich reports it
    as the unpack status, like its own errors."""


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB" if n >= 1024 * 1024 else f"{n} bytes"


class PackScanner:
    """`feed(data)` each piece of a pack stream in order; raises PushTooLarge once
    the objects seen so far unpack to more than `limit` bytes."""

    def __init__(self, limit: int, hash_size: int = 20) -> None:
        self.limit = limit
        self.total = 0  # bytes the objects seen so far unpack to
        self._hash_size = hash_size
        self._buf = bytearray()
        self._step: Callable[[], bool] = self._pack_header
        self._objects_left = 0
        self._type = 0
        self._size = 0  # the current object's size (a delta's: the delta's own)
        self._inflate: zlib._Decompress | None = None
        self._produced = 0
        self._delta_head = b""  # a delta's first inflated bytes, until its sizes are read
        self._want_target = False  # a delta whose target size is not read yet

    def feed(self, data: bytes) -> bytes:
        """Follow `data`; returns it unchanged, so a read can be wrapped."""
        self._buf += data
        while self._step():
            pass
        return data

    def _add(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise PushTooLarge(
                f"push refused: its files unpack to more than {mb(self.limit)}, this node's "
                "[build] max_tree_mb; keep large or generated files out of git"
            )

    # Each step consumes what it can from the buffer and says whether to go on.
    def _pack_header(self) -> bool:
        if len(self._buf) < 12:
            return False
        if self._buf[:4] != b"PACK":
            return self._give_up()
        self._objects_left = int.from_bytes(self._buf[8:12], "big")
        del self._buf[:12]
        self._step = self._object_header if self._objects_left else self._give_up
        return True

    def _object_header(self) -> bool:
        end = _varint_end(self._buf)
        if end is None:
            return False if len(self._buf) < 10 else self._give_up()
        first = self._buf[0]
        self._type = (first >> 4) & 7
        size, shift = first & 0x0F, 4
        for byte in self._buf[1:end]:
            size |= (byte & 0x7F) << shift
            shift += 7
        del self._buf[:end]
        self._size = size
        self._add(size)  # before a byte of it is inflated, by dulwich or here
        self._step = {OFS_DELTA: self._ofs_base, REF_DELTA: self._ref_base}.get(
            self._type, self._data
        )
        return True

    def _ofs_base(self) -> bool:
        end = _varint_end(self._buf)
        if end is None:
            return False if len(self._buf) < 10 else self._give_up()
        del self._buf[:end]
        self._step = self._data
        return True

    def _ref_base(self) -> bool:
        if len(self._buf) < self._hash_size:
            return False
        del self._buf[: self._hash_size]
        self._step = self._data
        return True

    def _data(self) -> bool:
        """Inflate the object's data (to find where it ends), a chunk at a time."""
        if self._inflate is None:
            self._inflate, self._produced, self._delta_head = zlib.decompressobj(), 0, b""
            self._want_target = self._type in (OFS_DELTA, REF_DELTA)
        data, self._buf = bytes(self._buf), bytearray()
        inflate = self._inflate
        while True:
            try:
                out = inflate.decompress(data, _CHUNK)
            except zlib.error:
                return self._give_up()
            data = inflate.unconsumed_tail
            self._produced += len(out)
            if self._produced > self._size:
                return self._give_up()  # not what its header said: dulwich refuses it
            if self._want_target:
                self._delta_sizes(out)
            if inflate.eof:
                self._buf = bytearray(inflate.unused_data)
                self._inflate = None
                self._objects_left -= 1
                self._step = self._object_header if self._objects_left else self._give_up
                return True
            if not data and not out:
                return False  # wants more input

    def _delta_sizes(self, out: bytes) -> None:
        """A delta starts with the size of its base, then of the object it makes."""
        head = self._delta_head + out[:40]
        first = _varint_end(head)
        second = _varint_end(head[first:]) if first is not None else None
        if first is None or second is None:
            self._delta_head = head
            return
        target = _varint(head[first : first + second])
        self._want_target = False
        self._add(max(0, target - self._size))  # the delta itself was counted already

    def _give_up(self) -> bool:
        """Stop following (the pack's end, or a stream dulwich will refuse)."""
        self._buf.clear()
        self._step = self._give_up
        return False


def _varint_end(data: bytes | bytearray) -> int | None:
    """The length of the little-endian base-128 number at the start of `data`."""
    for i, byte in enumerate(data[:10]):
        if not byte & 0x80:
            return i + 1
    return None


def _varint(data: bytes) -> int:
    n = 0
    for i, byte in enumerate(data):
        n |= (byte & 0x7F) << (7 * i)
    return n
