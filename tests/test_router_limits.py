"""The router's own answers (400, 408, 431, 404, 503, 502, 504), its timeouts
and limits, and clients that go away. Real HTTP over loopback."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import pytest

from router.limits import RouterLimits
from router.proxy import Upstream
from tests.routerkit import app_server, get, parse, raw, router

FAST = RouterLimits(header_timeout=0.5, first_byte_timeout=0.5, idle_timeout=5)


def page_of(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    """(status, first line) of one of the router's pages, checking its shape."""
    status, headers, body = answer
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    first, request_id, end = body.decode().split("\n")
    assert request_id.startswith("request id: ") and len(request_id) > 30 and end == ""
    return status, first


def test_pages_for_apps_that_cannot_answer():
    with app_server() as (app, _):
        closed = socket.create_server(("127.0.0.1", 0))
        refused = f"127.0.0.1:{closed.getsockname()[1]}"
        closed.close()
        routes = {"idle": [], "down": [Upstream(refused)], "slow": [Upstream(app)]}
        with router(routes, limits=FAST) as r:
            assert page_of(get(r.port, "ghost.localhost")) == (404, "no app named ghost here")
            assert page_of(get(r.port, "idle.localhost")) == (
                503,
                "idle has no running web process",
            )
            status, text = page_of(get(r.port, "down.localhost"))
            assert status == 502 and text.startswith("down: ")
            started = time.monotonic()
            status, text = page_of(get(r.port, "slow.localhost", "/slow"))
            assert (status, text) == (504, "slow: the web process took too long to answer")
            assert time.monotonic() - started < 1.5  # first_byte_timeout 0.5 s, checked often
            lines = dict((app, line) for app, line in r.wait_lines(3))
            assert "status=503" in lines["idle"] and "status=502" in lines["down"]
            assert "status=504" in lines["slow"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.localhost\r\nBad Header\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.localhost\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431),
        (b"GET /" + b"u" * 40_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
)
def test_requests_the_router_will_not_pass_on(request_bytes: bytes, status: int):
    with app_server() as (app, seen), router({"a": [Upstream(app)]}) as r:
        answer = parse(raw(r.port, request_bytes))
        assert page_of(answer)[0] == status
        assert answer[1]["connection"] == "close"
        assert seen.requests == []


def test_a_slow_header_client_is_cut_while_others_are_served():
    """Slowloris: clients dribbling their headers get 408 at header_timeout; a
    normal client is served meanwhile, and keep-alive idle is not cut early."""
    with app_server() as (app, seen), router({"web": [Upstream(app)]}, limits=FAST) as r:
        slow = [socket.create_connection(("127.0.0.1", r.port), timeout=5) for _ in range(20)]
        started = time.monotonic()
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n")
        stop = threading.Event()

        def dribble() -> None:
            while not stop.wait(0.1):
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-Drip: 1\r\n")

        dripper = threading.Thread(target=dribble)
        dripper.start()
        try:
            assert get(r.port, "web.localhost")[0] == 200  # meanwhile
            for s in slow:  # a 408, unless the drips that follow it made that a reset
                answer = b""
                try:
                    while chunk := s.recv(65536):
                        answer += chunk
                except ConnectionResetError:
                    continue
                assert page_of(parse(answer))[0] == 408
            assert time.monotonic() - started < 2.5  # 0.5 s, checked every 0.1 s
            quiet = raw(r.port, b"GET / HTTP/1.1\r\nHost: web.localhost\r\n")  # then nothing
            assert page_of(parse(quiet)) == (
                408,
                "request timeout: the request took too long to arrive",
            )
        finally:
            stop.set()
            dripper.join()
            for s in slow:
                s.close()
        assert len(seen.requests) == 1


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout():
    limits = RouterLimits(header_timeout=5, idle_timeout=0.5)
    with app_server() as (app, _), router({"web": [Upstream(app)]}, limits=limits) as r:
        s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
        answer = s.recv(65536)
        while b"}" not in answer:  # the app's JSON, whole
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert s.recv(65536) == b""  # closed by the router, with nothing more said
        assert 0.4 < time.monotonic() - started < 2.5


def test_a_client_that_goes_away_is_no_app_failure(caplog: pytest.LogCaptureFixture):
    """Hung up while the app works: no 502, nothing logged as the app failing;
    its line says 499 (the client closed), as nginx and Heroku do."""
    with (
        caplog.at_level(logging.INFO),
        app_server() as (app, seen),
        router({"web": [Upstream(app)]}) as r,
    ):
        s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: web.localhost\r\nX-Sleep: 0.5\r\n\r\n")
        while not seen.requests:
            time.sleep(0.01)
        s.close()  # while the app still sleeps
        lines = r.wait_lines(1)
        assert len(lines) == 1 and "status=499" in lines[0][1], lines
        time.sleep(0.7)  # the app answers into the void
        assert get(r.port, "web.localhost")[0] == 200
        assert [line for _, line in r.wait_lines(2)][1].count("status=200") == 1
    failures = [rec.getMessage() for rec in caplog.records if rec.name.startswith("router")]
    assert failures == [], failures


def test_a_kept_alive_upstream_the_app_closed_is_retried_on_a_new_one():
    """gunicorn closes idle keep-alive connections after 2 s: a GET that meets one
    as the app closes it goes out again on a fresh connection instead of a 502.
    This app answers the first request of each connection and closes at the second."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(65536)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    app = f"127.0.0.1:{listener.getsockname()[1]}"
    with router({"web": [Upstream(app)]}) as r:
        assert get(r.port, "web.localhost")[::2] == (200, b"ok")
        assert get(r.port, "web.localhost")[::2] == (200, b"ok")
        assert len(accepted) == 2
    listener.close()


def test_a_silent_connection_is_closed_quietly_and_a_stalled_body_gets_408():
    limits = RouterLimits(header_timeout=0.5, idle_timeout=0.5, first_byte_timeout=5)
    with app_server() as (app, seen), router({"web": [Upstream(app)]}, limits=limits) as r:
        started = time.monotonic()
        assert raw(r.port, b"") == b""  # never sent a byte: no page, just closed
        assert time.monotonic() - started < 2.5
        stalled = b"POST /up HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 10\r\n\r\nabc"
        status, text = page_of(parse(raw(r.port, stalled)))
        assert (status, text) == (408, "request timeout: the request took too long to arrive")
        lines = r.wait_lines(1)
        assert "status=408" in lines[0][1]


def test_a_body_over_max_body_mb_is_refused_with_413():
    """A Content-Length over the limit never reaches the app; a chunked body is cut
    with 413 once it passes the limit, and the app never sees it whole."""
    one_mb = RouterLimits(max_body_mb=1)
    with app_server() as (app, seen), router({"a": [Upstream(app)]}, limits=one_mb) as r:
        head = b"POST /up HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n"
        answer = parse(raw(r.port, head % (2 << 20)))  # says 2 MB, sends nothing
        assert page_of(answer)[0] == 413 and answer[1]["connection"] == "close"
        assert seen.requests == []

        piece = b"x" * 65536
        chunked = b"POST /up HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"%x\r\n%b\r\n" % (len(piece), piece) * 24  # 1.5 MB, no last chunk
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            with contextlib.suppress(OSError):  # the router may close while we send
                s.sendall(chunked)
            out = b""
            with contextlib.suppress(OSError):
                while data := s.recv(65536):
                    out += data
        assert out.startswith(b"HTTP/1.1 413 ")
        assert all(len(req.get("body", b"")) < 2 << 20 for req in seen.requests)

        under = b"y" * 1000  # within the limit: passes as before
        ok = raw(
            r.port,
            (head % len(under)).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + under,
        )
        assert parse(ok)[0] == 200
