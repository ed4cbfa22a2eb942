"""kubo's HTTP RPC API (`POST /api/v0/<command>`): the one way this project talks
to kubo, a thin httpx client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from peoplescloud.errors import PCError


class KuboError(PCError):
    """kubo refused a request."""


class KuboUnreachable(KuboError):
    """kubo's API did not answer (not running, or it broke the connection)."""


class KuboAPI:
    """kubo's RPC API: `call("pin/add", cid, recursive=True)` -> response."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.url + "/api/v0")

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _params(args: Sequence[str], options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        # a tuple of pairs: httpx's params type takes it as is (a list would have
        # to be typed with httpx's own value union)
        params = [("arg", a) for a in args]
        for name, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            params.append((name.replace("_", "-"), str(value)))
        return tuple(params)

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.is_success:
            return
        response.read()
        try:
            message = response.json()["Message"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        raise KuboError(f"kubo {response.request.url.path}: {message}")

    @staticmethod
    def _http_timeout(options: dict[str, Any], default: float | None) -> float | None:
        """kubo's own `timeout` option (e.g. "30s") bounds the wait, plus a margin."""
        limit = options.get("timeout")
        return default if limit is None else float(str(limit).removesuffix("s")) + 10

    def call(self, command: str, *args: str, **options: Any) -> httpx.Response:
        """POST a command and return its whole (successful) response."""
        try:
            response = self._client.post(
                command,
                params=self._params(args, options),
                timeout=self._http_timeout(options, self.timeout),
            )
        except httpx.HTTPError as e:
            raise KuboUnreachable(f"kubo at {self.url} did not answer {command}: {e}") from None
        self._check(response)
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
    ) -> Iterator[httpx.Response]:
        """POST a command (optionally streaming a body) and stream its response.
        Without a kubo `timeout` option, a stream may take as long as it needs."""
        try:
            with self._client.stream(
                "POST",
                command,
                params=self._params(args, options),
                content=content,
                headers=headers,
                timeout=self._http_timeout(options, None),
            ) as response:
                self._check(response)
                yield response
        except httpx.HTTPError as e:
            raise KuboUnreachable(f"kubo at {self.url} failed during {command}: {e}") from None
