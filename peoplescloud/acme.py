"""A small ACME client (RFC 8555): one account key (ECDSA P-256, JWS ES256),
certificates for names proven by HTTP-01.

`issue()` is the whole order: account, order, each authorization's HTTP-01
challenge (the answer published through `publish` so that any node's router
can serve it), finalize with a CSR, download the chain. Blocking (urllib): run
it in a worker thread. Errors are `AcmeError` with the CA's own reason.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from peoplescloud.errors import PCError

HTTP_TIMEOUT = 30  # seconds for one request to the CA
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
NONCE_RETRIES = 5  # a CA may refuse a good nonce now and then (RFC 8555 6.5): sign again


class AcmeError(PCError):
    """The CA refused, failed, or did not answer (the reason is the CA's own)."""


class Stopped(AcmeError):
    """The node is stopping: the order was given up between two requests."""


# --- JWS pieces (RFC 7515, 7518, 7638) -------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError("the stored ACME key is not an ECDSA key")
    return key


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public key as a JWK, members in the order RFC 7638 hashes them."""
    numbers = key.public_key().public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638: SHA-256 of the JWK's required members, sorted, no whitespace."""
    canonical = json.dumps(jwk(key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def key_authorization(token: str, key: ec.EllipticCurvePrivateKey) -> str:
    """What the HTTP-01 resource must answer (RFC 8555 8.1)."""
    return f"{token}.{thumbprint(key)}"


def sign_es256(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ES256 as JWS wants it: r and s, 32 bytes each (not DER)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def jws(
    key: ec.EllipticCurvePrivateKey, url: str, nonce: str, payload: Any, kid: str | None
) -> bytes:
    """A flattened JWS body. `payload` None: POST-as-GET (an empty payload)."""
    protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
    if kid:
        protected["kid"] = kid
    else:
        protected["jwk"] = jwk(key)
    head = b64url(json.dumps(protected).encode())
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    signature = sign_es256(key, f"{head}.{body}".encode())
    return json.dumps({"protected": head, "payload": body, "signature": b64url(signature)}).encode()


def csr(hosts: list[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DER certificate request for `hosts` (the first also the subject's CN)."""
    names = [x509.DNSName(h) for h in hosts]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


# --- the protocol ----------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            raise AcmeError(f"the CA answered {self.status} with no JSON") from None
        return data if isinstance(data, dict) else {}


class AcmeClient:
    """One account at one CA directory."""

    def __init__(
        self,
        directory: str,
        key: ec.EllipticCurvePrivateKey,
        ca_bundle: str = "",
        halt: threading.Event | None = None,
    ) -> None:
        self.key = key
        self.halt = halt or threading.Event()  # set: give up before the next request
        self._tls = ssl.create_default_context(cafile=ca_bundle or None)
        self._nonce = ""
        self._kid: str | None = None
        self.directory = self._http("GET", directory).json()
        for name in ("newNonce", "newAccount", "newOrder"):
            if not isinstance(self.directory.get(name), str):
                raise AcmeError(f"{directory} is no ACME directory (no {name})")

    def _http(self, method: str, url: str, body: bytes | None = None) -> Answer:
        if self.halt.is_set():  # a stopping daemon waits for one request at most
            raise Stopped("the node is stopping")
        headers = {"User-Agent": "peoplescloud-acme/1"}
        if body is not None:
            headers["Content-Type"] = "application/jose+json"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT, context=self._tls) as r:
                answer = Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
        except urllib.error.HTTPError as e:
            answer = Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise AcmeError(f"the CA at {url} did not answer: {e}") from None
        if "replay-nonce" in answer.headers:
            self._nonce = answer.headers["replay-nonce"]
        return answer

    def post(self, url: str, payload: Any = None) -> Answer:
        """A signed POST (`payload` None: POST-as-GET); raises AcmeError on a problem."""
        for _ in range(NONCE_RETRIES):
            if not self._nonce:
                self._http("HEAD", self.directory["newNonce"])
            nonce, self._nonce = self._nonce, ""
            answer = self._http("POST", url, jws(self.key, url, nonce, payload, self._kid))
            if answer.status < 400:
                return answer
            problem = answer.json()
            if problem.get("type") != BAD_NONCE:
                detail = (
                    problem.get("detail")
                    or problem.get("type")
                    or answer.body[:200].decode(errors="replace")
                )
                raise AcmeError(f"the CA refused ({answer.status}): {detail}")
        raise AcmeError("the CA kept refusing this client's nonces")

    def account(self, contact: str) -> str:
        """Register (or find again: the key is the account) and sign as it from now on."""
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = [f"mailto:{contact}"]
        answer = self.post(self.directory["newAccount"], payload)
        self._kid = answer.headers.get("location")
        if not self._kid:
            raise AcmeError("the CA made the account but did not say its URL")
        return self._kid

    def wait(self, url: str, pending: set[str], deadline: float) -> dict[str, Any]:
        """POST-as-GET `url` until its status leaves `pending` (or `deadline`)."""
        while True:
            answer = self.post(url)
            data = answer.json()
            if data.get("status") not in pending:
                return data
            if time.monotonic() > deadline:
                raise AcmeError(f"the CA did not finish in time (still {data.get('status')})")
            retry = answer.headers.get("retry-after", "1")
            time.sleep(min(max(float(retry) if retry.isdigit() else 1.0, 0.2), 5.0))


def problem_of(resource: dict[str, Any]) -> str:
    """The reason a failed authorization or order carries, in one line."""
    for challenge in resource.get("challenges", []):
        if error := challenge.get("error"):
            return str(error.get("detail") or error.get("type"))
    error = resource.get("error") or {}
    return str(error.get("detail") or error.get("type") or resource.get("status"))


def issue(
    client: AcmeClient,
    contact: str,
    hosts: list[str],
    publish: Callable[[str, str], None],
    withdraw: Callable[[str], None],
    timeout: float = 300,
) -> tuple[str, str]:
    """Order a certificate for `hosts`; (chain PEM, private key PEM). `publish(token,
    answer)` must make every router answer the challenge before it returns;
    `withdraw(token)` is called when it is no longer needed."""
    deadline = time.monotonic() + timeout
    client.account(contact)
    answer = client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": h} for h in hosts]},
    )
    order_url = answer.headers.get("location", "")
    if not order_url:
        raise AcmeError("the CA made the order but did not say its URL")
    order = answer.json()
    for authz_url in order.get("authorizations", []):
        authz = client.post(authz_url).json()
        if authz.get("status") == "valid":  # proven recently for this account
            continue
        http01 = [c for c in authz.get("challenges", []) if c.get("type") == "http-01"]
        if not http01:
            raise AcmeError(f"the CA offers no HTTP-01 challenge for {authz.get('identifier')}")
        token = str(http01[0]["token"])
        publish(token, key_authorization(token, client.key))
        try:
            client.post(http01[0]["url"], {})
            authz = client.wait(authz_url, {"pending", "processing"}, deadline)
        finally:
            withdraw(token)
        if authz.get("status") != "valid":
            raise AcmeError(f"{authz['identifier']['value']} not proven: {problem_of(authz)}")
    key = new_key()
    order = client.wait(order_url, {"pending"}, deadline)  # "ready" once proven
    client.post(order["finalize"], {"csr": b64url(csr(hosts, key))})
    order = client.wait(order_url, {"ready", "processing"}, deadline)
    if order.get("status") != "valid" or not order.get("certificate"):
        raise AcmeError(f"the order ended {order.get('status')}: {problem_of(order)}")
    chain = client.post(order["certificate"]).body.decode()
    if "BEGIN CERTIFICATE" not in chain:
        raise AcmeError("the CA's certificate download holds no PEM certificate")
    return chain, key_pem(key)
