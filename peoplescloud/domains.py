"""Custom domains: which host names are valid, and the router's view of them.

A host name belongs to one app in the whole swarm (`Snapshot.domains`, host ->
app). The router asks `HostTable` for a custom domain's app and for ACME
HTTP-01 answers on every request it cannot route by APP.<domain>, so the
table answers from a copy of the state taken only when the domains or the
challenges changed (not at each lease renewal of a swarm).
"""

from __future__ import annotations

import re
import threading
import time

from peoplescloud.errors import ConfigError
from peoplescloud.state import Snapshot, StateStore

LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_DOMAINS = 20  # custom domains one app may have: each one may cost a certificate order


def check_host(text: str, node_domain: str) -> str:
    """`text` as a custom domain: lowercased, without a trailing dot; ConfigError
    (one line, what to do) for anything that is no public DNS name of its own."""
    host = text.strip().lower().rstrip(".")
    if not host.isascii():
        raise ConfigError(f"{text!r} is not ASCII: give an international name in its xn-- form")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(LABEL_RE.fullmatch(x) for x in labels):
        raise ConfigError(
            f"{text!r} is not a DNS name: use labels of letters, digits and '-' "
            "separated by dots, like www.example.org (no wildcard, port or path)"
        )
    if labels[-1].isdigit():  # an IPv4 address, or a name no CA certifies
        raise ConfigError(f"{text!r} is an address, not a name: give a DNS name")
    node = node_domain.lower().rstrip(".")
    if host == node or host.endswith("." + node):
        raise ConfigError(
            f"{host} is under this node's domain {node}: APP.{node} names route by "
            "themselves; give a domain of your own"
        )
    return host


def drop_app(s: Snapshot, app: str) -> None:
    """In a change: forget the app's domains and their certificates (the app goes)."""
    for host in [h for h, a in s.domains.items() if a == app]:
        del s.domains[host]
        s.certs.pop(host, None)


class HostTable:
    """The router's questions, answered from the newest state this table saw:
    a custom domain's app, and the answer to an ACME HTTP-01 challenge."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._version = -1
        self._domains: dict[str, str] = {}
        self._challenges: dict[str, dict] = {}

    def _fresh(self) -> None:
        version = self._state.version_of("domains", "challenges")  # cheap: no copy
        if version == self._version:
            return
        with self._lock:
            snap = self._state.read()
            self._domains, self._challenges = snap.domains, snap.challenges
            self._version = version

    def app_for(self, host: str) -> str | None:
        """The app whose custom domain `host` is (lowercased, no port or dot)."""
        self._fresh()
        return self._domains.get(host)

    def domains(self) -> dict[str, str]:
        """Every custom domain -> its app."""
        self._fresh()
        return dict(self._domains)

    def challenge(self, token: str) -> str | None:
        """The key authorization an order of this swarm published for `token`."""
        self._fresh()
        entry = self._challenges.get(token)
        if entry is None or entry.get("expires", 0) < time.time():
            return None
        return str(entry["answer"])
