"""What the SSH layer needs from a node. The daemon passes an implementation
(`peoplescloud.node.Node`); tests pass a fake. Every method raises `peoplescloud.errors.PCError`
subclasses with a readable reason; blocking methods are called off the event loop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from peoplescloud.runtime.base import Terminal


@dataclass(frozen=True)
class AppRow:
    name: str
    owner: str
    release: str  # "v3", or "-" before the first deploy
    state: str  # "running", "starting", "idle", "stopped", "crashed", "not deployed"
    scale: str  # "bot=1 web=2"
    role: str = ""  # the asker's: "owner", "collaborator", "admin"


@dataclass(frozen=True)
class KeyRow:
    fingerprint: str  # "SHA256:...", as `ssh-keygen -l` shows it
    type: str  # "ssh-ed25519"


@dataclass(frozen=True)
class UserRow:
    name: str
    admin: bool
    keys: int
    apps: int  # apps they own


@dataclass(frozen=True)
class EventRow:
    at: str  # RFC 3339
    user: str  # "" for a refused login (nobody)
    app: str  # "" for an event of no app (keys, users)
    what: str  # "push 1a2b3c4: v3 deployed", "config: Set TOKEN" (names, never values)


@dataclass(frozen=True)
class PsRow:
    process: str  # "bot.1"
    release: str
    node: str
    state: str  # "up", "starting", "crashed", "stopped"
    since: str  # RFC 3339
    command: str
    why: str = ""  # why it is not up, when it is not


@dataclass(frozen=True)
class ReleaseRow:
    version: str  # "v3"
    current: bool
    description: str  # "Deploy 1a2b3c4", "Rollback to v1", "Set TOKEN"
    pushed_by: str
    created: str
    slug: str  # content id of the slug in the store
    pinned_on: list[str] = field(default_factory=list)  # in a swarm: the nodes that hold it


@dataclass(frozen=True)
class CronRow:
    """One scheduled job of an app (app.json's `cron`), as `cron APP` shows it."""

    id: str  # "cron.1": its name in the app's log
    schedule: str
    command: str
    next_run: str  # RFC 3339 UTC; "" when it never runs


@dataclass(frozen=True)
class NodeRow:
    """One member of the swarm, as `swarm:nodes` shows it."""

    name: str
    state: str  # "up", "suspect", "down"; "(leaving)" appended while it leaves
    address: str
    shares: str  # "2048 MB, 1 cpu, 20 apps"
    uses: str  # "512 MB, 1 app": what placement put there
    instances: int


@dataclass(frozen=True)
class QuotaRow:
    """One of a user's quotas, as `quota` shows it."""

    name: str  # "apps", "instances", "runs", "builds"
    what: str  # "process instances"
    limit: int
    used: int
    source: str  # "node default ([quotas])" or "set for ann"


@dataclass(frozen=True)
class ResourceRow:
    """What one instance of a process type may use, as `resources` shows it."""

    ptype: str  # "bot", or "*" before the first push
    memory_mb: int
    cpus: float
    source: str  # "node default", "set for the app", "set for bot"


@dataclass(frozen=True)
class CertRow:
    """One custom domain's certificate, as `certs` shows it."""

    host: str
    issuer: str  # the CA's name for itself, or "-" before the first certificate
    not_after: str  # RFC 3339, or "-"
    status: str  # "valid", "ordering on node2", "failed: <reason> (retry at ...)"


class NodeService(Protocol):
    node_name: str

    # --- authentication and git -------------------------------------------
    def user_for_key(self, openssh_public_key: str) -> str | None:
        """The user owning this key ("ssh-ed25519 AAAA..."), or None: refuse it."""

    def repo_for(self, user: str, app: str, write: bool) -> Path:
        """The app's bare repo. With `write` it is created (and the app with it) on the
        first push; raises ConfigError for a bad name, Forbidden, NotFound."""

    def deploy(self, user: str, app: str, commit: str, say: Callable[[str], None]) -> str:
        """Build `commit` of the app's repo, release it and wait until it runs.
        `say` gets each output line as it happens. Returns the release ("v3").
        Raises PCError (the push is refused, the old release keeps running)."""

    def push_ended(self, user: str, app: str) -> None:
        """A push session to the app ended: an app with no release yet (the session
        pushed nothing, or its deploy failed) is forgotten, with its repo."""

    # --- commands ---------------------------------------------------------
    def create(self, user: str, app: str) -> None:
        """An empty app of `user` (config and scale may be set before its first
        push); PCError when the name is taken, or the node hosts its limit."""

    def apps(self, user: str) -> list[AppRow]: ...
    def app_info(self, user: str, app: str) -> dict[str, str]: ...
    def destroy(self, user: str, app: str) -> None: ...
    def ps(self, user: str, app: str) -> list[PsRow]: ...
    def scale(self, user: str, app: str, counts: dict[str, int]) -> None: ...
    def restart(self, user: str, app: str, ptype: str | None) -> None: ...
    def stop(self, user: str, app: str) -> None: ...
    def start(self, user: str, app: str) -> None: ...
    def config(self, user: str, app: str) -> dict[str, str]: ...
    def config_set(self, user: str, app: str, values: dict[str, str]) -> str | None:
        """The new release (None before the first push)."""

    def config_unset(self, user: str, app: str, keys: list[str]) -> str | None:
        """The new release (None before the first push)."""

    def releases(self, user: str, app: str) -> list[ReleaseRow]: ...

    def cron(self, user: str, app: str) -> list[CronRow]: ...

    # --- people: keys, users, sharing, the audit trail ---------------------
    def refused_login(self, openssh_public_key: str) -> None:
        """A key nobody owns was offered: record its fingerprint (rate-limited)."""

    def keys(self, user: str) -> list[KeyRow]: ...
    def key_add(self, user: str, openssh_public_key: str) -> str:
        """The new key's fingerprint; PCError if it is no key or someone's already."""

    def key_remove(self, user: str, fingerprint: str) -> None:
        """NotFound if `user` has no such key; PCError for their last one."""

    def users(self, user: str) -> list[UserRow]: ...  # admins only
    def user_add(self, user: str, name: str, openssh_public_key: str, admin: bool) -> None: ...
    def user_remove(self, user: str, name: str) -> None:
        """Their keys stop working at once; their apps stay (owner shown removed)."""

    def sharing(self, user: str, app: str) -> list[str]:
        """The app's collaborators (anyone who may use it can see them)."""

    def sharing_add(self, user: str, app: str, other: str) -> None: ...  # owner, admins
    def sharing_remove(self, user: str, app: str, other: str) -> None: ...
    def transfer(self, user: str, app: str, other: str) -> None: ...  # owner, admins
    def events(self, user: str, app: str | None, n: int) -> list[EventRow]:
        """The newest `n` events, oldest first: of `app`, or of the apps `user` may
        use (admins: all)."""

    def rollback(self, user: str, app: str, version: str) -> str: ...
    def quota(self, user: str, who: str | None = None) -> list[QuotaRow]:
        """`who`'s quotas (default: the asker's); another user's only for admins."""

    def quota_set(self, user: str, who: str, values: dict[str, int]) -> None:
        """Admins only: set `who`'s limits (quota name -> N)."""

    def resources(self, user: str, app: str) -> list[ResourceRow]: ...
    def resources_set(
        self, user: str, app: str, ptype: str | None, memory_mb: int | None, cpus: float | None
    ) -> str | None:
        """The new release (None before the first push)."""

    def domains(self, user: str, app: str) -> list[str]: ...
    def domains_add(self, user: str, app: str, host: str) -> None:
        """PCError when the host is no valid name, or another app has it."""

    def domains_remove(self, user: str, app: str, host: str) -> None: ...
    def certs(self, user: str, app: str) -> list[CertRow]: ...

    def dashboard_login(self, user: str) -> str:
        """A one-time link that logs `user` in to the dashboard; its token is its
        last part (after `token=`)."""

    def swarm_nodes(self, user: str) -> list[NodeRow]:
        """The swarm's members; raises PCError on a node that is in no swarm."""

    def run(
        self,
        user: str,
        app: str,
        argv: list[str],
        output: Callable[[bytes], None],
        stdin: Callable[[], bytes] | None,
        cancel: threading.Event | None = None,
        terminal: Terminal | None = None,
    ) -> int:
        """One-off process of the current release; returns its exit code. Setting
        `cancel` (the client left) kills it; `terminal`: the client's pty, if any."""

    def logs(
        self, user: str, app: str, lines: int, ptype: str | None, follow: bool
    ) -> AsyncIterator[str]:
        """The last `lines` log lines ("2026-11-23T21:00:03Z app[bot.1]: text"),
        then, with `follow`, new ones until the caller stops iterating."""
