"""The dashboard's Flask app with a fake local API (Flask's test client), and the
daemon's session store: login, cookie flags, CSRF, Bearer, permissions, and no
secret value in any page or answer."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dashboard.app import COOKIE, create_app, csrf_for
from peoplescloud.errors import Forbidden
from peoplescloud.service.dashboard import Sessions

SECRET = "s3cret-value-0xC0FFEE"


class FakeAPI:
    """The daemon's local API, as `peoplescloud.dashboard_api` answers, for two users."""

    def __init__(self) -> None:
        self.sessions = Sessions()
        self.calls: list[tuple[str, str, Any]] = []
        self.config = {"mybot": {"TOKEN": SECRET}, "theirs": {"KEY": SECRET}}
        self.owner = {"mybot": "alice", "theirs": "bob"}
        self.admins = {"root"}
        self.shared = {"mybot": ["carol"], "theirs": []}
        self.samples = [
            {"at": 1000 + 60 * i, "instances": i % 3, "memory_mb": 512 * (i % 3)} for i in range(60)
        ]

    def call(self, method: str, path: str, session: str | None = None, body: Any = None):
        self.calls.append((method, path, body))
        if path == "/login":
            try:
                user, token, seconds = self.sessions.exchange(body["token"])
            except Forbidden as e:
                return 403, {"error": str(e)}
            return 200, {"user": user, "session": token, "seconds": seconds}
        user = self.sessions.user_of(session or "")
        if user is None:
            return 401, {"error": "not logged in"}
        if path == "/whoami":
            return 200, {"user": user, "node": "node1", "admin": user in self.admins}
        if path == "/series":
            return 200, {"every": 60, "samples": self.samples}
        if path in ("/users", "/quotas"):
            if user not in self.admins:
                return 403, {"error": "only the node's admins may do that"}
            if path == "/users":
                return 200, [
                    {"name": u, "admin": u in self.admins, "keys": 1, "apps": 1}
                    for u in ("alice", "bob", "root")
                ]
            return 200, [
                {
                    "user": u,
                    "quotas": [
                        {
                            "name": "apps",
                            "what": "apps",
                            "limit": 5,
                            "used": 1,
                            "source": "node default ([quotas])",
                        }
                    ],
                }
                for u in ("alice", "bob", "root")
            ]
        if path == "/logout":
            self.sessions.end(session or "")
            return 200, {"ok": True}
        if path == "/apps":
            return 200, [self._row(a) for a, o in self.owner.items() if o == user]
        if path == "/nodes":
            return 200, {"node": "node1", "swarm": False, "members": []}
        m = re.fullmatch(r"/apps/([a-z0-9-]+)(/.*)?", path.split("?")[0])
        assert m, path
        app, rest = m.group(1), m.group(2) or ""
        if self.owner.get(app) != user and user not in self.admins:
            return 404, {"error": f"no app {app} of yours: `apps` lists yours"}
        if rest == "/logs":
            return 200, {"lines": ["2026-11-30T12:00:00Z app[bot.1]: <b>hello</b>"]}
        events = [
            {"at": "2026-11-30T12:05:00Z", "user": user, "app": app, "what": "ps:restart"},
            {"at": "2026-11-30T12:00:00Z", "user": user, "app": app, "what": "config: Set TOKEN"},
        ]
        if rest == "/events":
            return 200, {"events": events}
        if rest == "/sharing":
            if "add" in body:
                self.shared[app].append(body["add"])
            else:
                self.shared[app].remove(body["remove"])
            return 200, {"ok": True, "collaborators": self.shared[app]}
        if method == "POST":
            return 200, {"ok": True, "release": "v3"}
        return 200, {
            "info": {"name": app, "owner": user, "state": "running", "release": "v2",
                     "scale": "bot=1", "node": "node1"},
            "ps": [{"process": "bot.1", "release": "v2", "node": "node1", "state": "up",
                    "since": "2026-11-30T12:00:00Z", "command": "python bot.py", "why": ""}],
            "releases": [
                {"version": "v2", "current": True, "description": "Set TOKEN",
                 "pushed_by": user, "created": "2026-11-30T12:00:00Z", "slug": "x"},
                {"version": "v1", "current": False, "description": "Deploy 1a2b3c4",
                 "pushed_by": user, "created": "2026-11-30T11:00:00Z", "slug": "y"},
            ],
            "config": sorted(self.config[app]),
            "sharing": {"owner": self.owner[app], "collaborators": self.shared[app],
                        "may_change": True},
            "resources": [{"ptype": "bot", "memory_mb": 256, "cpus": 0.25,
                           "source": "set for bot"}],
            "events": events,
            "logs": ["2026-11-30T12:00:00Z app[bot.1]: hello"],
        }  # fmt: skip

    def _row(self, app: str) -> dict[str, Any]:
        return {"name": app, "owner": self.owner[app], "release": "v2", "state": "running",
                "scale": "bot=1", "instances": [{"process": "bot.1", "node": "node1",
                "state": "up"}], "deployed": "2026-11-30T12:00:00Z",
                "deployed_by": self.owner[app]}  # fmt: skip


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def client(api):
    return create_app(api).test_client()


def log_in(client, api: FakeAPI, user: str = "alice") -> str:
    """Follow a `dashboard:login` link; the session token from its cookie."""
    resp = client.get(f"/login?token={api.sessions.new_login(user)}")
    assert resp.status_code == 303
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def test_login_link_gives_a_strict_httponly_expiring_cookie(client, api):
    token = api.sessions.new_login("alice")
    resp = client.get(f"/login?token={token}")
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in set_cookie
    assert "SameSite=Strict" in set_cookie
    assert "Max-Age=43200" in set_cookie and "Expires=" in set_cookie
    assert token not in set_cookie  # the session is a new token, not the link's
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    page = client.get("/")
    assert page.status_code == 200 and b"mybot" in page.data and b"theirs" not in page.data


def test_login_link_works_once(client, api):
    token = api.sessions.new_login("alice")
    assert client.get(f"/login?token={token}").status_code == 303
    other = create_app(api).test_client()
    resp = other.get(f"/login?token={token}")
    assert resp.status_code == 403 and b"used up or expired" in resp.data
    assert other.get_cookie(COOKIE) is None
    assert other.get("/login?token=made-up").status_code == 403


def test_login_link_expires():
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    token = sessions.new_login("alice")
    now[0] += 301
    with pytest.raises(Forbidden):
        sessions.exchange(token)
    user, session, _ = sessions.exchange(sessions.new_login("alice"))
    assert sessions.user_of(session) == "alice"
    now[0] += 12 * 3600 + 1
    assert sessions.user_of(session) is None


def test_sessions_keep_hashes_only():
    sessions = Sessions()
    token = sessions.new_login("alice")
    _, session, _ = sessions.exchange(token)
    held = repr(sessions.__dict__)
    assert token not in held and session not in held


def test_a_login_token_is_no_session(client, api):
    token = api.sessions.new_login("alice")
    assert api.sessions.user_of(token) is None
    resp = client.get("/api/apps", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401


def test_pages_and_api_need_a_login(client):
    assert client.get("/").status_code == 401
    assert client.get("/api/apps").status_code == 401
    assert client.get("/api/apps", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/api/apps/mybot/restart", json={}).status_code == 403  # no CSRF either


def test_bearer_api(api):
    _, session, _ = api.sessions.exchange(api.sessions.new_login("alice"))
    client = create_app(api).test_client()  # no cookie at all
    auth = {"Authorization": f"Bearer {session}"}
    assert [a["name"] for a in client.get("/api/apps", headers=auth).json] == ["mybot"]
    assert client.get("/api/apps/mybot", headers=auth).json["config"] == ["TOKEN"]
    logs = client.get("/api/apps/mybot/logs?tail=5", headers=auth)
    assert logs.status_code == 200 and logs.json["lines"]
    assert client.get("/api/nodes", headers=auth).json["node"] == "node1"
    # No ambient credential: an action needs no CSRF token with Bearer.
    resp = client.post("/api/apps/mybot/restart", json={}, headers=auth)
    assert resp.status_code == 200 and resp.json["ok"]
    assert client.get("/api/apps/mybot/logs?tail=0", headers=auth).status_code == 400
    assert client.get("/api/apps/mybot/logs?tail=x", headers=auth).status_code == 400


def test_csrf_refused_without_the_token(client, api):
    session = log_in(client, api)
    before = len([c for c in api.calls if c[0] == "POST" and c[1] != "/login"])
    for path, kw in [
        ("/apps/mybot/restart", {"data": {}}),
        ("/apps/mybot/restart", {"data": {"csrf": "0" * 64}}),
        ("/apps/mybot/rollback", {"data": {"version": "v1"}}),
        ("/apps/mybot/scale", {"data": {"scale.bot": "2"}}),
        ("/api/apps/mybot/restart", {"json": {}}),
        ("/api/apps/mybot/restart", {"json": {}, "headers": {"X-CSRF-Token": csrf_for("x")}}),
        ("/logout", {"data": {}}),
    ]:
        resp = client.post(path, **kw)
        assert resp.status_code == 403, path
        assert b"CSRF" in resp.data
    after = len([c for c in api.calls if c[0] == "POST" and c[1] != "/login"])
    assert after == before  # nothing reached the node
    # With the page's token, the same actions go through.
    csrf = csrf_for(session)
    resp = client.post("/apps/mybot/restart", data={"csrf": csrf})
    assert resp.status_code == 303 and "done=restarted" in resp.headers["Location"]
    resp = client.post("/api/apps/mybot/restart", json={}, headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 200
    resp = client.post("/apps/mybot/scale", data={"csrf": csrf, "scale.bot": "2"})
    assert resp.status_code == 303
    assert ("POST", "/apps/mybot/scale", {"counts": {"bot": 2}}) in api.calls
    resp = client.post("/apps/mybot/rollback", data={"csrf": csrf, "version": "v1"})
    assert resp.status_code == 303


def test_pages_carry_the_csrf_token_not_the_session(client, api):
    session = log_in(client, api)
    page = client.get("/apps/mybot").get_data(as_text=True)
    assert csrf_for(session) in page
    assert session not in page


def test_another_users_app_is_not_found(client, api):
    session = log_in(client, api)
    csrf = csrf_for(session)
    unknown = client.get("/apps/nosuch")
    theirs = client.get("/apps/theirs")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.data.replace(b"theirs", b"X") == unknown.data.replace(b"nosuch", b"X")
    assert client.get("/api/apps/theirs").status_code == 404
    assert client.get("/api/apps/theirs/logs").status_code == 404
    assert client.post("/apps/theirs/restart", data={"csrf": csrf}).status_code == 404
    resp = client.post("/api/apps/theirs/restart", json={}, headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 404
    n = len(api.calls)
    assert client.get("/api/apps/x..%3Flogin").status_code == 404  # no path of the node's API
    assert len(api.calls) == n


def test_logout_ends_the_session(client, api):
    session = log_in(client, api)
    resp = client.post("/logout", data={"csrf": csrf_for(session)})
    assert resp.status_code == 303
    assert api.sessions.user_of(session) is None
    auth = {"Authorization": f"Bearer {session}"}
    assert client.get("/api/apps", headers=auth).status_code == 401


def test_no_secret_value_in_any_page_or_answer(client, api):
    session = log_in(client, api)
    auth = {"Authorization": f"Bearer {session}"}
    answers = [
        client.get(path, headers=auth if path.startswith("/api/") else {})
        for path in [
            "/", "/apps/mybot", "/nodes", "/apps/theirs", "/admin/users", "/admin/quotas",
            "/api/apps", "/api/apps/mybot", "/api/apps/mybot/logs?tail=10", "/api/nodes",
            "/api/apps/mybot/events", "/api/users", "/api/quotas",
        ]
    ]  # fmt: skip
    for resp in answers:
        text = resp.get_data(as_text=True)
        assert SECRET not in text
        assert session not in text
    page = client.get("/apps/mybot").get_data(as_text=True)
    assert "<code>TOKEN</code>" in page  # the name, not its value


def test_html_in_a_log_line_is_text(client, api):
    log_in(client, api)
    page = client.get("/apps/mybot").get_data(as_text=True)
    resp = client.get("/api/apps/mybot/logs")
    assert "<b>hello</b>" in resp.json["lines"][0]  # JSON: the page's script sets it as text
    assert "<b>" not in page.split("<pre", 1)[1]
    assert "script-src 'self'" in client.get("/").headers["Content-Security-Policy"]


def test_a_missing_browser_fails_where_it_is_required(monkeypatch: pytest.MonkeyPatch):
    from tests import test_e2e_dashboard

    monkeypatch.setattr(test_e2e_dashboard.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PC_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception):
        test_e2e_dashboard.browser_or_fail()
    for name, value in (("CI", "true"), ("PC_REQUIRE_BROWSER", "1")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(pytest.fail.Exception, match="chromium"):
                test_e2e_dashboard.browser_or_fail()


def test_app_page_shows_sharing_resources_and_events_newest_first(client, api):
    session = log_in(client, api)
    page = client.get("/apps/mybot").get_data(as_text=True)
    sharing = page.split('id="sharing"', 1)[1].split("</ul>", 1)[0]
    assert "carol" in sharing and 'value="remove"' in sharing
    assert 'id="share"' in page  # the owner may add
    resources = page.split('id="resources"', 1)[1].split("</table>", 1)[0]
    assert "<td>bot</td><td>256</td><td>0.25</td>" in resources
    events = page.split('id="events"', 1)[1].split("</table>", 1)[0]
    assert events.index("ps:restart") < events.index("config: Set TOKEN")
    resp = client.get("/api/apps/mybot/events", headers={"Authorization": f"Bearer {session}"})
    assert resp.status_code == 200 and resp.json["events"][0]["what"] == "ps:restart"
    assert client.get("/api/apps/mybot/events?n=0").status_code == 400
    assert client.get("/api/apps/theirs/events").status_code == 404


def test_sharing_changes_need_the_csrf_token(client, api):
    session = log_in(client, api)
    before = list(api.shared["mybot"])
    for data in ({"op": "add", "user": "dave"}, {"op": "add", "user": "dave", "csrf": "0" * 64}):
        assert client.post("/apps/mybot/sharing", data=data).status_code == 403
    resp = client.post("/api/apps/mybot/sharing", json={"add": "dave"})
    assert resp.status_code == 403
    assert api.shared["mybot"] == before  # nothing reached the node
    csrf = csrf_for(session)
    resp = client.post("/apps/mybot/sharing", data={"op": "add", "user": "dave", "csrf": csrf})
    assert resp.status_code == 303 and "shared%20with%20dave" in resp.headers["Location"]
    assert api.shared["mybot"] == ["carol", "dave"]
    resp = client.post("/apps/mybot/sharing", data={"op": "remove", "user": "carol", "csrf": csrf})
    assert resp.status_code == 303 and api.shared["mybot"] == ["dave"]
    bad = client.post("/apps/mybot/sharing", data={"op": "add", "user": "../x", "csrf": csrf})
    assert bad.status_code == 400
    resp = client.post("/apps/theirs/sharing", data={"op": "add", "user": "dave", "csrf": csrf})
    assert resp.status_code == 404


def test_the_node_page_draws_the_last_hour_as_svg(client, api):
    log_in(client, api)
    page = client.get("/nodes").get_data(as_text=True)
    svg = page.split('<svg id="usage"', 1)[1].split("</svg>", 1)[0]
    points = svg.split('class="instances"', 1)[1].split('points="', 1)[1].split('"', 1)[0]
    assert len(points.split()) == 60
    assert "memory allowed, MB (max 1024)" in svg and "instances (max 2)" in svg
    assert "<script" not in svg and "style=" not in svg  # the CSP allows neither inline
    api.samples = []
    assert 'id="usage-empty"' in client.get("/nodes").get_data(as_text=True)


def test_admin_pages_are_for_admins(client, api):
    log_in(client, api, "alice")
    assert "/admin/users" not in client.get("/").get_data(as_text=True)
    for path in ("/admin/users", "/admin/quotas", "/api/users", "/api/quotas"):
        resp = client.get(path)
        assert resp.status_code == 403 and b"only the node" in resp.data, path
    admin = create_app(api).test_client()
    log_in(admin, api, "root")
    assert "/admin/users" in admin.get("/").get_data(as_text=True)
    users = admin.get("/admin/users").get_data(as_text=True)
    assert "<td>alice</td><td></td><td>1</td><td>1</td>" in users
    assert "<td>root</td><td>yes</td>" in users
    quotas = admin.get("/admin/quotas").get_data(as_text=True)
    assert quotas.count("apps (apps)") == 3 and "node default" in quotas
    assert [u["user"] for u in admin.get("/api/quotas").json] == ["alice", "bob", "root"]
