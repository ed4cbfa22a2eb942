"""The daemon's side of the dashboard on a real Node (in-memory runtime): the
local API on its Unix socket, `dashboard:login`'s link, and the supervisor
that keeps gunicorn running."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.local import LocalAPI
from peoplescloud import dashboard_process
from peoplescloud.dashboard_api import start_api
from peoplescloud.errors import PCError
from peoplescloud.service import Node
from peoplescloud.settings import Settings
from tests.test_node import node  # noqa: F401 - the fixture

SECRET = "value-that-never-leaves-0451"


def with_api(node: Node, tmp_path: Path, calls) -> None:  # noqa: F811
    """Serve the API on a socket, run `calls(api, path)` in a thread against it."""
    path = tmp_path / "run" / "api.sock"

    async def main() -> None:
        runner = await start_api(node, path)
        try:
            await asyncio.to_thread(calls, LocalAPI(str(path)), path)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def session_of(node: Node, user: str) -> str:  # noqa: F811
    _, session, _ = node.sessions.exchange(node.sessions.new_login(user))
    return session


def test_the_socket_is_the_daemons_users_only(node: Node, tmp_path: Path):  # noqa: F811
    def calls(api: LocalAPI, path: Path) -> None:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    with_api(node, tmp_path, calls)


def test_login_and_sessions(node: Node, tmp_path: Path):  # noqa: F811
    link = node.dashboard_login("ann")
    assert link.startswith("http://127.0.0.1:8800/login?token=")
    token = link.rsplit("=", 1)[1]

    def calls(api: LocalAPI, path: Path) -> None:
        assert api.call("GET", "/apps")[0] == 401
        assert api.call("GET", "/apps", token)[0] == 401  # a login token is no session
        status, answer = api.call("POST", "/login", None, {"token": token})
        assert status == 200 and answer["user"] == "ann"
        assert api.call("POST", "/login", None, {"token": token})[0] == 403  # once
        session = answer["session"]
        status, apps = api.call("GET", "/apps", session)
        assert status == 200 and {a["name"] for a in apps} == {"annbot", "annbot-copy"}
        assert api.call("GET", "/whoami", session)[1]["user"] == "ann"
        assert api.call("POST", "/logout", session)[0] == 200
        assert api.call("GET", "/apps", session)[0] == 401

    with_api(node, tmp_path, calls)


def test_another_users_app_answers_as_a_missing_one(node: Node, tmp_path: Path):  # noqa: F811
    bob = session_of(node, "bob")

    def calls(api: LocalAPI, path: Path) -> None:
        assert api.call("GET", "/apps", bob) == (200, [])
        for suffix, method, body in [
            ("", "GET", None),
            ("/logs?tail=5", "GET", None),
            ("/restart", "POST", {}),
            ("/scale", "POST", {"counts": {"bot": 2}}),
            ("/rollback", "POST", {"version": "v1"}),
        ]:
            theirs = api.call(method, f"/apps/annbot{suffix}", bob, body)
            missing = api.call(method, f"/apps/nosuch{suffix}", bob, body)
            assert theirs[0] == missing[0] == 404, suffix
            assert theirs[1]["error"].replace("annbot", "X") == missing[1]["error"].replace(
                "nosuch", "X"
            )
        assert node.state.read().apps["annbot"].scale == {"bot": 1}

    with_api(node, tmp_path, calls)


def test_config_names_only_and_actions(node: Node, tmp_path: Path):  # noqa: F811
    node.config_set("ann", "annbot", {"API_TOKEN": SECRET})
    node.logbus.tail = lambda app, n, ptype: ["2026-11-30T12:00:00Z app[bot.1]: hi"]  # type: ignore[attr-defined]
    ann = session_of(node, "ann")
    answers: list[str] = []

    def calls(api: LocalAPI, path: Path) -> None:
        status, detail = api.call("GET", "/apps/annbot", ann)
        assert status == 200 and detail["config"] == ["API_TOKEN"]
        answers.append(repr(detail))
        answers.append(repr(api.call("GET", "/apps", ann)))
        answers.append(repr(api.call("GET", "/nodes", ann)))
        answers.append(repr(api.call("GET", "/apps/annbot/events", ann)))
        answers.append(repr(api.call("GET", "/series", ann)))
        assert "API_TOKEN" in answers[-2]  # the event names the key, never its value
        logs = api.call("GET", "/apps/annbot/logs?tail=5", ann)
        assert logs == (200, {"lines": ["2026-11-30T12:00:00Z app[bot.1]: hi"]})
        answers.append(repr(logs))
        assert api.call("POST", "/apps/annbot/scale", ann, {"counts": {"bot": 2}})[0] == 200
        assert node.state.read().apps["annbot"].scale == {"bot": 2}
        assert api.call("POST", "/apps/annbot/scale", ann, {"counts": {"bot": "2"}})[0] == 400
        assert api.call("POST", "/apps/annbot/scale", ann, ["x"])[0] == 400
        assert api.call("POST", "/apps/annbot/restart", ann, {})[0] == 200
        status, answer = api.call("POST", "/apps/annbot/rollback", ann, {"version": "v1"})
        assert status == 200 and answer["release"].startswith("v")
        assert api.call("GET", "/apps/annbot/logs?tail=x", ann)[0] == 400

    with_api(node, tmp_path, calls)
    assert all(SECRET not in a for a in answers)


def test_no_dashboard_no_link(tmp_path: Path, node: Node):  # noqa: F811
    node.settings = Settings(home=tmp_path, name="n1", dashboard_port=0)
    with pytest.raises(PCError, match="no dashboard"):
        node.dashboard_login("ann")


def test_a_dying_gunicorn_is_started_again_with_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runs = tmp_path / "runs"
    script = f"import sys; open({str(runs)!r}, 'a').write('x'); sys.exit(3)"
    monkeypatch.setattr(dashboard_process, "command", lambda s, p: [sys.executable, "-c", script])
    monkeypatch.setattr(dashboard_process, "FIRST_BACKOFF", 0.05)
    settings = Settings(home=tmp_path, name="n1")

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(dashboard_process.supervise(settings, tmp_path, stop))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if runs.exists() and len(runs.read_text()) >= 3:
                break
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert len(runs.read_text()) >= 3  # 0.05 + 0.1 + 0.2 s of back-off: at least three runs


def test_gunicorn_stops_with_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pidfile = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    monkeypatch.setattr(dashboard_process, "command", lambda s, p: [sys.executable, "-c", script])
    settings = Settings(home=tmp_path, name="n1")
    sleeper = "import time; time.sleep(60)"
    leftover = subprocess.Popen(
        [sys.executable, "-c", sleeper, "gunicorn", "dashboard.app:create_app()"]
    )
    settings.run_dir.mkdir()
    dashboard_process.pidfile(settings).write_text(str(leftover.pid))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(dashboard_process.supervise(settings, tmp_path, stop))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if pidfile.exists() and pidfile.read_text():
                break
        assert leftover.poll() is not None  # a killed daemon's gunicorn went first
        stop.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(main())
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_gunicorn_a_killed_daemon_left_is_stopped(tmp_path: Path):
    sleeper = "import time; time.sleep(60)"
    left = subprocess.Popen(
        [sys.executable, "-c", sleeper, "gunicorn", "dashboard.app:create_app()"]
    )
    other = subprocess.Popen([sys.executable, "-c", sleeper])
    try:
        pidfile = tmp_path / "dashboard.pid"
        pidfile.write_text(str(other.pid))
        dashboard_process.stop_leftover(pidfile)
        assert other.poll() is None  # not a dashboard: left alone
        pidfile.write_text(f"{left.pid}\n")
        dashboard_process.stop_leftover(pidfile)
        assert left.wait(5) is not None
    finally:
        for proc in (left, other):
            proc.kill()
            proc.wait()


def test_sharing_events_resources_with_the_ssh_permissions(node: Node, tmp_path: Path):  # noqa: F811
    ann, bob, root = (session_of(node, u) for u in ("ann", "bob", "root"))
    node.logbus.tail = lambda app, n, ptype: []  # type: ignore[attr-defined]
    node.restart("ann", "annbot", None)

    def calls(api: LocalAPI, path: Path) -> None:
        status, detail = api.call("GET", "/apps/annbot", ann)
        assert status == 200
        assert detail["sharing"] == {"owner": "ann", "collaborators": [], "may_change": True}
        assert [r["ptype"] for r in detail["resources"]] == ["bot"]
        assert detail["events"][0]["what"] == "ps:restart"
        # bob: not his; the same answer as a missing app, for each new call
        for method, suffix, body in [
            ("GET", "/events", None),
            ("POST", "/sharing", {"add": "bob"}),
        ]:
            theirs = api.call(method, f"/apps/annbot{suffix}", bob, body)
            missing = api.call(method, f"/apps/nosuch{suffix}", bob, body)
            assert theirs[0] == missing[0] == 404
        # ann shares it with bob; bob sees it but may not change who shares it
        status, answer = api.call("POST", "/apps/annbot/sharing", ann, {"add": "bob"})
        assert status == 200 and answer["collaborators"] == ["bob"]
        status, detail = api.call("GET", "/apps/annbot", bob)
        assert status == 200 and detail["sharing"]["may_change"] is False
        status, answer = api.call("POST", "/apps/annbot/sharing", bob, {"remove": "bob"})
        assert status == 403 and "only its owner ann or an admin" in answer["error"]
        assert api.call("POST", "/apps/annbot/sharing", ann, {"add": 3})[0] == 400
        assert api.call("POST", "/apps/annbot/sharing", ann, {"add": "nobody"})[0] == 404
        # root (admin) removes him; newest event first
        assert api.call("POST", "/apps/annbot/sharing", root, {"remove": "bob"})[0] == 200
        status, events = api.call("GET", "/apps/annbot/events?n=2", ann)
        assert status == 200
        assert [e["what"] for e in events["events"]] == ["sharing:remove bob", "sharing:add bob"]
        assert api.call("GET", "/apps/annbot/events?n=x", ann)[0] == 400
        detail = api.call("GET", "/apps/annbot", ann)[1]
        assert [e["what"] for e in detail["events"]][:2] == [
            "sharing:remove bob",
            "sharing:add bob",
        ]

    with_api(node, tmp_path, calls)


def test_users_and_quotas_are_for_admins(node: Node, tmp_path: Path):  # noqa: F811
    ann, root = session_of(node, "ann"), session_of(node, "root")

    def calls(api: LocalAPI, path: Path) -> None:
        assert api.call("GET", "/whoami", ann)[1]["admin"] is False
        assert api.call("GET", "/whoami", root)[1]["admin"] is True
        for what in ("/users", "/quotas"):
            status, answer = api.call("GET", what, ann)
            assert status == 403 and answer["error"].startswith("only the node's admins")
        status, users = api.call("GET", "/users", root)
        assert status == 200
        assert {u["name"]: (u["admin"], u["keys"], u["apps"]) for u in users} == {
            "ann": (False, 1, 2), "bob": (False, 1, 0), "root": (True, 1, 0)
        }  # fmt: skip
        status, quotas = api.call("GET", "/quotas", root)
        assert status == 200 and [q["user"] for q in quotas] == ["ann", "bob", "root"]
        apps = [q for q in quotas[0]["quotas"] if q["name"] == "apps"][0]
        assert apps["used"] == 2 and apps["limit"] >= 2

    with_api(node, tmp_path, calls)


def test_the_usage_series_is_bounded_and_served(node: Node, tmp_path: Path):  # noqa: F811
    from peoplescloud.dashboard_api import SAMPLES, UsageSeries

    node.reconciler.reconcile()
    series = UsageSeries(node, clock=lambda: 1000.0)
    first = series.sample()
    running = [s for s in node.reconciler.instances().values() if s.running]
    assert first["instances"] == len(running)
    assert first["memory_mb"] == len(running) * node.settings.shares.instance_memory_mb
    for _ in range(SAMPLES + 5):
        series.sample()
    assert len(series.samples) == SAMPLES


def test_removing_a_user_ends_their_dashboard_sessions(node: Node):  # noqa: F811
    session = session_of(node, "bob")
    link = node.sessions.new_login("bob")
    assert node.sessions.user_of(session) == "bob"
    node.user_remove("root", "bob")
    assert node.sessions.user_of(session) is None
    with pytest.raises(PCError):
        node.sessions.exchange(link)


@pytest.mark.parametrize(
    ("listen", "bind"), [("127.0.0.1", "127.0.0.1:8800"), ("::1", "[::1]:8800")]
)
def test_gunicorn_binds_the_dashboard_address_and_port_once(tmp_path: Path, listen: str, bind: str):
    settings = Settings(home=tmp_path, dashboard_port=8800, dashboard_listen=listen)
    argv = dashboard_process.command(settings, tmp_path / "api.sock")
    assert argv[argv.index("--bind") + 1] == bind
