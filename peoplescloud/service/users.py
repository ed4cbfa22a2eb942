"""People: my keys (`keys`, `keys:add`, `keys:remove`) and, for admins, the
users (`users`, `users:add`, `users:remove`). A removed user's keys stop working
at the next login on every node (SSH asks `user_for_key`, which reads the
state); their apps stay, and `apps` says whose they were."""

from __future__ import annotations

from gitserver.service import KeyRow, UserRow
from peoplescloud.errors import NotFound, PCError
from peoplescloud.names import check_public_key, check_user_name
from peoplescloud.service.base import ServiceBase
from peoplescloud.service.dashboard import DashboardCommands
from peoplescloud.state import Snapshot, fingerprint

MAX_KEYS = 20  # a user's keys, at most: each is asked about at every login


class UserCommands(ServiceBase):
    def keys(self, user: str) -> list[KeyRow]:
        u = self.state.read().users.get(user)
        keys = u.keys if u else []
        return [KeyRow(fingerprint=fingerprint(k), type=k.split()[0]) for k in keys]

    def key_add(self, user: str, openssh_public_key: str) -> str:
        key = check_public_key(openssh_public_key, "the key on stdin")
        with self.state.change() as s:
            u = s.users.get(user)
            if u is None:
                raise NotFound("your account was removed")
            if len(u.keys) >= MAX_KEYS:
                raise PCError(f"you have {MAX_KEYS} keys, the most: `keys:remove` one first")
            s.add_user_key(user, key, False)
        added = fingerprint(key)
        self._record(user, "", f"keys:add {added}")
        return added

    def key_remove(self, user: str, fingerprint_: str) -> None:
        with self.state.change() as s:
            u = s.users.get(user)
            keys = u.keys if u else []
            found = [k for k in keys if fingerprint(k) == fingerprint_]
            if u is None or not found:
                raise NotFound(f"you have no key {fingerprint_}: `keys` lists yours")
            if len(keys) == 1:
                raise PCError(
                    "that is your last key: `keys:add` another first, or you could not log in"
                )
            u.keys.remove(found[0])
        self._record(user, "", f"keys:remove {fingerprint_}")

    def users(self, user: str) -> list[UserRow]:
        snap = self.state.read()
        self._admin(user, snap)
        owned: dict[str, int] = {}
        for a in snap.apps.values():
            owned[a.owner] = owned.get(a.owner, 0) + 1
        return [
            UserRow(name=u.name, admin=u.admin, keys=len(u.keys), apps=owned.get(u.name, 0))
            for u in sorted(snap.users.values(), key=lambda u: u.name)
        ]

    def user_add(self, user: str, name: str, openssh_public_key: str, admin: bool) -> None:
        """A new user (or one more key for one), by an admin."""
        self._admin(user)
        check_user_name(name)
        key = check_public_key(openssh_public_key, "the key on stdin")
        with self.state.change() as s:
            self._admin(user, s)
            s.add_user_key(name, key, admin)
        self._record(user, "", f"users:add {name}{' (admin)' if admin else ''} {fingerprint(key)}")

    def user_remove(self, user: str, name: str) -> None:
        self._admin(user)
        with self.state.change() as s:
            self._admin(user, s)
            remove_user(s, name, by=user)
        if isinstance(self, DashboardCommands):
            self.sessions.forget_user(name)  # their dashboard sessions end now, not in 12 h
        self._record(user, "", f"users:remove {name}")


def remove_user(s: Snapshot, name: str, by: str = "") -> None:
    """Take `name` out of the users (and of every app's collaborators); the apps
    they own stay, owned by the name. `by` (an admin) may not remove themselves,
    nor may the last admin go: someone must be left to manage the node."""
    u = s.users.get(name)
    if u is None:
        raise NotFound(f"no user named {name!r}: `users` lists them")
    if name == by:
        raise PCError("you cannot remove yourself: ask another admin")
    if u.admin and not any(o.admin for o in s.users.values() if o.name != name):
        raise PCError(f"{name} is the last admin: make another admin first")
    del s.users[name]
    for a in s.apps.values():
        if name in a.collaborators:
            a.collaborators.remove(name)
