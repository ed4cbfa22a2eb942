"""The dashboard: server-rendered pages and a JSON API, both as the logged-in
user, both answered from the daemon's local API.

Login: `ssh ... dashboard:login` prints a one-time link (`/login?token=...`);
the page trades it for a session cookie (HttpOnly, SameSite=Strict, 12 h). The
JSON API takes the session token as `Authorization: Bearer` too. A request
authenticated by the cookie that changes something must carry the session's
CSRF token (form field `csrf` or header `X-CSRF-Token`); a Bearer request
carries no ambient credential and needs none.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, url_for

from dashboard.chart import usage_svg
from dashboard.local import API, LocalAPI

COOKIE = "pc_session"
APP_RE = re.compile(r"^[a-z][a-z0-9-]{1,29}$")
USER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_TAIL = 1000
MAX_EVENTS = 200
HEADERS = {
    # No inline script: a log line that holds HTML can never run.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the login link's token never leaves in a Referer
    "Cache-Control": "no-store",
}


def csrf_for(session: str) -> str:
    """The session's CSRF token: derived from it one-way, so a page can hold it
    without holding the session token, and no store is needed to check it."""
    return hashlib.sha256(b"pc-csrf:" + session.encode()).hexdigest()


class Failed(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def create_app(api: API | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024
    node: API = api or LocalAPI(os.environ["PC_DASHBOARD_API"])

    def session() -> tuple[str | None, bool]:
        """(session token, whether it came in a Bearer header)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and token:
            return token, True
        return request.cookies.get(COOKIE) or None, False

    def call(method: str, path: str, body: Any = None) -> Any:
        token, _ = session()
        if not token:
            raise Failed(401, "not logged in: run `ssh ... dashboard:login` for a link")
        status, answer = node.call(method, path, token, body)
        if status != 200:
            reason = answer.get("error", "failed") if isinstance(answer, dict) else "failed"
            raise Failed(status, reason)
        return answer

    def check_csrf() -> None:
        token, bearer = session()
        if bearer:
            return
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf") or ""
        if not token or not hmac.compare_digest(sent.encode(), csrf_for(token).encode()):
            raise Failed(403, "missing or wrong CSRF token: reload the page and try again")

    def app_name(name: str) -> str:
        if not APP_RE.fullmatch(name):
            raise Failed(404, f"no app {name} of yours: `apps` lists yours")
        return name

    def page(template: str, **values: Any) -> str:
        token, _ = session()
        me = call("GET", "/whoami")
        return render_template(
            template, me=me, csrf=csrf_for(token or ""), done=request.args.get("done"), **values
        )

    @app.errorhandler(Failed)
    def failed(e: Failed) -> Any:
        if request.path.startswith("/api/"):
            return jsonify(error=e.reason), e.status
        return render_template("error.html", reason=e.reason, status=e.status), e.status

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.update(HEADERS)
        return resp

    # --- login ----------------------------------------------------------------------
    @app.get("/login")
    def login() -> Any:
        token = request.args.get("token", "")
        if not token:
            raise Failed(400, "this link has no token: run `ssh ... dashboard:login` for one")
        status, answer = node.call("POST", "/login", None, {"token": token})
        if status != 200:
            raise Failed(403, answer.get("error", "login refused"))
        resp = redirect(url_for("apps_page"), code=303)
        resp.set_cookie(
            COOKIE,
            answer["session"],
            max_age=int(answer["seconds"]),
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path="/",
        )
        return resp

    @app.post("/logout")
    def logout() -> Any:
        check_csrf()
        call("POST", "/logout")
        resp = redirect(url_for("logged_out"), code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        return resp

    @app.get("/bye")
    def logged_out() -> Any:
        return render_template("error.html", reason="logged out", status=200)

    # --- pages ----------------------------------------------------------------------
    @app.get("/")
    def apps_page() -> Any:
        return page("apps.html", apps=call("GET", "/apps"))

    @app.get("/apps/<name>")
    def app_page(name: str) -> Any:
        name = app_name(name)
        detail = call("GET", f"/apps/{name}")
        scale = dict(w.split("=", 1) for w in detail["info"].get("scale", "").split() if "=" in w)
        return page("app.html", name=name, d=detail, scale=scale)

    @app.get("/nodes")
    def nodes_page() -> Any:
        series = call("GET", "/series")
        return page("nodes.html", nodes=call("GET", "/nodes"), chart=usage_svg(series["samples"]))

    @app.get("/admin/users")
    def users_page() -> Any:
        return page("users.html", users=call("GET", "/users"))

    @app.get("/admin/quotas")
    def quotas_page() -> Any:
        return page("quotas.html", quotas=call("GET", "/quotas"))

    @app.post("/apps/<name>/sharing")
    def sharing_form(name: str) -> Any:
        check_csrf()
        name = app_name(name)
        op, other = request.form.get("op", ""), request.form.get("user", "").strip()
        if op not in ("add", "remove"):
            abort(404)
        if not USER_RE.fullmatch(other):
            raise Failed(400, "a user name is lowercase letters, digits, - and _")
        call("POST", f"/apps/{name}/sharing", {op: other})
        done = f"shared with {other}" if op == "add" else f"no longer shared with {other}"
        return redirect(url_for("app_page", name=name) + "?done=" + quote(done), code=303)

    @app.post("/apps/<name>/<action>")
    def action_form(name: str, action: str) -> Any:
        check_csrf()
        name = app_name(name)
        if action == "restart":
            call("POST", f"/apps/{name}/restart", {"type": request.form.get("type") or None})
            done = "restarted"
        elif action == "scale":
            counts = {}
            for key, value in request.form.items():
                if key.startswith("scale."):
                    if not value.isascii() or not value.isdigit():
                        raise Failed(400, f"{key[6:]} needs a number >= 0")
                    counts[key[6:]] = int(value)
            call("POST", f"/apps/{name}/scale", {"counts": counts})
            done = "scaled"
        elif action == "rollback":
            answer = call("POST", f"/apps/{name}/rollback", {"version": request.form["version"]})
            done = f"rolled back: {answer['release']} runs"
        else:
            abort(404)
        return redirect(url_for("app_page", name=name) + "?done=" + quote(done), code=303)

    # --- the JSON API -----------------------------------------------------------------
    @app.get("/api/apps")
    def api_apps() -> Any:
        return jsonify(call("GET", "/apps"))

    @app.get("/api/apps/<name>")
    def api_app(name: str) -> Any:
        return jsonify(call("GET", f"/apps/{app_name(name)}"))

    @app.get("/api/apps/<name>/logs")
    def api_logs(name: str) -> Any:
        tail = request.args.get("tail", "100")
        if not tail.isascii() or not tail.isdigit() or not 1 <= int(tail) <= MAX_TAIL:
            raise Failed(400, f"tail must be a number from 1 to {MAX_TAIL}")
        return jsonify(call("GET", f"/apps/{app_name(name)}/logs?tail={int(tail)}"))

    @app.get("/api/apps/<name>/events")
    def api_events(name: str) -> Any:
        n = request.args.get("n", "50")
        if not n.isascii() or not n.isdigit() or not 1 <= int(n) <= MAX_EVENTS:
            raise Failed(400, f"n must be a number from 1 to {MAX_EVENTS}")
        return jsonify(call("GET", f"/apps/{app_name(name)}/events?n={int(n)}"))

    @app.get("/api/nodes")
    def api_nodes() -> Any:
        answer = call("GET", "/nodes")
        answer["usage"] = call("GET", "/series")
        return jsonify(answer)

    @app.get("/api/users")
    def api_users() -> Any:
        return jsonify(call("GET", "/users"))

    @app.get("/api/quotas")
    def api_quotas() -> Any:
        return jsonify(call("GET", "/quotas"))

    @app.post("/api/apps/<name>/<action>")
    def api_action(name: str, action: str) -> Any:
        check_csrf()
        if action not in ("restart", "scale", "rollback", "sharing"):
            abort(404)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Failed(400, "the body must be a JSON object")
        return jsonify(call("POST", f"/apps/{app_name(name)}/{action}", body))

    return app
