"""The answers the router makes itself: short plain-text pages that say what
went wrong, for which app, and the request's id (the one in the router's log)."""

from __future__ import annotations

from router.http import reason


def no_app_here(domain: str, host: str) -> str:
    port = host.rpartition(":")[2] if ":" in host else ""
    where = f"APP.{domain}:{port}" if port.isascii() and port.isdigit() else f"APP.{domain}"
    return f"no app here: use http://{where}/"


def text_for(status: int, app: str) -> str:
    """The page's first line for an answer about `app` ("" when none is known)."""
    about = app or "this request"
    return {
        400: "bad request: the router could not read it as HTTP/1.1",
        404: f"no app named {app} here",
        408: "request timeout: the request took too long to arrive",
        413: "request body too large for this node's router ([router] max_body_mb)",
        414: "request line too long",
        431: "request header fields too large (or too many)",
        501: "not supported by the router (Transfer-Encoding other than chunked, or CONNECT)",
        502: f"{about}: the web process refused or dropped the connection",
        503: f"{app} has no running web process",
        504: f"{about}: the web process took too long to answer",
    }.get(status, reason(status).decode())


def page(
    status: int,
    text: str,
    request_id: str,
    via: bytes,
    close: bool,
    head_only: bool = False,
) -> bytes:
    """A whole response: head and body (no body for HEAD)."""
    body = f"{text}\nrequest id: {request_id}\n".encode()
    head = (
        b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nVia: %b\r\n%b\r\n"
        % (status, reason(status), len(body), via, b"Connection: close\r\n" if close else b"")
    )
    return head if head_only else head + body
