"""Invite tokens: format, parsing of garbage, and the rules of redeeming (pure logic)."""

import base64
import hashlib
import json

import pytest

from swarm.invite import (
    PREFIX,
    InviteError,
    InviteRecord,
    make_invite,
    parse_invite,
    redeem,
    usable,
)

NOW = 1_800_000_000


def test_token_roundtrip_and_record_keeps_only_a_hash():
    token, record = make_invite("swarm-abc", "10.0.0.5:7001", ttl_seconds=3600, now=NOW)
    assert token.startswith(PREFIX) and "=" not in token
    assert token.split() == [token]  # one copy-pasteable line
    invite = parse_invite(f"  {token}\n")  # as pasted from a terminal
    assert (invite.swarm_id, invite.address, invite.expires) == (
        "swarm-abc",
        "10.0.0.5:7001",
        NOW + 3600,
    )
    assert invite.invite_id == record.invite_id
    assert record.expires == NOW + 3600 and record.used_at is None
    assert record.secret_sha256 == hashlib.sha256(invite.secret.encode()).hexdigest()
    assert invite.secret not in json.dumps(record.to_dict())
    assert invite.key == record.key
    assert InviteRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_every_invite_is_different():
    (t1, r1), (t2, r2) = (make_invite("s", "h:1", 60, NOW) for _ in range(2))
    assert t1 != t2 and r1.invite_id != r2.invite_id and r1.key != r2.key
    assert parse_invite(t1).secret != parse_invite(t2).secret


def test_ipv6_address():
    token, _ = make_invite("s", "[::1]:7001", 60, NOW)
    assert parse_invite(token).address == "[::1]:7001"


@pytest.mark.parametrize("address", ["", "nohost", "host:", "host:0", "host:70000", "a b:1"])
def test_make_invite_refuses_bad_address(address):
    with pytest.raises(InviteError, match="invalid peer address"):
        make_invite("s", address, 60, NOW)


def test_make_invite_refuses_non_positive_ttl():
    with pytest.raises(InviteError, match="positive"):
        make_invite("s", "h:1", 0, NOW)


def _token(payload: object) -> str:
    raw = json.dumps(payload).encode()
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


GOOD = {"s": "swarm", "a": "h:1", "i": "abcd", "k": "secret", "e": NOW}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "not a People's Cloud invite token (it should start with pcjoin1.)"),
        ("hello world", "not a People's Cloud invite token"),
        ("ssh-ed25519 AAAAC3Nza", "not a People's Cloud invite token"),
        ("pcjoin2.eyJ9", "another version of People's Cloud (pcjoin2.)"),
        (PREFIX, "damaged"),
        (PREFIX + "!!!!", "damaged"),
        (PREFIX + "e", "damaged"),  # base64 of a lone char
        (PREFIX + base64.urlsafe_b64encode(b"not json").decode(), "damaged"),
        (_token([1, 2]), "damaged"),
        (_token({k: v for k, v in GOOD.items() if k != "k"}), "damaged"),
        (_token({**GOOD, "x": 1}), "damaged"),
        (_token({**GOOD, "e": "tomorrow"}), "damaged"),
        (_token({**GOOD, "k": ""}), "damaged"),
        (_token({**GOOD, "a": "nowhere"}), "invalid peer address"),
    ],
)
def test_garbage_tokens_get_a_clear_message(token, message):
    with pytest.raises(InviteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_invite(token)


def test_truncated_token_is_damaged():
    token, _ = make_invite("swarm-abc", "10.0.0.5:7001", 3600, NOW)
    with pytest.raises(InviteError, match="damaged: was it copied completely"):
        parse_invite(token[:-10])


def test_redeem_marks_used_and_is_pure():
    _, record = make_invite("s", "h:1", 60, NOW)
    records = {record.invite_id: record}
    used = redeem(records, record.invite_id, NOW + 10, by="node4")
    assert (used.used_at, used.used_by) == (NOW + 10, "node4")
    assert records[record.invite_id] is record and record.used_at is None  # caller commits
    assert (used.key, used.expires) == (record.key, record.expires)


def test_used_invite_is_refused():
    _, record = make_invite("s", "h:1", 60, NOW)
    records = {record.invite_id: redeem({record.invite_id: record}, record.invite_id, NOW, "n4")}
    with pytest.raises(InviteError, match="this invite was already used by n4 at 2027-"):
        redeem(records, record.invite_id, NOW + 1, by="n5")
    with pytest.raises(InviteError, match="already used"):
        usable(records, record.invite_id, NOW + 1)


def test_expired_invite_is_refused():
    _, record = make_invite("s", "h:1", 60, NOW)
    records = {record.invite_id: record}
    assert usable(records, record.invite_id, NOW + 59) == record
    with pytest.raises(InviteError, match=r"this invite expired at 2027-01-15 08:01:00 UTC: ask"):
        redeem(records, record.invite_id, NOW + 60, by="n4")


def test_unknown_invite_is_refused():
    with pytest.raises(
        InviteError, match="unknown invite: ask for a new one with `pc swarm invite`"
    ):
        redeem({}, "nope", NOW, by="n4")
