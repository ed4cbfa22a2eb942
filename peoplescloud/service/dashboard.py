"""The dashboard's logins: `dashboard:login` makes a one-time link, the page trades
it for a session. Tokens are kept in the daemon's memory as SHA-256 hashes only
(a restarted daemon logs everyone out); the tokens themselves are never logged."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from peoplescloud.errors import Forbidden, PCError
from peoplescloud.service.base import ServiceBase

LOGIN_SECONDS = 300.0  # a `dashboard:login` link works once, within 5 minutes
SESSION_SECONDS = 12 * 3600.0  # a dashboard session lasts 12 hours
MAX_TOKENS = 10_000  # logins and sessions kept at once, all users together
MAX_PER_USER = 50  # a user's pending links and sessions: the oldest go first

WILDCARDS = ("0.0.0.0", "::", "")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class _Token:
    user: str
    expires: float  # time.monotonic()
    login: bool  # a one-time login token, not a session


class Sessions:
    """One-time login tokens and session tokens, by hash, with their user."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def _add(self, user: str, seconds: float, login: bool) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._tokens = {h: t for h, t in self._tokens.items() if t.expires > now}
            mine = sorted((t.expires, h) for h, t in self._tokens.items() if t.user == user)
            for _, h in mine[: max(0, len(mine) - MAX_PER_USER + 1)]:
                del self._tokens[h]
            if len(self._tokens) >= MAX_TOKENS:
                raise PCError("too many dashboard logins on this node; try again later")
            self._tokens[digest(token)] = _Token(user, now + seconds, login)
        return token

    def new_login(self, user: str) -> str:
        return self._add(user, LOGIN_SECONDS, login=True)

    def exchange(self, login_token: str) -> tuple[str, str, float]:
        """A login token (used up) -> (user, session token, seconds it lasts)."""
        with self._lock:
            found = self._tokens.pop(digest(login_token), None)
        if found is None or not found.login or found.expires <= self._clock():
            raise Forbidden("this login link is used up or expired: run `dashboard:login` again")
        return found.user, self._add(found.user, SESSION_SECONDS, login=False), SESSION_SECONDS

    def user_of(self, session: str) -> str | None:
        with self._lock:
            found = self._tokens.get(digest(session))
        if found is None or found.login or found.expires <= self._clock():
            return None
        return found.user

    def end(self, session: str) -> None:
        with self._lock:
            found = self._tokens.get(digest(session))
            if found is not None and not found.login:
                del self._tokens[digest(session)]

    def forget_user(self, user: str) -> None:
        """Every link and session of `user` stops working (their account went)."""
        with self._lock:
            self._tokens = {h: t for h, t in self._tokens.items() if t.user != user}


class DashboardCommands(ServiceBase):
    _sessions: Sessions | None = None

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            self._sessions = Sessions()
        return self._sessions

    def is_admin(self, user: str) -> bool:
        u = self.state.read().users.get(user)
        return bool(u and u.admin)

    def may_share(self, user: str, app: str) -> bool:
        """Whether `user` may change who shares `app` (its owner, an admin)."""
        snap = self.state.read()
        return self._role(user, self._app(user, app, snap), snap) in ("owner", "admin")

    def dashboard_login(self, user: str) -> str:
        """A one-time link to the dashboard for `user`, the token its last part."""
        if self.settings.dashboard_port == 0:
            raise PCError("this node runs no dashboard (dashboard_port is 0); ask the host")
        host = self.settings.dashboard_listen
        if host in WILDCARDS:
            host = self.settings.advertised
        if ":" in host:
            host = f"[{host}]"
        token = self.sessions.new_login(user)
        return f"http://{host}:{self.settings.dashboard_port}/login?token={token}"
