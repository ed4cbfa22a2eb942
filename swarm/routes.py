"""The peer API this node serves: the membership routes (swarm/membership.py)
and the node's own (status, logs, restart, users, git history), each answering
a signed request of a member (swarm/peer_server.py checks it first)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peoplescloud.cluster import LocalParts
from peoplescloud.errors import Forbidden, NotFound
from peoplescloud.local_http import HttpServer
from peoplescloud.names import check_app_name, check_public_key, check_user_name
from swarm.identity import SwarmIdentity
from swarm.membership import Membership
from swarm.peer_server import make_peer_app
from swarm.replicated import ReplicatedState
from swarm.repos import tar_repo
from swarm.status import swarm_status

log = logging.getLogger(__name__)


class NodeRoutes:
    """What a member asks of this node about its apps, users and the swarm."""

    def __init__(self, identity: SwarmIdentity, state: ReplicatedState, local: LocalParts) -> None:
        self.settings = local.settings
        self.me = local.settings.name
        self.identity = identity
        self.state = state
        self.local = local

    async def status(self, sender: str, body: Any) -> Any:
        leader = self.state.leader()
        return swarm_status(self.state.read(), self.identity, leader, self.settings, time.time())

    async def logs(self, sender: str, body: Any) -> AsyncIterator[bytes]:
        app, lines, ptype = str(body["app"]), int(body["lines"]), body.get("ptype")
        logbus = self.local.logbus
        if not body.get("follow"):
            tail = await asyncio.to_thread(logbus.tail, app, lines, ptype)
            return _iterate([(line + "\n").encode() for line in tail])
        return _encode(logbus.follow(app, ptype, backlog=lines))

    async def restart(self, sender: str, body: Any) -> Any:
        reconciler = self.local.reconciler
        await asyncio.to_thread(reconciler.restart, str(body["app"]), body.get("ptype"))
        return {"ok": True}

    async def user_add(self, sender: str, body: Any) -> Any:
        """`pc user add` on this node: the swarm's users live in its replicated state."""
        if sender != self.me:
            raise Forbidden("users are added by a node's host with `pc user add` on that node")
        name = check_user_name(str(body["name"]))
        key = check_public_key(str(body["key"]), "the key")

        def add() -> None:
            with self.state.change() as s:
                s.add_user_key(name, key, bool(body.get("admin")))

        await asyncio.to_thread(add)
        log.info("user %s added (a key)", name)
        return {"ok": True}

    async def user_remove(self, sender: str, body: Any) -> Any:
        """`pc user remove` on this node: gone from the replicated state, so their
        keys stop working on every member at once."""
        from peoplescloud.service.users import remove_user

        if sender != self.me:
            raise Forbidden("users are removed by a node's host with `pc user remove` on that node")
        name = check_user_name(str(body["name"]))

        def remove() -> None:
            with self.state.change() as s:
                remove_user(s, name)
                s.add_event("", "", f"users:remove {name} (pc user remove on {self.me})")

        await asyncio.to_thread(remove)
        log.info("user %s removed", name)
        return {"ok": True}

    async def users(self, sender: str, body: Any) -> Any:
        return {"users": [asdict(u) for u in self.state.read().users.values()]}

    async def repo(self, sender: str, body: Any) -> AsyncIterator[bytes]:
        """An app's bare git repo, as a tar (see swarm/repos.py)."""
        app = check_app_name(str(body["app"]))
        repo = self.settings.repo_path(app)
        if not repo.is_dir():
            raise NotFound(f"{self.me} holds no git history of {app}")
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        archive = self.settings.tmp_dir / f"repo-{app}-{secrets.token_hex(4)}.tar"
        try:
            await asyncio.to_thread(tar_repo, repo, archive)
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
        return _send_file(archive)  # (a copy left by a broken stream goes at restart)


def peer_app(
    identity: SwarmIdentity, state: ReplicatedState, membership: Membership, node: NodeRoutes
) -> HttpServer:
    """The peer API's server: members only, but `join` (an invite)."""
    return make_peer_app(
        lambda: identity.secret_bytes,
        lambda name: name in state.read().members,
        {
            "invite": membership.invite_route,
            "status": node.status,
            "logs": node.logs,
            "restart": node.restart,
            "admit": membership.admit_route,
            "leave": membership.leave_route,
            "step_down": membership.step_down_route,
            "remove": membership.remove_route,
            "expel": membership.expel_route,
            "user_add": node.user_add,
            "user_remove": node.user_remove,
            "users": node.users,
            "repo": node.repo,
        },
        name=node.me,
        invite_handlers={"join": membership.join_route},
        invite_key=membership.invite_key,
    )


async def _send_file(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes, then the file is gone."""
    try:
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 16):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


async def _iterate(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _encode(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield (line + "\n").encode()
