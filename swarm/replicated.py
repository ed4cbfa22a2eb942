"""The swarm's desired state, agreed by Raft: the same `read()` / `change()` as
`peoplescloud.state.State`, so the code that changes state does not know whether it
runs alone or in a swarm.

What is replicated is not the whole snapshot but the entries a change touched
("apps/mybot", "users/ann"), each with the value the change started from.
Every member applies a change only if each of those entries still has that
value, so:

- a change never silently undoes another one (compare-and-set, per entry);
- changes to different apps from different members never conflict (a push of
  one app on node 1 and `config:set` of another on node 2);
- the journal grows by what changed, not by the whole swarm's state each time.

A member's own changes never conflict with each other (`change()` holds a lock
and returns only once this member applied the change), except one that asks
not to queue (a lease renewal). Two members changing the
same entry at the same moment: the first one agreed wins, the other gets
`Conflict` and nothing of it is kept.

Threads: Raft runs on its own thread; `on_change` callbacks run there. An
asyncio daemon hands them over with `loop.call_soon_threadsafe`. `change()`
blocks until the swarm agrees (up to the commit timeout): call it from a worker
thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peoplescloud.state import Snapshot, snapshot_from_dict
from swarm.raft import Conflict, NoQuorum, RaftNode, RaftStatus, RaftTimings

__all__ = ["Conflict", "NoQuorum", "RaftStatus", "RaftTimings", "ReplicatedState"]

log = logging.getLogger(__name__)

# One edit: (field, key or None for a field that is not a dict, old, new), where
# old and new are [] for "absent" and [value] for "present with this value".
Edit = tuple[str, str | None, list, list]


def diff(base: dict, new: dict) -> list[Edit]:
    """The entries that differ between two `asdict(Snapshot)`s: dict fields entry by
    entry (one app, one user), other fields whole."""
    edits: list[Edit] = []
    for name in sorted(base.keys() | new.keys()):
        old_field, new_field = base.get(name), new.get(name)
        if isinstance(old_field, dict) and isinstance(new_field, dict):
            for key in sorted(old_field.keys() | new_field.keys()):
                old, now = _entry(old_field, key), _entry(new_field, key)
                if old != now:
                    edits.append((name, key, old, now))
        else:
            old, now = _entry(base, name), _entry(new, name)
            if old != now:
                edits.append((name, None, old, now))
    return edits


def _entry(mapping: dict, key: str) -> list:
    return [mapping[key]] if key in mapping else []


class SnapshotMachine:
    """The replicated data: a snapshot as plain dicts, and its version (the number
    of changes applied). Runs on the raft thread; readers copy under the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict = asdict(Snapshot())
        self._version = 0
        self._touched: dict[str, int] = {}  # field -> the version that last changed it
        # (callback, the fields it cares about; None: all)
        self._listeners: list[tuple[Callable[[int], None], frozenset[str] | None]] = []

    def apply(self, edits: list[Edit]) -> int | None:
        """Apply all the edits if every entry still has its `old` value: the new
        version; else change nothing: None. Deterministic, as Raft requires."""
        with self._lock:
            for name, key, old, _ in edits:
                if self._get(name, key) != old:
                    return None
            self._version += 1
            version = self._version
            for name, key, _, new in edits:
                self._put(name, key, new)
                self._touched[name] = version
        self._notify(version, frozenset(name for name, _, _, _ in edits))
        return version

    def _get(self, name: str, key: str | None) -> list:
        if key is None:
            return _entry(self._data, name)
        field = self._data.get(name)
        return _entry(field, key) if isinstance(field, dict) else []

    def _put(self, name: str, key: str | None, new: list) -> None:
        target, slot = (self._data, name) if key is None else (self._data.setdefault(name, {}), key)
        if new:
            target[slot] = copy.deepcopy(new[0])
        else:
            target.pop(slot, None)

    def dump(self) -> Any:
        with self._lock:
            return {"version": self._version, "data": copy.deepcopy(self._data)}

    def load(self, data: Any) -> None:
        with self._lock:
            self._version = data["version"]
            self._data = copy.deepcopy(data["data"])
            version = self._version
            self._touched = dict.fromkeys(self._data, version)
        self._notify(version, None)  # a whole new state: every field may have changed

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def version_of(self, fields: frozenset[str]) -> int:
        """The version that last changed one of `fields` (0: none ever did)."""
        with self._lock:
            return max((self._touched.get(name, 0) for name in fields), default=0)

    def read(self) -> tuple[int, dict]:
        """(version, a deep copy of the data)."""
        with self._lock:
            return self._version, copy.deepcopy(self._data)

    def listen(self, callback: Callable[[int], None], only: frozenset[str] | None) -> None:
        with self._lock:
            self._listeners.append((callback, only))

    def _notify(self, version: int, touched: frozenset[str] | None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback, only in listeners:
            if only is not None and touched is not None and not only & touched:
                continue
            try:
                callback(version)
            except Exception:  # a listener's bug must not stop this member applying changes
                log.exception("on_change callback failed")


class ReplicatedState:
    """The desired state of a swarm member: reads are local, changes are agreed by a
    majority of the members before `change()` returns."""

    def __init__(
        self,
        self_addr: str,
        partners: list[str],
        secret: str,
        data_dir: Path,
        timings: RaftTimings = RaftTimings(),  # noqa: B008 (frozen, never mutated)
    ) -> None:
        self._machine = SnapshotMachine()
        self._lock = threading.RLock()
        self._raft = RaftNode(self_addr, partners, secret, data_dir, self._machine, timings)

    def read(self) -> Snapshot:
        """This member's copy of the state (may trail the leader by a heartbeat); a
        copy, so readers can never change state behind `change()`'s back."""
        return snapshot_from_dict(self._machine.read()[1])

    @property
    def version(self) -> int:
        """Number of changes applied on this member (cheap: no copy)."""
        return self._machine.version

    def version_of(self, *fields: str) -> int:
        """Changes whenever one of these fields of the snapshot does, and only then:
        lease renewals change `members` every second, not `users` or `domains`."""
        return self._machine.version_of(frozenset(fields))

    @contextmanager
    def change(self, timeout: float | None = None, queue: bool = True) -> Iterator[Snapshot]:
        """Edit a copy; on a clean exit the swarm agrees on the edits and this member
        has applied them. An exception inside the block changes nothing. Raises
        `Conflict` if another member changed the same entries since the copy was
        taken, `NoQuorum` if no majority answers within `timeout` (default: the
        timings' commit timeout); nothing was changed then.

        This member's changes wait for each other, so they never conflict among
        themselves. `queue=False` skips that wait, for entries only this member
        writes (its lease must not wait behind a push's slow commit); such a
        change may then meet `Conflict` from this member too."""
        with self._lock if queue else contextlib.nullcontext():
            base = self._machine.read()[1]
            draft = snapshot_from_dict(copy.deepcopy(base))
            yield draft
            edits = diff(base, asdict(draft))
            if not edits:
                return
            if self._raft.submit(edits, timeout) is None:
                touched = ", ".join(f"{n}/{k}" if k else n for n, k, _, _ in edits)
                raise Conflict(
                    f"another member changed {touched} at the same time: "
                    "nothing was changed; try again"
                )

    def on_change(self, callback: Callable[[int], None], only: set[str] | None = None) -> None:
        """Call `callback(version)` after every change applied on this member (also
        when it catches up after a restart); with `only`, just after changes to those
        fields of the snapshot (lease renewals touch `members` every second). It
        runs on the raft thread: keep it short and hand work over
        (`loop.call_soon_threadsafe`)."""
        self._machine.listen(callback, frozenset(only) if only is not None else None)

    def add_member(self, addr: str, timeout: float | None = None) -> None:
        """Make `addr` a member; start it first with the current `members()` as its
        partners and the swarm secret. It then receives the state by itself."""
        self._raft.add_member(addr, timeout)

    def remove_member(self, addr: str, timeout: float | None = None) -> None:
        """Take `addr` out of the swarm (from another member than `addr`)."""
        self._raft.remove_member(addr, timeout)

    def step_down(self) -> None:
        """Stop leading, if this member leads (see RaftNode.step_down)."""
        self._raft.step_down()

    def members(self) -> list[str]:
        """Addresses of all members as this member knows them, itself first."""
        return self._raft.members()

    def leader(self) -> str | None:
        """The address of the last known leader."""
        return self._raft.leader()

    def status(self) -> RaftStatus:
        """Who is up as Raft sees it from this member."""
        return self._raft.status()

    def compact(self) -> None:
        """Write a full dump of the state (raft.dump) and shorten the journal."""
        self._raft.compact()

    def close(self) -> None:
        """Stop taking part (the membership is unchanged): the journal stays."""
        self._raft.close()
