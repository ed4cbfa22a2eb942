"""kubo's HTTP RPC API (`POST /api/v0/<command>`): the one way this project talks
to kubo, a thin client on the standard library's `http.client`, one connection
per call (kubo is on loopback or the LAN). Not httpx: it cost a swarm daemon
3.8 MB of RSS (issue 12), for what a few POSTs need."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

from peoplescloud.errors import PCError

NET_ERRORS = (OSError, http.client.HTTPException)


class KuboError(PCError):
    """kubo refused a request."""


class KuboUnreachable(KuboError):
    """kubo's API did not answer (not running, or it broke the connection)."""


class KuboResponse:
    """One answer of kubo; a connection that breaks while it is read raises
    KuboUnreachable."""

    def __init__(self, raw: http.client.HTTPResponse, what: str) -> None:
        self.raw = raw
        self.status = raw.status
        self.what = what  # for errors: "kubo at URL ... COMMAND"
        self._body: bytes | None = None

    def read(self) -> bytes:
        if self._body is None:
            try:
                self._body = self.raw.read()
            except NET_ERRORS as e:
                raise KuboUnreachable(f"{self.what} broke off: {e}") from None
        return self._body

    @property
    def text(self) -> str:
        return self.read().decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.read())

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.raw.read(size)
            except NET_ERRORS as e:
                raise KuboUnreachable(f"{self.what} broke off: {e}") from None
            if not chunk:
                return
            yield chunk

    def iter_lines(self) -> Iterator[str]:
        while True:
            try:
                line = self.raw.readline()
            except NET_ERRORS as e:
                raise KuboUnreachable(f"{self.what} broke off: {e}") from None
            if not line:
                return
            yield line.decode("utf-8", "replace").rstrip("\r\n")


class KuboAPI:
    """kubo's RPC API: `call("pin/add", cid, recursive=True)` -> response."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        parts = urlsplit(self.url)  # a bad URL fails at the first call, as unreachable
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/") + "/api/v0/"

    def close(self) -> None:
        """Nothing to close: every call has its own connection."""

    @staticmethod
    def _params(args: Sequence[str], options: dict[str, Any]) -> list[tuple[str, str]]:
        params = [("arg", a) for a in args]
        for name, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            params.append((name.replace("_", "-"), str(value)))
        return params

    @staticmethod
    def _http_timeout(options: dict[str, Any], default: float | None) -> float | None:
        """kubo's own `timeout` option (e.g. "30s") bounds the wait, plus a margin."""
        limit = options.get("timeout")
        return default if limit is None else float(str(limit).removesuffix("s")) + 10

    @contextmanager
    def _post(
        self,
        command: str,
        params: list[tuple[str, str]],
        timeout: float | None,
        content: Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[KuboResponse]:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._netloc, timeout=timeout)
        path = self._prefix + command
        try:
            try:
                conn.request(
                    "POST", f"{path}?{urlencode(params)}", body=content, headers=headers or {}
                )
                response = KuboResponse(conn.getresponse(), f"kubo at {self.url}: {command}")
            except NET_ERRORS as e:
                raise KuboUnreachable(f"kubo at {self.url} did not answer {command}: {e}") from None
            if not 200 <= response.status < 300:
                body = response.read()
                try:
                    message = json.loads(body)["Message"]
                except (ValueError, KeyError, TypeError):
                    message = body.decode("utf-8", "replace").strip() or response.raw.reason
                raise KuboError(f"kubo {path}: {message}")
            yield response
        finally:
            conn.close()

    def call(self, command: str, *args: str, **options: Any) -> KuboResponse:
        """POST a command and return its whole (successful) response."""
        timeout = self._http_timeout(options, self.timeout)
        with self._post(command, self._params(args, options), timeout) as response:
            response.read()
            return response

    def json(self, command: str, *args: str, **options: Any) -> Any:
        return self.call(command, *args, **options).json()

    @contextmanager
    def stream(
        self,
        command: str,
        *args: str,
        content: Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> Iterator[KuboResponse]:
        """POST a command (optionally streaming a body, chunked) and stream its
        response. Without a kubo `timeout` option, a stream may take as long as it needs."""
        params = self._params(args, options)
        with self._post(command, params, self._http_timeout(options, None), content, headers) as r:
            yield r
