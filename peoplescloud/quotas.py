"""Per-user quotas: how many apps a user owns, how many instances their apps ask
for, how many one-off runs and builds they have going at once on a node.

The limits are the node's `[quotas]` settings unless an admin set a user's own
(`quota:set USER NAME=N`, kept in `Snapshot.quotas`). Apps and instances are
counted from the state, and charged to the app's owner; runs and builds are
counted on the node that runs them (`UserSlots`), charged to who starts them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from peoplescloud.errors import PCError
from peoplescloud.settings import Quotas
from peoplescloud.state import Snapshot

# What each quota counts, for the refusals and `quota`.
UNITS = {
    "apps": "apps",
    "instances": "process instances",
    "runs": "one-off runs",
    "builds": "builds",
}


class OverQuota(PCError):
    """A user asked for more than one of their quotas allows."""


def limit_of(snap: Snapshot, defaults: Quotas, user: str, name: str) -> int:
    """`user`'s limit for quota `name`: an admin's figure, else the node's default."""
    return int(snap.quotas.get(user, {}).get(name, getattr(defaults, name)))


def apps_of(snap: Snapshot, user: str) -> int:
    return sum(1 for a in snap.apps.values() if a.owner == user)


def instances_of(snap: Snapshot, user: str) -> int:
    """The instances `user`'s apps ask for: their scale, stopped or not (a stopped
    app keeps its scale, and starts it again with `ps:start`)."""
    return sum(n for a in snap.apps.values() if a.owner == user for n in a.scale.values())


def refusal(name: str, owner: str, asker: str, used: int) -> OverQuota:
    """The one-line refusal: which quota, and how to see the usage."""
    what = (
        f"{used} {UNITS[name]}" if name in ("apps", "instances") else f"{used} {UNITS[name]} going"
    )
    if owner == asker:
        return OverQuota(f"you have {what}, your quota ({name}); `quota` shows your usage")
    return OverQuota(
        f"{owner} has {what}, their quota ({name}); they see their usage with `quota`, "
        f"and an admin can raise it (`quota:set {owner} {name}=N`)"
    )


class UserSlots:
    """How many of something (runs, builds) each user has going on this node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def used(self, user: str) -> int:
        with self._lock:
            return self._held[user]

    @contextmanager
    def hold(self, user: str, limit: int) -> Iterator[None]:
        """One of `user`'s `limit` slots for the block, or OverQuota at once."""
        with self._lock:
            if self._held[user] >= limit:
                raise refusal(self.name, user, user, self._held[user])
            self._held[user] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[user] -= 1
                if not self._held[user]:
                    del self._held[user]
