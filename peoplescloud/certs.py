"""Certificates for custom domains: which ones to order or renew, who orders
them, and where they go.

Every node with TLS on runs `CertManager.tick` every few seconds (in a worker
thread). A certificate is ordered when a domain has none, when it expires
within `[tls] renew_days`, or when a failed order's back-off has passed. One
node orders a given host at a time: it first claims the host's record in the
state (`orderer`, `order_until`), in one state change, which in a swarm only
one member can win (the others get Conflict and leave it). The result — chain,
private key, or the reason it failed — goes into the same record, so every node
serves the certificate and `certs APP` shows the failure.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from peoplescloud import acme
from peoplescloud.bridge import every
from peoplescloud.errors import PCError
from peoplescloud.settings import Settings, TlsSettings
from peoplescloud.state import StateStore
from peoplescloud.tls import SniContexts

log = logging.getLogger(__name__)

ORDER_LEASE = 600.0  # seconds a node's claim to order a host lasts (an order's timeout + slack)
ORDER_TIMEOUT = 300.0
CHALLENGE_LIFE = 600.0  # seconds a published HTTP-01 answer is served at most
PUBLISH_SETTLE = 0.5  # seconds for every member to apply a published answer (Raft heartbeats)
FIRST_RETRY, LAST_RETRY = 60.0, 6 * 3600.0  # back-off after failed orders, doubling


@dataclass
class CertRecord:
    """One host's certificate and its order, as kept in `Snapshot.certs`."""

    app: str
    chain: str = ""  # PEM, leaf first; "" before the first certificate
    key: str = ""  # PEM private key of the chain
    not_after: str = ""  # RFC 3339
    issuer: str = ""
    reason: str = ""  # why the last order failed ("" when it did not)
    failures: int = 0  # orders failed in a row
    next_try: float = 0.0  # epoch s: no order before (back-off after a failure)
    orderer: str = ""  # the node ordering it now
    order_until: float = 0.0  # epoch s: that node's claim ends

    @classmethod
    def from_dict(cls, data: dict) -> CertRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def expires(self) -> float:
        """Epoch s of not_after (0 with no certificate)."""
        if not self.not_after:
            return 0.0
        at = datetime.strptime(self.not_after, "%Y-%m-%dT%H:%M:%SZ")
        return at.replace(tzinfo=UTC).timestamp()

    def due(self, renew_days: float, now: float) -> bool:
        """Whether it needs an order now (claims aside)."""
        if now < self.next_try:
            return False
        return not self.chain or self.expires() - renew_days * 86400 <= now


def describe(record: CertRecord, tls_on: bool, now: float | None = None) -> str:
    """The `certs` status column."""
    now = time.time() if now is None else now
    parts = []
    if record.chain:
        parts.append("valid" if record.expires() > now else "expired")
    if record.orderer and record.order_until > now:
        parts.append(f"ordering on {record.orderer}")
    elif record.reason:
        when = datetime.fromtimestamp(record.next_try, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts.append(f"failed: {record.reason} (next try {when})")
    elif not record.chain:
        parts.append("pending" if tls_on else "pending (TLS is off on this node)")
    return "; ".join(parts)


def facts(chain: str) -> tuple[str, str]:
    """(not_after RFC 3339, issuer) of a PEM chain's first certificate."""
    leaf = x509.load_pem_x509_certificate(chain.encode())
    issuer = leaf.issuer.rfc4514_string()
    return leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), issuer


class CertManager:
    """Orders and renews the swarm's certificates from this node."""

    def __init__(
        self, state: StateStore, node: str, tls: TlsSettings, halt: threading.Event | None = None
    ) -> None:
        self.state = state
        self.node = node
        self.tls = tls
        self.halt = halt or threading.Event()  # set when the daemon stops

    def tick(self) -> None:
        """One round: order what is due, one host after another."""
        now = time.time()
        snap = self.state.read()
        for token in [t for t, c in snap.challenges.items() if c.get("expires", 0) < now]:
            self._withdraw(token)  # an order that died half-way left it
        for host, data in sorted(snap.certs.items()):
            if self.halt.is_set():
                return
            record = CertRecord.from_dict(data)
            claimed = record.orderer and record.order_until > now
            if claimed or not record.due(self.tls.renew_days, now):
                continue
            if self._claim(host, record.app):
                self._order(host, record.app)

    def _claim(self, host: str, app: str) -> bool:
        """Take the host's order for this node, unless someone else did first."""
        try:
            with self.state.change() as s:
                data = s.certs.get(host)
                if data is None or s.domains.get(host) != app:
                    return False
                record = CertRecord.from_dict(data)
                now = time.time()
                if record.orderer and record.order_until > now:
                    return False
                record.orderer, record.order_until = self.node, now + ORDER_LEASE
                s.certs[host] = record.to_dict()
            return True
        except PCError as e:  # Conflict: another member claimed it at the same moment
            log.info("certificate for %s: not claimed (%s)", host, e)
            return False

    def _order(self, host: str, app: str) -> None:
        log.info("ordering a certificate for %s from %s", host, self.tls.acme_directory)
        try:
            account = self._account_key()
            client = acme.AcmeClient(
                self.tls.acme_directory, account, self.tls.ca_bundle, self.halt
            )
            chain, key = acme.issue(
                client, self.tls.contact, [host], self._publish, self._withdraw, ORDER_TIMEOUT
            )
            not_after, issuer = facts(chain)
        except acme.Stopped:
            self._finish(
                host, app, None, ""
            )  # no failure: another node (or the next start) goes on
            return
        except (PCError, ValueError, KeyError, TypeError) as e:  # the CA's or its answer's fault
            log.warning("certificate for %s failed: %s", host, e)
            self._finish(host, app, None, str(e) or type(e).__name__)
            return
        log.info("certificate for %s issued by %s, valid until %s", host, issuer, not_after)
        self._finish(host, app, CertRecord(app, chain, key, not_after, issuer), "")

    def _finish(self, host: str, app: str, new: CertRecord | None, reason: str) -> None:
        """Record the result, unless the domain went (or changed app) meanwhile."""
        for _ in range(3):  # Conflict: another member touched the record (its claim ran out)
            try:
                with self.state.change() as s:
                    if s.domains.get(host) != app or host not in s.certs:
                        return
                    record = new or CertRecord.from_dict(s.certs[host])
                    record.orderer, record.order_until = "", 0.0
                    if new is None and reason:
                        record.failures += 1
                        record.reason = reason[:300]
                        back_off = min(LAST_RETRY, FIRST_RETRY * 2 ** (record.failures - 1))
                        record.next_try = time.time() + back_off
                    s.certs[host] = record.to_dict()
                return
            except PCError as e:
                log.warning("certificate for %s: result not recorded yet (%s)", host, e)

    def _account_key(self) -> ec.EllipticCurvePrivateKey:
        """The swarm's account key for this CA: made once, by whoever asks first."""
        directory = self.tls.acme_directory
        entry = self.state.read().acme.get(directory)
        if entry is None:
            with self.state.change() as s:
                if directory not in s.acme:  # one key wins however many ask at once
                    s.acme[directory] = {"key": acme.key_pem(acme.new_key())}
            entry = self.state.read().acme[directory]
        return acme.load_key(entry["key"])

    def _publish(self, token: str, answer: str) -> None:
        with self.state.change() as s:
            s.challenges[token] = {"answer": answer, "expires": time.time() + CHALLENGE_LIFE}
        time.sleep(PUBLISH_SETTLE)  # the CA may reach a member that applies it a beat later

    def _withdraw(self, token: str) -> None:
        try:
            with self.state.change() as s:
                s.challenges.pop(token, None)
        except PCError as e:  # it expires by itself
            log.info("challenge %s not withdrawn yet: %s", token[:8], e)


CHECK_EVERY = 5.0  # seconds between rounds that look for certificates to order
LOAD_EVERY = 2.0  # seconds between looks for new certificates to serve


def start_tls(
    settings: Settings, state: StateStore, stop: asyncio.Event
) -> tuple[tuple[ssl.SSLContext, int] | None, list[Coroutine[Any, Any, None]]]:
    """The router's TLS (context, port) and the loops that keep it served and
    its certificates ordered: (None, []) when `[tls] port` is 0."""
    if not settings.tls.port:
        return None, []
    sni = SniContexts(settings.domain, settings.tls_dir)
    halt = threading.Event()  # an order under way gives up when the daemon stops
    manager = CertManager(state, settings.name, settings.tls, halt)
    orders = ThreadPoolExecutor(1, thread_name_prefix="acme")  # an order may take minutes

    async def relay_stop() -> None:
        await stop.wait()
        halt.set()

    loops = [
        every(LOAD_EVERY, lambda: sni.refresh(state.read()), stop),
        every(CHECK_EVERY, manager.tick, stop, executor=orders),
        relay_stop(),
    ]
    return (sni.context, settings.tls.port), loops
