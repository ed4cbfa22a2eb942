"""The certificate manager against a fake CA: what it orders and when, one node
per host at a time, failures kept with their reason; and two members adding
the same domain at once in the swarm's replicated state."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from peoplescloud import acme, certs
from peoplescloud.certs import CertManager, CertRecord
from peoplescloud.settings import TlsSettings
from peoplescloud.state import Snapshot, State, snapshot_from_dict
from peoplescloud.tls import self_signed
from swarm.replicated import SnapshotMachine, diff


class FakeCa:
    """Stands for AcmeClient + issue: records the orders, answers or refuses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, state: State) -> None:
        self.orders: list[str] = []
        self.refuse = ""
        self.during: list[object] = []  # what to do while an order runs
        self.state = state
        monkeypatch.setattr(certs.acme, "AcmeClient", lambda *_a, **_kw: object())
        monkeypatch.setattr(certs.acme, "issue", self.issue)

    def issue(self, _client, _contact, hosts, publish, withdraw, _timeout):  # type: ignore[no-untyped-def]
        self.orders.append(hosts[0])
        publish("tok", "tok.print")
        assert self.state.read().challenges["tok"]["answer"] == "tok.print"  # served meanwhile
        for action in self.during:
            action()  # type: ignore[operator]
        withdraw("tok")
        if self.refuse:
            raise acme.AcmeError(self.refuse)
        chain, key = self_signed(hosts[0])
        return chain, key


@pytest.fixture
def state(tmp_path: Path) -> State:
    s = State(tmp_path / "state.json")
    with s.change() as snap:
        snap.domains["a.example.org"] = "app"
        snap.certs["a.example.org"] = CertRecord(app="app").to_dict()
    return s


def manager(state: State, node: str = "n1") -> CertManager:
    return CertManager(state, node, TlsSettings(port=8443, renew_days=30))


def test_a_new_domain_is_ordered_once_and_served_from_the_state(state: State, monkeypatch):
    ca = FakeCa(monkeypatch, state)
    manager(state).tick()
    record = CertRecord.from_dict(state.read().certs["a.example.org"])
    assert ca.orders == ["a.example.org"]
    assert "BEGIN CERTIFICATE" in record.chain and "PRIVATE KEY" in record.key
    assert record.issuer == "CN=a.example.org" and record.orderer == ""
    assert state.read().challenges == {}  # withdrawn
    assert state.read().acme[TlsSettings().acme_directory]["key"]  # the account key, kept
    manager(state).tick()
    assert ca.orders == ["a.example.org"]  # valid for a year: nothing to do


def test_a_certificate_expiring_within_renew_days_is_renewed(state: State, monkeypatch):
    ca = FakeCa(monkeypatch, state)
    manager(state).tick()
    with state.change() as s:
        s.certs["a.example.org"]["not_after"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 29 * 86400)
        )
    manager(state).tick()
    assert ca.orders == ["a.example.org", "a.example.org"]


def test_a_host_another_node_is_ordering_is_left_alone(state: State, monkeypatch):
    ca = FakeCa(monkeypatch, state)
    with state.change() as s:
        s.certs["a.example.org"].update(orderer="n2", order_until=time.time() + 60)
    manager(state).tick()
    assert ca.orders == []
    assert "ordering on n2" in certs.describe(
        CertRecord.from_dict(state.read().certs["a.example.org"]), True
    )
    with state.change() as s:  # n2 died mid-order: its claim runs out
        s.certs["a.example.org"]["order_until"] = time.time() - 1
    manager(state).tick()
    assert ca.orders == ["a.example.org"]


def test_a_failed_order_keeps_its_reason_and_backs_off(state: State, monkeypatch):
    ca = FakeCa(monkeypatch, state)
    ca.refuse = "the CA refused (400): rejectedIdentifier"
    manager(state).tick()
    record = CertRecord.from_dict(state.read().certs["a.example.org"])
    assert record.reason == ca.refuse and record.failures == 1 and not record.chain
    assert record.next_try > time.time() + certs.FIRST_RETRY - 5
    manager(state).tick()
    assert ca.orders == ["a.example.org"]  # not before the back-off
    with state.change() as s:
        s.certs["a.example.org"]["next_try"] = 0
    ca.refuse = ""
    manager(state).tick()
    record = CertRecord.from_dict(state.read().certs["a.example.org"])
    assert record.chain and record.reason == "" and record.failures == 0


def test_a_domain_removed_while_its_order_runs_gets_no_certificate(state: State, monkeypatch):
    ca = FakeCa(monkeypatch, state)

    def remove() -> None:
        with state.change() as s:
            del s.domains["a.example.org"]
            del s.certs["a.example.org"]

    ca.during.append(remove)
    manager(state).tick()
    assert ca.orders == ["a.example.org"] and state.read().certs == {}


def test_two_members_adding_one_domain_at_once_conflict():
    """As swarm/replicated.py applies changes: each draft starts from the same
    state; the second change's entry no longer has the value it started from."""
    machine = SnapshotMachine()
    base = machine.read()[1]
    drafts = []
    for app in ("one", "two"):
        draft = snapshot_from_dict(base)
        draft.domains["www.example.org"] = app  # each member checked: free
        drafts.append(diff(base, asdict(draft)))
    assert machine.apply(drafts[0]) is not None
    assert machine.apply(drafts[1]) is None  # Conflict: nothing of it kept
    assert machine.read()[1]["domains"] == {"www.example.org": "one"}
    assert Snapshot().domains == {}


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"port": 70000}, r"\[tls\] port must be between 0 and 65535"),
        ({"acme_directory": "acme.example/dir"}, r"\[tls\] acme_directory .* must be a URL"),
        ({"contact": "not an address"}, r"\[tls\] contact .* must be an email address"),
        ({"ca_bundle": "/nonexistent.pem"}, r"\[tls\] ca_bundle /nonexistent.pem is no file"),
        ({"renew_days": 0}, r"\[tls\] renew_days must be at least 1"),
    ],
)
def test_bad_tls_settings_are_refused_with_the_settings_name(values: dict, why: str):
    from peoplescloud.errors import ConfigError

    with pytest.raises(ConfigError, match=why):
        TlsSettings(**values)


def test_tls_is_off_by_default_and_set_from_the_environment(tmp_path: Path, monkeypatch):
    from peoplescloud.settings import load

    assert load(tmp_path).tls.port == 0
    monkeypatch.setenv("PC_TLS_PORT", "8443")
    monkeypatch.setenv("PC_TLS_RENEW_DAYS", "20")
    tls = load(tmp_path).tls
    assert (tls.port, tls.renew_days) == (8443, 20)


def test_in_a_swarm_one_member_orders_and_every_member_answers_and_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Real Raft members on loopback: a domain added on one member routes on the
    others, the orderer's challenge answer is served by another member's router
    while the order runs, and the certificate reaches every member's TLS."""
    from peoplescloud.domains import HostTable
    from peoplescloud.tls import SniContexts
    from tests.test_replicated import Swarm, wait_for

    swarm = Swarm(tmp_path)
    try:
        a, b, c = swarm.start_all(3)
        with a.change() as s:
            s.domains["a.example.org"] = "app"
            s.certs["a.example.org"] = CertRecord(app="app").to_dict()
        on_c = HostTable(c)
        wait_for(lambda: on_c.app_for("a.example.org") == "app", "c routes a's domain")
        ca = FakeCa(monkeypatch, a)  # type: ignore[arg-type]
        seen_on_c: list[str | None] = []
        ca.during.append(lambda: seen_on_c.append(on_c.challenge("tok")))
        managers = [CertManager(m, n, TlsSettings(port=8443)) for m, n in ((a, "a"), (b, "b"))]
        threads = [threading.Thread(target=m.tick) for m in managers]  # at the same moment
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert ca.orders == ["a.example.org"]  # one order, whoever won the claim
        assert seen_on_c == ["tok.print"]  # c answered the CA while a member ordered
        sni = SniContexts("localhost", tmp_path / "tls")
        wait_for(lambda: c.read().certs["a.example.org"]["chain"], "the chain reaches c")
        sni.refresh(c.read())
        assert "a.example.org" in sni._by_host
    finally:
        swarm.close()


def test_a_stopping_node_gives_its_order_up_at_once_and_no_failure_is_kept(state: State):
    halt = threading.Event()
    tls = TlsSettings(port=8443, acme_directory="https://127.0.0.1:9/dir")  # never dialled
    m = CertManager(state, "n1", tls, halt)
    claim = m._claim

    def claim_then_stop(host: str, app: str) -> bool:
        claimed = claim(host, app)
        assert state.read().certs[host]["orderer"] == "n1"
        halt.set()  # the daemon stops as the order starts
        return claimed

    m._claim = claim_then_stop  # type: ignore[method-assign]
    m.tick()
    record = CertRecord.from_dict(state.read().certs["a.example.org"])
    assert record == CertRecord(app="app")  # the claim given back, no failure recorded
