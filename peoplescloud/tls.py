"""The router's TLS: one server SSLContext whose `sni_callback` picks each
connection's certificate by the name the client asked for (SNI).

A custom domain with a certificate in the state gets that certificate. Any
other name (APP.<domain>, an unknown host, no SNI at all) gets the node's
self-signed certificate for <domain> and *.<domain>, made at start: a client
that verifies refuses it, so nothing is ever served under a name it was not
issued for, while `curl -k` still reaches APP.<domain> over TLS.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from peoplescloud import acme
from peoplescloud.state import Snapshot

log = logging.getLogger(__name__)


def server_context(chain: str, key: str, work_dir: Path) -> ssl.SSLContext:
    """A TLS server context serving this PEM chain and key. `ssl` loads only from
    files: they are written in `work_dir` (private) and removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=work_dir, suffix=".pem")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.strip() + "\n" + chain.strip() + "\n")
        context.load_cert_chain(name)
    finally:
        os.unlink(name)
    return context


def self_signed(domain: str) -> tuple[str, str]:
    """(certificate PEM, key PEM) for `domain` and `*.domain`, valid a year."""
    key = acme.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain), x509.DNSName(f"*.{domain}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode(), acme.key_pem(key)


class SniContexts:
    """The router's TLS context, and one context per custom domain with a
    certificate, reloaded by `refresh` when the state's certificates change."""

    def __init__(self, domain: str, work_dir: Path) -> None:
        self._work_dir = work_dir
        self._lock = threading.Lock()
        self._by_host: dict[str, ssl.SSLContext] = {}
        self._loaded: dict[str, str] = {}  # host -> the chain its context serves
        self.context = server_context(*self_signed(domain), work_dir)
        self.context.sni_callback = self._pick

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        """During the handshake, on the event loop: a dict lookup, nothing more."""
        if server_name:
            chosen = self._by_host.get(server_name.lower().rstrip("."))
            if chosen is not None:
                conn.context = chosen

    def refresh(self, snap: Snapshot) -> None:
        """Load the certificates that are new or renewed; drop those of removed domains."""
        with self._lock:
            wanted = {h: c for h, c in snap.certs.items() if c.get("chain") and c.get("key")}
            by_host = {h: c for h, c in self._by_host.items() if h in wanted}
            for host, cert in wanted.items():
                if self._loaded.get(host) == cert["chain"]:
                    continue
                try:
                    by_host[host] = server_context(cert["chain"], cert["key"], self._work_dir)
                except (ssl.SSLError, ValueError) as e:
                    log.warning("certificate of %s not served: %s", host, e)
                    continue
                self._loaded[host] = cert["chain"]
                log.info("serving the certificate of %s", host)
            self._loaded = {h: c for h, c in self._loaded.items() if h in by_host}
            self._by_host = by_host  # replaced whole: the handshake reads it without a lock
