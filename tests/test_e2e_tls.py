"""A custom domain and its certificate, end to end: a real node (ssh, git,
docker) and a real ACME CA on loopback (pebble, from scripts/install-pebble).

Pebble validates HTTP-01 for real: it resolves the test domains through a tiny
DNS responder of this test (`-dnsserver`: every name is 127.0.0.1, over TCP as
pebble asks) and fetches the challenge
from the node's router, its `httpPort`. Nothing here dials a public address.
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import socketserver
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from peoplescloud import acme
from tests.conftest import free_port, make_repo, pebble_bin, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.pebble]

HOST = "www.example.test"
BLOCKED = "blocked.example.test"  # pebble refuses to issue for it: a failure to show


def dns_answer(query: bytes) -> bytes | None:
    """The reply to one DNS query: 127.0.0.1 for an A question, no record otherwise."""
    if len(query) < 17:
        return None
    end = 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    question = query[12 : end + 5]
    qtype = int.from_bytes(query[end + 1 : end + 3], "big")
    record = b""
    if qtype == 1:  # A: name (a pointer to the question's), type, class, ttl, length, address
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([127, 0, 0, 1])
    counts = (1).to_bytes(2, "big") + (1 if record else 0).to_bytes(2, "big") + b"\0\0\0\0"
    return query[:2] + b"\x81\x80" + counts + question + record


class _DnsOverTcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while len(size := self._read(2)) == 2:
            query = self._read(int.from_bytes(size, "big"))
            if answer := dns_answer(query):
                self.request.sendall(len(answer).to_bytes(2, "big") + answer)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n and (chunk := self.request.recv(n - len(data))):
            data += chunk
        return data


@pytest.fixture
def dns() -> Iterator[int]:
    """A DNS responder on loopback, over TCP (pebble's resolver asks over TCP): its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DnsOverTcp)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def listener_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1, for pebble's own HTTPS:
    (CA PEM, cert PEM, key PEM). The node trusts the CA through [tls] ca_bundle."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = acme.new_key(), acme.new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ACME listener CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "listener-ca.pem", tmp / "listener.pem", tmp / "listener-key.pem")
    paths[0].write_bytes(ca.public_bytes(Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(Encoding.PEM))
    paths[2].write_text(acme.key_pem(key))
    return paths


def https_get(port: int, host: str, root_pem: str) -> tuple[int, str]:
    """GET / with SNI and Host `host` on 127.0.0.1:`port`, verifying the certificate
    against `root_pem` (http.client, on a socket opened to loopback ourselves)."""
    context = ssl.create_default_context(cadata=root_pem)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    conn.sock = context.wrap_socket(raw, server_hostname=host)
    try:
        conn.request("GET", "/")
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def http_get(port: int, host: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_custom_domain_gets_a_certificate_from_the_acme_ca(
    node_factory, tmp_path: Path, dns: int, monkeypatch: pytest.MonkeyPatch
):
    ca_pem, cert_pem, key_pem = listener_cert(tmp_path)
    acme_port, manage_port, tls_port = free_port(), free_port(), free_port()
    monkeypatch.setenv("PC_TLS_PORT", str(tls_port))
    monkeypatch.setenv("PC_TLS_ACME_DIRECTORY", f"https://127.0.0.1:{acme_port}/dir")
    monkeypatch.setenv("PC_TLS_CA_BUNDLE", str(ca_pem))
    monkeypatch.setenv("PC_TLS_CONTACT", "host@example.test")
    node = node_factory("docker", start=False)
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{manage_port}",
            "certificate": str(cert_pem),
            "privateKey": str(key_pem),
            "httpPort": node.router_port,  # HTTP-01 goes to the node's router
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "domainBlocklist": [BLOCKED],
            "retryAfter": {"authz": 1, "order": 1},
            "profiles": {"default": {"description": "test", "validityPeriod": 7776000}},
        }
    }
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    binary = pebble_bin()
    assert binary is not None
    pebble = subprocess.Popen(
        [binary, "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
        env={"PEBBLE_VA_NOSLEEP": "1", "PATH": "/usr/bin:/bin"},
        stdout=open(tmp_path / "pebble.log", "w"),  # noqa: SIM115 - pebble owns it
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _listens(acme_port), what="pebble", timeout=30)
        node.start()
        _scenario(node, tmp_path, ca_pem, manage_port, tls_port)
    finally:
        pebble.terminate()
        pebble.wait(10)
        print((tmp_path / "pebble.log").read_text()[-3000:])


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _scenario(node, tmp_path: Path, ca_pem: Path, manage_port: int, tls_port: int) -> None:  # type: ignore[no-untyped-def]
    work = make_repo(tmp_path, "procfile-two")
    r = node.git(work, "push", node.remote("tlsapp"), "main")
    assert r.returncode == 0, r.stderr
    assert node.ssh("ps:scale", "tlsapp", "worker=0").returncode == 0

    r = node.ssh("domains:add", "tlsapp", "WWW.example.test")
    assert r.returncode == 0, r.stderr
    assert node.ssh("domains", "tlsapp").stdout.split() == [HOST]
    assert HOST in node.ssh("apps:info", "tlsapp").stdout
    assert http_get(node.router_port, HOST) == (200, "hello from web.1\n")

    # Taken: refused in one line (the test's user is an admin: told which app has it).
    assert node.ssh("apps:create", "other").returncode == 0
    r = node.ssh("domains:add", "other", HOST)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f" !     {HOST} belongs to another app (tlsapp): its owner must remove it first"
    ]

    # Issued by pebble in the background, after validating HTTP-01 against the router.
    def issued() -> str:
        out = node.ssh("certs", "tlsapp").stdout
        return out if "valid" in out and "Pebble" in out else ""

    table = wait_for(issued, what="the certificate", timeout=180, interval=1)
    assert HOST in table
    print(table)  # what a user sees (README's example)
    context = ssl.create_default_context(cafile=str(ca_pem))
    with urllib.request.urlopen(
        f"https://127.0.0.1:{manage_port}/roots/0", context=context, timeout=10
    ) as r:
        root = r.read().decode()
    # Every node serves it from the state; this one within a couple of seconds.
    answer = wait_for(lambda: _try_https(tls_port, HOST, root), what="HTTPS", timeout=30)
    assert answer == (200, "hello from web.1\n")

    # A name the CA refuses: the reason shows in `certs`.
    assert node.ssh("domains:add", "tlsapp", BLOCKED).returncode == 0
    failed = wait_for(
        lambda: "failed:" in (out := node.ssh("certs", "tlsapp").stdout) and out,
        what="the refusal",
        timeout=120,
        interval=1,
    )
    assert "forbidden by policy" in failed

    # Removed: no longer routed, and its certificate no longer served.
    assert node.ssh("domains:remove", "tlsapp", HOST).returncode == 0
    # The HTTP port's nginx front learns it at its next reload (within a second).
    wait_for(lambda: http_get(node.router_port, HOST)[0] == 404, what="404", timeout=5)
    wait_for(lambda: _try_https(tls_port, HOST, root) is None, what="the certificate gone")
    whats = node.ssh("events", "tlsapp").stdout
    assert f"domains:add {HOST}" in whats and f"domains:remove {HOST}" in whats


def _try_https(port: int, host: str, root: str) -> tuple[int, str] | None:
    """The answer, or None when the certificate does not verify (yet, or any more)."""
    try:
        return https_get(port, host, root)
    except ssl.SSLCertVerificationError:
        return None
