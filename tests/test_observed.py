"""Members' reports of their instances, read by any node (pure functions)."""

from peoplescloud.runtime.base import InstanceStatus
from peoplescloud.state import App, Member, Snapshot
from swarm.observed import (
    failure_elsewhere,
    instances_elsewhere,
    report,
    running_elsewhere,
    web_nodes_elsewhere,
)

NOW = 1_000_000.0


def snapshot(n2_lease: float = NOW + 4) -> Snapshot:
    snap = Snapshot()
    snap.members = {
        "n1": Member("n1", 2048, 1.0, 20, lease_expires=NOW + 4),
        "n2": Member("n2", 2048, 1.0, 20, lease_expires=n2_lease),
    }
    app = App(name="mybot", owner="ann", created="t", scale={"bot": 2, "web": 1})
    app.placement = {"bot.1": "n2", "bot.2": "n2", "web.1": "n1"}
    snap.apps["mybot"] = app
    bot1 = InstanceStatus("mybot", "bot.1", "v3", True, None, "t0", "")
    snap.observed["n2"] = report(
        {("mybot", "bot.1"): bot1},
        {("mybot", "bot.1"): "ignored: it runs", ("mybot", "bot.2"): "slug x: no holder"},
    )
    return snap


def test_a_report_holds_instances_and_why_the_others_do_not_run():
    assert snapshot().observed["n2"] == {
        "mybot/bot.1": {
            "release": "v3",
            "running": True,
            "exit_code": None,
            "started_at": "t0",
            "address": "",
        },
        "mybot/bot.2": {"why": "slug x: no holder"},
    }


def test_any_node_sees_where_instances_run_and_why_one_does_not():
    snap = snapshot()
    assert [k.slot for k in instances_elsewhere(snap, "n1", NOW)] == [("mybot", "bot.1")]
    assert running_elsewhere(snap, "n1", NOW) == {("mybot", "bot.1")}
    assert failure_elsewhere(snap, "n1", "mybot", "bot.2", NOW) == "n2: slug x: no holder"
    assert failure_elsewhere(snap, "n1", "mybot", "bot.1", NOW) == ""
    assert failure_elsewhere(snap, "n2", "mybot", "bot.2", NOW) == ""  # n2 asks its reconciler
    assert failure_elsewhere(snap, "n1", "ghost", "bot.1", NOW) == ""


def test_reports_of_a_member_whose_lease_ended_do_not_count():
    snap = snapshot(n2_lease=NOW - 1)
    assert instances_elsewhere(snap, "n1", NOW) == {}
    assert running_elsewhere(snap, "n1", NOW) == set()
    assert failure_elsewhere(snap, "n1", "mybot", "bot.2", NOW) == ""


def test_an_instance_placed_elsewhere_now_is_not_reported_where_it_ran():
    snap = snapshot()
    snap.apps["mybot"].placement["bot.1"] = "n1"
    assert instances_elsewhere(snap, "n1", NOW) == {}
    assert running_elsewhere(snap, "n1", NOW) == {("mybot", "bot.1")}  # still stopping there


def test_routers_see_which_siblings_run_a_web_instance():
    snap = snapshot()
    assert web_nodes_elsewhere(snap, "n1", NOW, "mybot") == set()  # bots only so far
    web = InstanceStatus("mybot", "web.1", "v3", True, None, "t0", "127.0.0.1:5000")
    snap.observed["n2"] = report({("mybot", "web.1"): web}, {})
    assert web_nodes_elsewhere(snap, "n1", NOW, "mybot") == {"n2"}
    assert web_nodes_elsewhere(snap, "n2", NOW, "mybot") == set()  # its own: not elsewhere
    assert web_nodes_elsewhere(snap, "n1", NOW, "other") == set()
