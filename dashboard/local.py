"""The client of the daemon's local API (`peoplescloud.dashboard_api`): HTTP over
the Unix socket named by PC_DASHBOARD_API."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Protocol

TIMEOUT = 15.0  # seconds one call may take (a restart waits for the runtime)


class API(Protocol):
    def call(
        self, method: str, path: str, session: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """(HTTP status, JSON answer) of one call to the daemon."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self._path)
        self.sock = sock


class LocalAPI:
    def __init__(self, path: str) -> None:
        self.path = path

    def call(
        self, method: str, path: str, session: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if session:
            headers["Authorization"] = f"Bearer {session}"
        conn = _UnixConnection(self.path)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
        except OSError:
            return 503, {"error": "the node does not answer; try again in a moment"}
        finally:
            conn.close()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return 502, {"error": "the node gave an answer the dashboard cannot read"}
