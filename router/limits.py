"""The router's timeouts and header limits (the `[router]` settings section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouterLimits:
    # Seconds a client may take to send a request's line and headers (from its
    # connection, or from the first byte of a later request): slow senders are
    # cut with a 408 while the others are served.
    header_timeout: float = 10.0
    connect_timeout: float = 5.0  # to open a connection to a web instance (then 504)
    # Seconds from the whole request sent to the first byte of the answer (Heroku's 30 s;
    # then 504).
    first_byte_timeout: float = 30.0
    # Seconds a connection may sit with no bytes either way: a keep-alive client
    # waiting for its next request, a body that stalls (then 408), an answer or a
    # WebSocket that goes quiet, a pooled upstream connection.
    idle_timeout: float = 60.0
    max_header_kb: int = 32  # the request line and headers together (then 431)
    max_headers: int = 100  # header fields in one request (then 431)
    # A request's body, counted as it streams: a Content-Length over it is refused
    # before anything reaches the app, a chunked body once it passes it (then 413).
    max_body_mb: int = 100

    def tick(self) -> float:
        """How often deadlines are checked: often enough for the shortest timeout."""
        shortest = min(self.header_timeout, self.connect_timeout, self.first_byte_timeout)
        return max(0.05, min(1.0, min(shortest, self.idle_timeout) / 5))
