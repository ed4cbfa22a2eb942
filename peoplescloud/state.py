"""The node's desired state: users and their keys, apps, releases, config vars,
scale. Every change goes through `State.change()`; reconcilers make the world
match what it holds.

One node keeps it in a JSON file replaced atomically (write, fsync, rename), so
a kill -9 leaves either the old or the new state, never half of one. The swarm
will put the same changes through consensus; callers do not change.
"""

from __future__ import annotations

import base64
import binascii
import copy
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from peoplescloud.errors import NotFound, PCError

# Releases whose slugs (and Dockerfile images) are kept: older ones are unpinned
# (and their images pruned); their release rows stay for history.
KEEP_RELEASES = 10


def now() -> str:
    """UTC, RFC 3339, second precision: the one timestamp format of the project."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class User:
    name: str
    keys: list[str] = field(default_factory=list)  # "ssh-ed25519 AAAA..." (comment stripped)
    admin: bool = False


@dataclass
class Release:
    version: int
    slug: str  # content id in the store (a Dockerfile app's: its image marker or archive)
    kind: str  # python, node, procfile, dockerfile
    stack: str
    processes: dict[str, str]  # type -> command
    commit: str
    pushed_by: str
    created: str
    description: str
    pushed_to: str = ""  # the node that received the push: it holds the git history
    image: str = ""  # a Dockerfile app's image id ("sha256:…"): its instances run it
    user: str = ""  # "uid:gid" an image's instances run as ("": the runtime's own user)
    # app.json's startup health checks of `web` (builder.appjson.HealthCheck fields);
    # empty: the port must answer.
    web_checks: list[dict] = field(default_factory=list)
    # Commands run once per new release, as one-offs in its slug (see peoplescloud.phases):
    # app.json's scripts.dokku.predeploy, then the Procfile's `release` type (never
    # scaled: it is not in `processes`), before any instance starts; app.json's
    # postdeploy once the release runs.
    predeploy: str = ""
    release_command: str = ""
    postdeploy: str = ""
    cron: list[dict] = field(default_factory=list)  # app.json's cron (builder.appjson.CronJob)

    @property
    def name(self) -> str:
        return f"v{self.version}"


@dataclass
class App:
    name: str
    owner: str
    created: str
    config: dict[str, str] = field(default_factory=dict)
    scale: dict[str, int] = field(default_factory=dict)  # process type -> instances
    releases: list[Release] = field(default_factory=list)
    current: int | None = None  # the release that runs: the last one that started well
    # A release being brought up (a push or rollback): it runs beside `current`'s
    # web instances until healthy, and becomes current only then.
    deploying: int | None = None
    stopped: bool = False  # ps:stop
    placement: dict[str, str] = field(default_factory=dict)  # process -> node (in a swarm)
    created_empty: bool = False  # by `apps:create`: a failed first push leaves it
    collaborators: list[str] = field(default_factory=list)  # `sharing:add`: may use, not own
    # `resources:set`: process type (or "*", every type) -> {"memory_mb": int,
    # "cpus": float}, either or both; the node's [shares] instance_* otherwise.
    resources: dict[str, dict[str, float]] = field(default_factory=dict)

    def release(self, version: int | None = None) -> Release:
        """The release `version` (default: the current one)."""
        want = self.current if version is None else version
        for r in self.releases:
            if r.version == want:
                return r
        raise NotFound(
            f"{self.name} has no release v{want}" if want else f"{self.name} has no release yet"
        )

    @property
    def target(self) -> int | None:
        """The release the node should run: the one being deployed, else the current one."""
        return self.deploying if self.deploying is not None else self.current

    def next_version(self) -> int:
        return max((r.version for r in self.releases), default=0) + 1

    def rerelease(self, user: str, description: str) -> str | None:
        """A new release of the current slug, made current (a config or resources
        change: the reconciler then replaces the instances); its name, or None
        before the first push (there is nothing to restart)."""
        if self.current is None:
            return None
        new = replace(
            self.release(),
            version=self.next_version(),
            created=now(),
            pushed_by=user,
            description=description,
        )
        self.releases.append(new)
        self.current = new.version
        return new.name


@dataclass
class Member:
    """A node of the swarm: where to reach it, what its host shares, its lease.

    `lease_expires` is epoch seconds: the node may run instances until then, and
    renews it through the consensus every few seconds (see swarm/placement.py)."""

    name: str
    memory_mb: int
    cpus: float
    max_apps: int
    lease_expires: float = 0.0
    leaving: bool = False
    address: str = ""  # "host:port" of its peer API
    raft: str = ""  # "host:port" of its consensus endpoint
    ipfs: str = ""  # its kubo's multiaddr, for the others to dial
    router: str = ""  # "host:port" of its HTTP router, for web processes it runs


@dataclass
class Snapshot:
    users: dict[str, User] = field(default_factory=dict)
    apps: dict[str, App] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)  # empty: a lone node
    invites: dict[str, dict] = field(default_factory=dict)  # id -> invite.InviteRecord.to_dict()
    pins: dict[str, list[str]] = field(default_factory=dict)  # slug -> nodes that should pin it
    held: dict[str, list[str]] = field(default_factory=dict)  # node -> slugs it does pin
    # node -> "app/process" -> what that node last saw of its instance:
    # {"release", "running", "exit_code", "started_at", "address"}, or {"why"} when
    # it cannot start it. Lets any node answer `ps` and wait for a release that
    # runs on a sibling.
    observed: dict[str, dict[str, dict]] = field(default_factory=dict)
    # app -> when it was destroyed: every node then drops its repo copy and log.
    # A new app of the same name takes the name back.
    destroyed: dict[str, str] = field(default_factory=dict)
    # The audit trail (`events`): id -> {"at", "user", "app", "what"}, the newest
    # MAX_EVENTS kept. Keyed by a unique, time-ordered id rather than a list, so two
    # members recording at once touch different entries (no Conflict in a swarm).
    events: dict[str, dict] = field(default_factory=dict)
    # user -> quota name -> limit, set by an admin (`quota:set`); [quotas] otherwise.
    quotas: dict[str, dict[str, int]] = field(default_factory=dict)
    # Custom domains (`domains:add`): host -> app. Keyed by host, so two members
    # adding the same name at once touch one entry: the second gets Conflict.
    domains: dict[str, str] = field(default_factory=dict)
    # TLS certificates from the ACME CA, host -> peoplescloud.certs.CertRecord as a
    # dict (with its private key: this is why the state file is 0600).
    certs: dict[str, dict] = field(default_factory=dict)
    # ACME HTTP-01 answers while an order runs: token -> {"answer", "host", "expires"};
    # every node's router serves them, whichever node the CA reaches.
    challenges: dict[str, dict] = field(default_factory=dict)
    # The swarm's ACME account key per CA directory URL: {"key": PEM}.
    acme: dict[str, dict] = field(default_factory=dict)

    def app(self, name: str) -> App:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"no app named {name!r}: `apps` lists yours") from None

    def user_for_key(self, key: str) -> str | None:
        wanted = normalize_key(key)
        for user in self.users.values():
            if wanted in user.keys:
                return user.name
        return None

    def add_user_key(self, name: str, key: str, admin: bool) -> None:
        """Let `key` push as `name` (created if new); a key belongs to one user."""
        key = normalize_key(key)
        owner = self.user_for_key(key)
        if owner:
            raise PCError(f"that key already belongs to {owner}")
        if name not in self.users and (
            owned := sorted(a for a, o in self.apps.items() if o.owner == name)
        ):
            # a removed user's name: a new account of that name would take their apps
            raise PCError(
                f"{name} was removed and still owns {', '.join(owned)}: "
                "`apps:transfer` them first, or choose another name"
            )
        user = self.users.setdefault(name, User(name=name))
        user.keys.append(key)
        user.admin = user.admin or admin

    def add_event(self, user: str, app: str, what: str) -> None:
        """Record who did what (never a config value or a key: names and
        fingerprints only). Beyond MAX_EVENTS, the oldest event of whoever has the
        most goes: someone busy (or flooding) pushes out their own history, not
        everyone else's."""
        self.events[event_id()] = {"at": now(), "user": user, "app": app, "what": what}
        while len(self.events) > MAX_EVENTS:
            counts = Counter(e["user"] for e in self.events.values())
            busiest = counts.most_common(1)[0][0]
            del self.events[min(k for k, e in self.events.items() if e["user"] == busiest)]


MAX_EVENTS = 1000  # the audit trail's length: it lives in the (replicated) state


def event_id() -> str:
    """Unique and in time order: nanoseconds, then a random tail."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def normalize_key(openssh: str) -> str:
    """ "type base64 [comment]" -> "type base64": keys compare without their comment."""
    parts = openssh.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    return f"{parts[0]} {parts[1]}"


def fingerprint(openssh: str) -> str:
    """ "SHA256:..." of a public key, as `ssh-keygen -l` and ssh clients show it."""
    text = normalize_key(openssh).split()[1]
    try:
        blob = base64.b64decode(text, validate=True)
    except binascii.Error:  # no real key (keys are checked when added): still one print
        blob = text.encode()
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def snapshot_from_dict(data: dict) -> Snapshot:
    users = {n: User(**u) for n, u in data.get("users", {}).items()}
    apps = {}
    for n, a in data.get("apps", {}).items():
        a = dict(a)
        a["releases"] = [Release(**r) for r in a.get("releases", [])]
        apps[n] = App(**a)
    members = {n: Member(**m) for n, m in data.get("members", {}).items()}
    return Snapshot(
        users=users,
        apps=apps,
        members=members,
        invites=dict(data.get("invites", {})),
        pins=dict(data.get("pins", {})),
        held=dict(data.get("held", {})),
        observed=dict(data.get("observed", {})),
        destroyed=dict(data.get("destroyed", {})),
        events=dict(data.get("events", {})),
        quotas={u: dict(q) for u, q in data.get("quotas", {}).items()},
        domains=dict(data.get("domains", {})),
        certs=dict(data.get("certs", {})),
        challenges=dict(data.get("challenges", {})),
        acme=dict(data.get("acme", {})),
    )


def kept_images(snap: Snapshot) -> set[str]:
    """The image ids of every app's kept releases (Dockerfile apps)."""
    return {r.image for a in snap.apps.values() for r in a.releases[-KEEP_RELEASES:] if r.image}


class StateStore(Protocol):
    """Where the desired state lives: `State` (a file, a node alone) or the swarm's
    replicated state. Readers get a copy; writers edit a draft inside `change()`."""

    def read(self) -> Snapshot: ...
    def change(self) -> AbstractContextManager[Snapshot]: ...
    @property
    def version(self) -> int: ...  # changes whenever the state does (cheap: no copy)
    def version_of(self, *fields: str) -> int: ...  # ... whenever one of these fields does


class State:
    """The durable desired state of one node.

    Several processes may share the file (the daemon and `pc user add`): every
    change holds an flock on `<file>.lock` and starts from the newest file, and
    reads pick up a file another process replaced.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._snap = Snapshot()
        self._seen: tuple[int, int] | None = None  # (inode, mtime_ns) of the file loaded
        self._version = 0  # snapshots loaded or written by this object
        self._refresh()

    def _refresh(self) -> None:
        """Reload when another process replaced the file (a stat, not a read, when it didn't)."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns) != self._seen:
            self._snap = snapshot_from_dict(json.loads(self._path.read_text()))
            self._seen = (st.st_ino, st.st_mtime_ns)
            self._version += 1

    @property
    def version(self) -> int:
        """Changes whenever the state does (cheap: a stat, no copy): for indexes
        built from a read, such as the SSH keys'."""
        with self._lock:
            self._refresh()
            return self._version

    def version_of(self, *fields: str) -> int:
        """As `version`: a node alone changes its state seldom, so any change counts."""
        return self.version

    def read(self) -> Snapshot:
        """A copy: readers can never change state behind `change()`'s back."""
        with self._lock:
            self._refresh()
            return copy.deepcopy(self._snap)

    @contextmanager
    def change(self) -> Iterator[Snapshot]:
        """Edit a copy; on a clean exit it becomes the state, durably.
        An exception inside the block changes nothing."""
        with self._lock, open(self._path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._refresh()
            draft = copy.deepcopy(self._snap)
            yield draft
            self._write(draft)
            self._snap = draft
            self._version += 1

    def _write(self, snap: Snapshot) -> None:
        tmp = self._path.with_suffix(".tmp")
        # 0600: the state holds every app's config vars (a tmp file left by a crash
        # may have another mode: set it again)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "w") as f:
            json.dump(asdict(snap), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        st = os.stat(self._path)
        self._seen = (st.st_ino, st.st_mtime_ns)
