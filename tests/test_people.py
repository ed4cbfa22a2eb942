"""People on a real Node (tests/test_node.py's fixture): who may use or own an app,
sharing and transfer, keys and users, and the audit trail."""

from __future__ import annotations

import asyncio
import base64

import pytest

from peoplescloud.errors import Forbidden, NotFound, PCError
from peoplescloud.service import Node
from peoplescloud.state import fingerprint, snapshot_from_dict
from tests.test_node import node  # noqa: F401 - the fixture

ANN_KEY = "ssh-ed25519 A"  # the fixture's (not real keys: fingerprints need real ones)


def key(n: int) -> str:
    """A syntactically real ed25519 public key line, distinct per `n`."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes([n]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} someone@host"


def logs(node: Node, user: str, app: str) -> list[str]:  # noqa: F811
    node.logbus.tail = lambda *_a: ["a line"]  # type: ignore[attr-defined]

    async def read() -> list[str]:
        return [line async for line in node.logs(user, app, 10, None, False)]

    return asyncio.run(read())


def test_a_collaborator_uses_an_app_but_does_not_own_it(node: Node):  # noqa: F811
    node.sharing_add("ann", "annbot", "bob")
    assert node.sharing("bob", "annbot") == ["bob"]
    node.config_set("bob", "annbot", {"X": "1"})
    assert node.config("bob", "annbot") == {"X": "1"}
    node.scale("bob", "annbot", {"bot": 2})
    node.restart("bob", "annbot", None)
    node.run("bob", "annbot", ["true"], lambda _b: None, None)
    node.rollback("bob", "annbot", "v1")
    assert node.releases("bob", "annbot")
    logs(node, "bob", "annbot")
    node.repo_for("bob", "annbot", write=True)  # may push
    rows = {r.name: r for r in node.apps("bob")}
    assert list(rows) == ["annbot"] and rows["annbot"].role == "collaborator"
    for owning in (
        lambda: node.destroy("bob", "annbot"),
        lambda: node.transfer("bob", "annbot", "bob"),
        lambda: node.sharing_add("bob", "annbot", "root"),
        lambda: node.sharing_remove("bob", "annbot", "bob"),
    ):
        with pytest.raises(Forbidden, match="only its owner ann or an admin"):
            owning()
    node.sharing_remove("ann", "annbot", "bob")
    with pytest.raises(NotFound, match="no app named 'annbot' of yours"):
        node.config("bob", "annbot")
    assert node.apps("bob") == []


def test_sharing_needs_a_user_and_an_owner_or_admin(node: Node):  # noqa: F811
    with pytest.raises(NotFound, match="no user named 'zed'"):
        node.sharing_add("ann", "annbot", "zed")
    with pytest.raises(NotFound, match="of yours"):  # bob, no role: as if it did not exist
        node.sharing_add("bob", "annbot", "bob")
    node.sharing_add("root", "annbot", "bob")  # an admin may
    with pytest.raises(PCError, match="already shares"):
        node.sharing_add("ann", "annbot", "bob")
    assert {r.role for r in node.apps("root")} == {"admin"}
    assert {r.role for r in node.apps("ann")} == {"owner"}


def test_transfer_gives_the_app_away(node: Node):  # noqa: F811
    node.sharing_add("ann", "annbot", "bob")
    node.transfer("ann", "annbot", "bob")
    a = node.state.read().apps["annbot"]
    assert (a.owner, a.collaborators) == ("bob", [])
    with pytest.raises(NotFound, match="of yours"):
        node.config("ann", "annbot")  # the former owner keeps nothing
    node.destroy("bob", "annbot")


def test_a_transfer_counts_against_the_new_owners_apps_quota(node: Node):  # noqa: F811
    with node.state.change() as s:
        s.quotas["bob"] = {"apps": 0}
    with pytest.raises(PCError, match=r"bob has 0 apps, their quota \(apps\)"):
        node.transfer("ann", "annbot", "bob")
    assert node.state.read().apps["annbot"].owner == "ann"


def test_keys_add_list_and_remove_but_never_the_last(node: Node):  # noqa: F811
    added = node.key_add("ann", key(1))
    assert added == fingerprint(key(1)) and added.startswith("SHA256:")
    assert [r.fingerprint for r in node.keys("ann")][1:] == [added]
    with pytest.raises(PCError, match="already belongs to ann"):
        node.key_add("bob", key(1))
    with pytest.raises(PCError, match="not an OpenSSH public key"):
        node.key_add("ann", "hello")
    with pytest.raises(NotFound, match="you have no key"):
        node.key_remove("bob", added)  # not bob's
    node.key_remove("ann", node.keys("ann")[0].fingerprint)
    assert [r.fingerprint for r in node.keys("ann")] == [added]
    with pytest.raises(PCError, match="your last key"):
        node.key_remove("ann", added)
    assert node.user_for_key(key(1)) == "ann"


def test_admins_add_and_remove_users_whose_keys_stop_at_once(node: Node):  # noqa: F811
    with pytest.raises(Forbidden, match="only the node's admins"):
        node.users("bob")
    with pytest.raises(Forbidden):
        node.user_add("bob", "eve", key(2), False)
    node.user_add("root", "eve", key(2), False)
    assert node.user_for_key(key(2)) == "eve"
    assert {u.name: u.apps for u in node.users("root")} == {"ann": 2, "bob": 0, "eve": 0, "root": 0}
    node.sharing_add("ann", "annbot", "eve")
    with pytest.raises(Forbidden):
        node.user_remove("bob", "eve")
    node.user_remove("root", "eve")
    assert node.user_for_key(key(2)) is None  # the next login is refused
    assert node.state.read().apps["annbot"].collaborators == []
    node.user_remove("root", "ann")
    assert node.user_for_key(ANN_KEY) is None
    owners = {r.name: r.owner for r in node.apps("root")}
    assert owners == {"annbot": "ann (removed)", "annbot-copy": "ann (removed)"}
    with pytest.raises(PCError, match="ann was removed and still owns annbot, annbot-copy"):
        node.user_add("root", "ann", key(3), False)  # a new ann would take the apps
    with pytest.raises(PCError, match="cannot remove yourself"):
        node.user_remove("root", "root")
    with pytest.raises(NotFound):
        node.config("ann", "annbot")  # a session opened before: no rights left


def test_events_record_who_did_what_without_values(node: Node):  # noqa: F811
    node.config_set("ann", "annbot", {"TOKEN": "s3cret-value"})
    node.scale("ann", "annbot", {"bot": 0})
    node.sharing_add("ann", "annbot", "bob")
    with pytest.raises(NotFound):
        node.destroy("root-less", "annbot-copy")  # refused: recorded
    node.refused_login(key(9))
    mine = [(e.user, e.app, e.what) for e in node.events("ann", None, 100)]
    assert ("ann", "annbot", "config: Set TOKEN") in mine
    assert ("ann", "annbot", "ps:scale bot=0") in mine
    assert ("ann", "annbot", "sharing:add bob") in mine
    assert ("root-less", "annbot-copy", "refused (own)") in mine
    everything = node.events("root", None, 100)
    assert f"refused login: key {fingerprint(key(9))}" in [e.what for e in everything]
    assert "s3cret-value" not in repr(node.state.read().events)
    # bob shares annbot only: its events, not annbot-copy's, nor the refused login
    assert {e.app for e in node.events("bob", None, 100)} == {"annbot"}
    assert [e.what for e in node.events("ann", "annbot", 1)] == ["sharing:add bob"]
    with pytest.raises(NotFound):
        node.events("bob", "annbot-copy", 10)


def test_refusals_are_rate_limited_and_events_bounded(node: Node, monkeypatch):  # noqa: F811
    for _ in range(50):
        node.refused_login(key(9))
    for n in range(50):
        node.refused_login(key(10 + n))
    refused = [e for e in node.state.read().events.values() if "refused login" in e["what"]]
    assert len(refused) == 30  # REFUSALS_PER_MINUTE: a stranger cannot flood the state
    with node.state.change() as s:
        s.events.clear()
    monkeypatch.setattr("peoplescloud.state.MAX_EVENTS", 5)
    node.scale("root", "annbot", {"bot": 1})
    node.sharing_add("ann", "annbot", "bob")
    for n in range(8):  # bob keeps busy: his own oldest events go, not the others'
        node.scale("bob", "annbot", {"bot": n % 2})
    events = [(e["user"], e["what"]) for e in node.state.read().events.values()]
    assert events[:2] == [("root", "ps:scale bot=1"), ("ann", "sharing:add bob")]
    assert len(events) == 5 and events[-1] == ("bob", "ps:scale bot=1")


def test_old_state_files_load():
    snap = snapshot_from_dict(
        {"users": {}, "apps": {"x": {"name": "x", "owner": "ann", "created": "t"}}}
    )
    assert snap.apps["x"].collaborators == [] and snap.events == {}
