"""Per-key locks (one per app): the one registry every part uses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    """A lock per key, made on first use. `hold` waits for it; `try_hold` does not."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock(key):
            yield

    @contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        """Yields whether the lock was free (and is now held until the block ends)."""
        lock = self._lock(key)
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()

    def held(self, key: str) -> bool:
        return self._lock(key).locked()
