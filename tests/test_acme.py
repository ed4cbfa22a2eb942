"""The ACME client's pieces: JWS with ES256, the key authorization, the CSR;
and the router's TLS contexts picking a certificate by SNI."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from peoplescloud import acme
from peoplescloud.certs import facts
from peoplescloud.state import Snapshot
from peoplescloud.tls import SniContexts, self_signed


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_es256(key: ec.EllipticCurvePrivateKey, data: bytes, signature: bytes) -> None:
    assert len(signature) == 64  # r || s, never DER
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    key.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_b64url_has_no_padding_and_is_url_safe():
    assert acme.b64url(b"\xfb\xff") == "-_8"
    assert acme.b64url(b"") == ""


def test_a_jws_signed_with_the_jwk_verifies_and_says_what_it_is_for():
    key = acme.new_key()
    body = json.loads(acme.jws(key, "https://ca/new-acct", "n0nce", {"a": 1}, kid=None))
    protected = json.loads(unb64(body["protected"]))
    assert protected == {
        "alg": "ES256",
        "nonce": "n0nce",
        "url": "https://ca/new-acct",
        "jwk": acme.jwk(key),
    }
    assert json.loads(unb64(body["payload"])) == {"a": 1}
    signed = f"{body['protected']}.{body['payload']}".encode()
    verify_es256(key, signed, unb64(body["signature"]))
    with pytest.raises(InvalidSignature):  # the signature covers the payload
        verify_es256(key, signed + b"x", unb64(body["signature"]))


def test_a_jws_with_a_kid_has_no_jwk_and_post_as_get_an_empty_payload():
    key = acme.new_key()
    body = json.loads(acme.jws(key, "https://ca/order/1", "n", None, kid="https://ca/acct/7"))
    protected = json.loads(unb64(body["protected"]))
    assert protected["kid"] == "https://ca/acct/7" and "jwk" not in protected
    assert body["payload"] == ""


def test_the_key_authorization_is_the_token_and_the_rfc7638_thumbprint():
    key = acme.new_key()
    public = key.public_key().public_numbers()
    jwk = acme.jwk(key)
    assert unb64(jwk["x"]) == public.x.to_bytes(32, "big")
    assert unb64(jwk["y"]) == public.y.to_bytes(32, "big")
    # RFC 7638: the required members in lexicographic order, no whitespace
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    print_ = acme.b64url(hashlib.sha256(canonical.encode()).digest())
    assert acme.key_authorization("tok-1", key) == f"tok-1.{print_}"


def test_keys_survive_the_state_as_pem():
    key = acme.new_key()
    again = acme.load_key(acme.key_pem(key))
    assert acme.jwk(again) == acme.jwk(key)


def test_the_csr_names_every_host_and_is_signed_by_the_new_key():
    key = acme.new_key()
    request = x509.load_der_x509_csr(acme.csr(["a.example.org", "b.example.org"], key))
    assert request.is_signature_valid
    names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["a.example.org", "b.example.org"]


def test_a_problem_names_the_failed_challenges_reason():
    authz = {"status": "invalid", "challenges": [{"error": {"detail": "connection refused"}}]}
    assert acme.problem_of(authz) == "connection refused"
    assert acme.problem_of({"status": "invalid"}) == "invalid"


def _handshake(port: int, name: str | None) -> x509.Certificate:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_sni_picks_a_domains_certificate_and_others_get_the_self_signed_one(tmp_path: Path):
    sni = SniContexts("apps.example.net", tmp_path / "tls")
    chain, key = self_signed("www.example.org")  # stands for a CA's certificate
    snap = Snapshot(certs={"www.example.org": {"app": "a", "chain": chain, "key": key}})
    sni.refresh(snap)
    assert list((tmp_path / "tls").iterdir()) == []  # no key left on disk
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve(count: int) -> None:
        for _ in range(count):
            conn, _addr = server.accept()
            try:
                with sni.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, args=(3,), daemon=True)
    thread.start()
    try:
        assert facts(chain)[1] == _handshake(port, "WWW.example.org").issuer.rfc4514_string()
        other = _handshake(port, "unknown.example.org")
        assert other.subject.rfc4514_string() == "CN=apps.example.net"
        sni.refresh(Snapshot())  # the domain went: its certificate is no longer served
        gone = _handshake(port, "www.example.org")
        assert gone.subject.rfc4514_string() == "CN=apps.example.net"
    finally:
        thread.join(10)
        server.close()


def test_a_refused_nonce_is_signed_again_and_a_problem_says_the_cas_reason():
    client = acme.AcmeClient.__new__(acme.AcmeClient)  # no directory to fetch
    client.key, client._kid, client._nonce = acme.new_key(), "https://ca/acct/1", ""
    client.directory = {"newNonce": "https://ca/nonce"}
    answers = [
        acme.Answer(200, {"replay-nonce": "n1"}, b""),  # HEAD newNonce
        acme.Answer(400, {"replay-nonce": "n2"}, json.dumps({"type": acme.BAD_NONCE}).encode()),
        acme.Answer(200, {"replay-nonce": "n3"}, b'{"status": "valid"}'),
        acme.Answer(403, {}, b'{"type": "urn:x:unauthorized", "detail": "no such account"}'),
    ]
    nonces = []

    def http(method: str, url: str, body: bytes | None = None) -> acme.Answer:
        if body:
            nonces.append(json.loads(unb64(json.loads(body)["protected"]))["nonce"])
        answer = answers.pop(0)
        client._nonce = answer.headers.get("replay-nonce", "")
        return answer

    client._http = http  # type: ignore[method-assign]
    assert client.post("https://ca/order/1").json() == {"status": "valid"}
    assert nonces == ["n1", "n2"]  # the second try signed the nonce the refusal carried
    with pytest.raises(acme.AcmeError, match=r"refused \(403\): no such account"):
        client.post("https://ca/order/1")
