"""The daemon's local API for the dashboard's gunicorn workers: HTTP on a Unix
socket (`$PC_HOME/run/api.sock`, mode 0600), one request per call.

Every call but `POST /login` carries `Authorization: Bearer SESSION`; the daemon
maps the session to its user and calls the app service as that user, so the
dashboard sees what the user's SSH commands see, no more. Answers are JSON and
never hold a config value: `config` gives the names only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peoplescloud.bridge import in_pool
from peoplescloud.errors import Forbidden, NotFound, PCError, UsageError
from peoplescloud.local_http import Answer, HttpServer, Request, Routes
from peoplescloud.processes import ptype_of
from peoplescloud.resources import instance_size
from peoplescloud.service import Node

log = logging.getLogger("pc.dashboard")

MAX_TAIL = 1000  # log lines one call returns at most
MAX_BODY = 16 * 1024  # an action's JSON body
LOG_WAIT = 2.0  # seconds the log tail may take
MAX_EVENTS = 200  # an app's events one call returns at most
SAMPLE_EVERY = 60.0  # seconds between two samples of the node's usage
SAMPLES = 60  # samples kept: the last hour


class UsageSeries:
    """The node's usage over the last hour, in memory (a restart starts it
    again): one sample a minute of the instances running here and the memory
    they are allowed, from what the reconciler's last pass found."""

    def __init__(self, node: Node, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.clock = clock
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)

    def sample(self) -> dict[str, Any]:
        snap = self.node.state.read()
        shares = self.node.settings.shares
        running = [s for s in self.node.reconciler.instances().values() if s.running]
        memory = 0
        for s in running:
            app = snap.apps.get(s.app)
            if app is None:
                memory += shares.instance_memory_mb
                continue
            size = instance_size(
                app, ptype_of(s.process), shares.instance_memory_mb, shares.instance_cpus
            )
            memory += size.memory_mb
        taken = {"at": int(self.clock()), "instances": len(running), "memory_mb": memory}
        self.samples.append(taken)
        return taken

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sample)
            except Exception:  # a failed sample is a gap in the chart, not a dead task
                log.exception("dashboard: usage sample failed")
            await asyncio.sleep(SAMPLE_EVERY)


def _json(data: Any, status: int = 200) -> Answer:
    return Answer(status, data)


def _error(status: int, reason: str) -> Answer:
    return _json({"error": reason}, status)


def make_routes(node: Node, usage: UsageSeries) -> Routes:
    sessions = node.sessions

    async def login(request: Request) -> Answer:
        body = await _body(request)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            return _error(400, "missing token")
        try:
            user, session, seconds = sessions.exchange(token)
        except Forbidden as e:
            log.info("dashboard: a login link was refused (used up or expired)")
            return _error(403, str(e))
        log.info("dashboard: %s logged in", user)
        return _json({"user": user, "session": session, "seconds": seconds})

    def authed(
        handler: Callable[[Request, str], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Answer]]:
        async def wrapped(request: Request) -> Answer:
            scheme, _, session = request.headers.get("authorization", "").partition(" ")
            user = sessions.user_of(session) if scheme == "Bearer" and session else None
            if user is None:
                return _error(401, "not logged in: run `ssh ... dashboard:login` for a link")
            app = request.match_info.get("app")
            try:
                return _json(await handler(request, user))
            except NotFound as e:
                if app is None:
                    return _error(404, str(e))
                if app not in str(e) or "of yours" in str(e):
                    # The same refusal whether the app exists or belongs to another.
                    return _error(404, f"no app {app} of yours: `apps` lists yours")
                return _error(404, str(e))  # e.g. `sharing:remove` of one who does not share
            except Forbidden as e:  # e.g. a collaborator asking what only the owner may
                return _error(403, str(e))
            except UsageError as e:
                return _error(400, str(e))
            except PCError as e:
                return _error(409, str(e))

        return wrapped

    async def whoami(request: Request, user: str) -> Any:
        admin = await in_pool(node.is_admin, user)  # a state read: off the event loop
        return {"user": user, "node": node.node_name, "admin": admin}

    async def logout(request: Request, user: str) -> Any:
        _, _, session = request.headers["authorization"].partition(" ")
        sessions.end(session)
        return {"ok": True}

    async def apps(request: Request, user: str) -> Any:
        return await in_pool(_apps, node, user)

    async def app_detail(request: Request, user: str) -> Any:
        app = request.match_info["app"]
        detail = await in_pool(_app_detail, node, user, app)
        detail["logs"] = await _tail(node, user, app, 50)
        return detail

    async def logs(request: Request, user: str) -> Any:
        app = request.match_info["app"]
        try:
            tail = min(max(int(request.query.get("tail", "100")), 1), MAX_TAIL)
        except ValueError:
            raise UsageError("tail must be a number") from None
        return {"lines": await _tail(node, user, app, tail)}

    async def nodes(request: Request, user: str) -> Any:
        return await in_pool(_nodes, node, user)

    async def usage_series(request: Request, user: str) -> Any:
        return {"every": SAMPLE_EVERY, "samples": list(usage.samples)}

    async def events(request: Request, user: str) -> Any:
        app = request.match_info["app"]
        try:
            n = min(max(int(request.query.get("n", "50")), 1), MAX_EVENTS)
        except ValueError:
            raise UsageError("n must be a number") from None
        return {"events": await in_pool(_events, node, user, app, n)}

    async def sharing(request: Request, user: str) -> Any:
        body = await _body(request)
        app = request.match_info["app"]
        add, remove = body.get("add"), body.get("remove")
        if isinstance(add, str) and add and remove is None:
            await in_pool(node.sharing_add, user, app, add)
        elif isinstance(remove, str) and remove and add is None:
            await in_pool(node.sharing_remove, user, app, remove)
        else:
            raise UsageError('the body must be {"add": USER} or {"remove": USER}')
        return {"ok": True, "collaborators": await in_pool(node.sharing, user, app)}

    async def users(request: Request, user: str) -> Any:
        return [asdict(u) for u in await in_pool(node.users, user)]

    async def quotas(request: Request, user: str) -> Any:
        return await in_pool(_quotas, node, user)

    async def restart(request: Request, user: str) -> Any:
        body = await _body(request)
        ptype = body.get("type") or None
        if ptype is not None and not isinstance(ptype, str):
            raise UsageError("type must be a process type")
        await in_pool(node.restart, user, request.match_info["app"], ptype)
        return {"ok": True}

    async def scale(request: Request, user: str) -> Any:
        body = await _body(request)
        counts = body.get("counts")
        if not isinstance(counts, dict) or not counts:
            raise UsageError("counts must be {TYPE: N, ...}")
        if not all(isinstance(k, str) and type(v) is int for k, v in counts.items()):
            raise UsageError("counts must be {TYPE: N, ...}")
        await in_pool(node.scale, user, request.match_info["app"], counts)
        return {"ok": True}

    async def rollback(request: Request, user: str) -> Any:
        body = await _body(request)
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise UsageError("version must be a release, like v2")
        release = await in_pool(node.rollback, user, request.match_info["app"], version)
        return {"ok": True, "release": release}

    api = Routes()
    for method, pattern, handler in [
        ("POST", "/login", login),
        ("GET", "/whoami", authed(whoami)),
        ("POST", "/logout", authed(logout)),
        ("GET", "/apps", authed(apps)),
        ("GET", "/apps/{app}", authed(app_detail)),
        ("GET", "/apps/{app}/logs", authed(logs)),
        ("GET", "/nodes", authed(nodes)),
        ("GET", "/series", authed(usage_series)),
        ("GET", "/users", authed(users)),
        ("GET", "/quotas", authed(quotas)),
        ("GET", "/apps/{app}/events", authed(events)),
        ("POST", "/apps/{app}/sharing", authed(sharing)),
        ("POST", "/apps/{app}/restart", authed(restart)),
        ("POST", "/apps/{app}/scale", authed(scale)),
        ("POST", "/apps/{app}/rollback", authed(rollback)),
    ]:
        api.add(method, pattern, handler)
    return api


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise UsageError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the body must be a JSON object")
    return body


def _apps(node: Node, user: str) -> list[dict[str, Any]]:
    rows = []
    for a in node.apps(user):
        row: dict[str, Any] = asdict(a)
        try:
            row["instances"] = [
                {"process": p.process, "node": p.node, "state": p.state}
                for p in node.ps(user, a.name)
            ]
            current = [r for r in node.releases(user, a.name) if r.current]
        except PCError:  # destroyed meanwhile
            continue
        row["deployed"] = current[0].created if current else ""
        row["deployed_by"] = current[0].pushed_by if current else ""
        rows.append(row)
    return rows


def _app_detail(node: Node, user: str, app: str) -> dict[str, Any]:
    return {
        "info": node.app_info(user, app),
        "ps": [asdict(p) for p in node.ps(user, app)],
        "releases": [asdict(r) for r in node.releases(user, app)],
        "config": sorted(node.config(user, app)),  # the names: no value leaves the daemon
        "sharing": {
            "owner": node.app_info(user, app).get("owner", ""),
            "collaborators": node.sharing(user, app),
            "may_change": node.may_share(user, app),
        },
        "resources": [asdict(r) for r in node.resources(user, app)],
        "events": _events(node, user, app, 50),
    }


def _events(node: Node, user: str, app: str, n: int) -> list[dict[str, Any]]:
    """The app's newest `n` events, newest first."""
    return [asdict(e) for e in reversed(node.events(user, app, n))]


def _quotas(node: Node, user: str) -> list[dict[str, Any]]:
    """Each user's quotas (admins only, as `quota USER`)."""
    rows = []
    for u in node.users(user):
        try:
            rows.append({"user": u.name, "quotas": [asdict(q) for q in node.quota(user, u.name)]})
        except NotFound:  # removed meanwhile
            continue
    return rows


def _nodes(node: Node, user: str) -> dict[str, Any]:
    try:
        members = [asdict(n) for n in node.swarm_nodes(user)]
        swarm = True
    except PCError:
        members, swarm = [], False
    return {"node": node.node_name, "swarm": swarm, "members": members}


async def _tail(node: Node, user: str, app: str, n: int) -> list[str]:
    lines: list[str] = []
    stream = node.logs(user, app, n, None, False)

    async def read() -> None:
        async for line in stream:
            lines.append(line)

    try:
        await asyncio.wait_for(read(), LOG_WAIT)
    except TimeoutError:
        pass
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    return lines[-n:]


async def start_api(node: Node, path: Path) -> HttpServer:
    """Serve the local API on the Unix socket `path`, readable by the daemon's user only
    (no access log: no token reaches a log)."""
    usage = UsageSeries(node)
    server = HttpServer(make_routes(node, usage), MAX_BODY)
    await server.start_unix(path)
    server.tasks.append(asyncio.ensure_future(usage.run()))
    return server
