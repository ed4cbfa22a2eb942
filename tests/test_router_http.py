"""The router keeps HTTP's meaning: bodies, framing, headers, keep-alive,
WebSockets (also through a sibling's router), TLS, custom domains and ACME
challenges, and its log lines. Real HTTP over loopback."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from router.proxy import Upstream
from tests.routerkit import (
    app_server,
    get,
    parse,
    raw,
    router,
    ws_echo_server,
    ws_frame,
    ws_read,
)

HOST = b"Host: web.localhost\r\n"


def test_a_content_length_post_reaches_an_http_server_app_intact():
    body = bytes(range(256)) * 1000  # 256 kB, every byte value
    with app_server() as (app, seen), router({"web": [Upstream(app)]}) as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
        conn.request("POST", "/upload?x=1", body=body, headers={"Host": "web.localhost"})
        answer = conn.getresponse()
        got = json.loads(answer.read())
        assert (answer.status, got["length"]) == (200, len(body))
        assert got["sha"] == hashlib.sha256(body).hexdigest()
        headers = dict(seen.requests[0]["headers"])
        assert headers["Content-Length"] == str(len(body))
        assert "Transfer-Encoding" not in headers
        assert seen.requests[0]["path"] == "/upload?x=1"


def test_a_chunked_post_goes_upstream_chunked():
    parts = [b"first part ", b"x" * 70_000, b" last"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    with app_server() as (app, seen), router({"web": [Upstream(app)]}) as r:
        request = b"POST /c HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
        status, _, body = parse(raw(r.port, request + b"Connection: close\r\n\r\n" + chunked))
        assert status == 200 and json.loads(body)["length"] == sum(map(len, parts))
        assert seen.requests[0]["body"] == b"".join(parts)
        headers = dict(seen.requests[0]["headers"])
        assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers


def test_hop_by_hop_headers_go_no_further_and_nothing_is_invented():
    with app_server() as (app, seen), router({"web": [Upstream(app)]}) as r:
        request = (
            b"GET /hop HTTP/1.1\r\nHost: web.localhost\r\nConnection: close, X-Secret\r\n"
            b"X-Secret: s3cret\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\n"
            b"Proxy-Authorization: Basic eA==\r\nX-Mine: kept\r\nx-lower: kept too\r\n\r\n"
        )
        status, headers, _ = parse(raw(r.port, request))
        got = seen.requests[0]["headers"]
        names = [name for name, _ in got]
        # The client's end-to-end headers, in its order and spelling, then the router's.
        assert names == [
            "Host",
            "X-Mine",
            "x-lower",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
            "X-Forwarded-Port",
            "X-Request-Id",
        ], got
        # The app's hop-by-hop headers (and the one it named) stop at the router too;
        # the client sees the app's own headers and Via, nothing the router made up.
        assert status == 200
        assert set(headers) == {
            "server",
            "date",
            "content-type",
            "content-length",
            "via",
            "connection",
        }, headers
        assert headers["connection"] == "close"  # the client asked for it


def test_head_keeps_content_length_and_answers_keep_their_framing():
    with app_server() as (app, _), router({"web": [Upstream(app)]}) as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
        conn.request("HEAD", "/", headers={"Host": "web.localhost"})
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        what_get_would_send = {"method": "HEAD", "length": 0, "sha": hashlib.sha256().hexdigest()}
        assert head.getheader("Content-Length") == str(len(json.dumps(what_get_would_send)))
        assert head.getheader("Transfer-Encoding") is None
        conn.request("GET", "/chunked", headers={"Host": "web.localhost"})  # same connection
        chunked = conn.getresponse()
        assert chunked.getheader("Transfer-Encoding") == "chunked"
        assert chunked.read() == b"hello chunked world"
        conn.request("GET", "/unsized", headers={"Host": "web.localhost"})
        unsized = conn.getresponse()  # the app ends it by closing: chunked to the client
        assert unsized.getheader("Transfer-Encoding") == "chunked"
        assert unsized.read() == b"until the end"
        conn.request("GET", "/", headers={"Host": "web.localhost"})  # still kept alive
        assert json.loads(conn.getresponse().read())["method"] == "GET"
        # An HTTP/1.0 client gets no chunks: the end of the body is the end of the connection.
        old = raw(r.port, b"GET /chunked HTTP/1.0\r\n" + HOST + b"\r\n")
        status, headers, body = parse(old)
        assert (status, body) == (200, b"hello chunked world")
        assert "transfer-encoding" not in headers and headers["connection"] == "close"


def test_x_forwarded_and_the_request_id():
    with app_server() as (app, seen), router({"web": [Upstream(app)]}) as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
        given = "a-sane-request-id-0123456789"
        for request_id in (None, given, "short", "bad id with spaces and more than 20"):
            headers = {"Host": "web.localhost:8080", "X-Forwarded-For": "10.0.0.1"}
            headers |= {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
            if request_id:
                headers["X-Request-Id"] = request_id
            conn.request("GET", "/", headers=headers)
            conn.getresponse().read()
        sent = [dict(request["headers"]) for request in seen.requests]
        for headers in sent:
            assert headers["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
            assert headers["X-Forwarded-Proto"] == "http"  # the client's claim is replaced
            assert headers["X-Forwarded-Host"] == "web.localhost:8080"
            assert headers["X-Forwarded-Port"] == str(r.port)
        ids = [headers["X-Request-Id"] for headers in sent]
        assert ids[1] == given
        assert len(set(ids)) == 4 and all(re.fullmatch(r"[0-9a-f-]{20,}", i) for i in ids[::2])


def test_upstream_connections_are_kept_alive_and_reused():
    with app_server() as (app, seen), router({"web": [Upstream(app)]}) as r:
        for _ in range(3):  # three clients, one after another
            conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
            for _ in range(10):
                conn.request("GET", "/", headers={"Host": "web.localhost"})
                assert conn.getresponse().read()
            conn.close()
        assert len(seen.requests) == 30
        assert seen.accepted == 1


def test_pipelined_requests_are_answered_in_order():
    with app_server() as (app, _), router({"web": [Upstream(app)]}) as r:
        both = b"HEAD /a HTTP/1.1\r\n" + HOST + b"\r\nPOST /b HTTP/1.1\r\n" + HOST
        answer = raw(r.port, both + b"Content-Length: 3\r\nConnection: close\r\n\r\nxyz")
        first, second = answer.split(b"HTTP/1.1 200 OK")[1:]
        assert b"Content-Length" in first and b'"method": "POST", "length": 3' in second


def websocket(port: int, host: str = "web.localhost") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    status, headers, _ = parse(head)
    assert status == 101, head
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    return s


def echo(s: socket.socket, text: bytes) -> bytes:
    s.sendall(ws_frame(text, mask=True))
    reader = s.makefile("rb")
    return ws_read(reader.read)


def test_a_websocket_echo_through_the_router_and_through_a_siblings_router():
    routes: dict[str, list[Upstream]] = {}
    with (
        ws_echo_server() as app,
        router({"web": [Upstream(app)]}, name="n2") as n2,
        router(routes) as n1,
    ):
        routes["web"] = [Upstream(f"127.0.0.1:{n2.port}", router=True)]
        n1.router.hop_key = n2.router.hop_key = lambda: b"swarm secret"
        for port in (n2.port, n1.port):
            with websocket(port) as s:
                for i in range(3):
                    assert echo(s, b"hello %d" % i) == b"hello %d" % i
        assert [line for _, line in n1.wait_lines(1) if "status=101" in line]


def test_tls_listener_serves_the_same_routes_with_forwarded_proto_https(tmp_path: Path):
    from peoplescloud.tls import self_signed

    cert, key = self_signed("shop.example")  # the node's own fallback certificate
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    domains = {"shop.example": "web"}
    with (
        app_server() as (app, seen),
        router(
            {"web": [Upstream(app)]},
            tls=(server_ctx, tls_port),
            resolve_host=domains.get,
        ) as r,
    ):
        assert r.router.addresses[1] == ("127.0.0.1", tls_port)
        plain = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
        with client_ctx.wrap_socket(plain, server_hostname="shop.example") as s:
            s.sendall(b"GET /secure HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert parse(answer)[0] == 200
        headers = dict(seen.requests[0]["headers"])
        assert headers["X-Forwarded-Proto"] == "https"
        assert headers["X-Forwarded-Port"] == str(tls_port)
        assert "protocol=https" in r.wait_lines(1)[0][1]


def test_custom_domains_and_acme_challenges():
    tokens = {"tok3n": "tok3n.thumbprint"}
    domains = {"shop.example": "web"}
    routes = {"web": [Upstream("127.0.0.1:1")]}
    with (
        app_server() as (app, seen),
        router(routes, resolve_host=domains.get, challenge=tokens.get) as r,
    ):
        routes["web"] = [Upstream(app)]
        status, _, _ = get(r.port, "SHOP.example.:80")
        assert status == 200 and dict(seen.requests[0]["headers"])["Host"] == "SHOP.example.:80"
        challenge = "/.well-known/acme-challenge/"
        assert get(r.port, "anything.example", challenge + "tok3n")[::2] == (
            200,
            b"tok3n.thumbprint",
        )
        assert get(r.port, "shop.example", challenge + "other")[0] == 404
        assert len(seen.requests) == 1  # never the app's
        status, _, body = get(r.port, "elsewhere.example")
        assert status == 404 and body.startswith(b"no app here: use http://APP.localhost/\n")


def test_each_request_gets_a_heroku_style_line_in_its_apps_log():
    with app_server() as (app, _), router({"web": [Upstream(app)], "idle": []}) as r:
        raw(
            r.port,
            b"POST /path?secret=1 HTTP/1.1\r\n"
            + HOST
            + b"Content-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        raw(r.port, b"GET / HTTP/1.1\r\nHost: idle.localhost\r\nConnection: close\r\n\r\n")
        raw(r.port, b"GET / HTTP/1.1\r\nHost: ghost.localhost\r\nConnection: close\r\n\r\n")
        forged = b"X-PC-App: web\r\nX-PC-Hop: 1:forged\r\nConnection: close\r\n\r\n"
        raw(r.port, b"GET /unlogged HTTP/1.1\r\n" + HOST + forged)  # not a sibling: logged
        lines = r.wait_lines(3)
        assert [app for app, _ in lines] == ["web", "idle", "web"]  # no app, no log
        line = lines[0][1]
        assert re.fullmatch(
            r'method=POST path="/path" host=web.localhost request_id=[0-9a-f-]+ '
            r'fwd="127.0.0.1" connect=\d+ms service=\d+ms status=200 bytes=\d+ protocol=http',
            line,
        ), line
        assert "status=503" in lines[1][1]


def test_bytes_after_a_refused_upgrade_never_reach_the_app_as_a_request():
    """What follows an Upgrade request is the new protocol's: held until the app
    says 101. This app ignores Upgrade and answers 200: a request hidden there
    must not reach it (it would skip the router's X-Forwarded-For), and the
    connection to it is not used again."""
    with app_server() as (app, seen), router({"web": [Upstream(app)]}) as r:
        upgrade = (
            b"GET / HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        hidden = b"GET /hidden HTTP/1.1\r\n" + HOST + b"X-Forwarded-For: 6.6.6.6\r\n\r\n"
        status, headers, _ = parse(raw(r.port, upgrade + hidden))
        assert status == 200 and headers["connection"] == "close"
        assert get(r.port, "web.localhost")[0] == 200
        assert [request["path"] for request in seen.requests] == ["/", "/"]
        assert seen.accepted == 2


BIG = 64 * 1024 * 1024


def test_bodies_stream_both_ways_without_being_held_whole():
    """A reader that stops holds back the sender through the router (flow
    control): neither a 64 MB answer nor a 64 MB upload piles up in it."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent = [0]
    received = [0]
    go_on = threading.Event()

    def app() -> None:  # answers GET with 64 MB; reads a POST's 64 MB only when told to
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                if head.startswith(b"GET"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
                    block = b"x" * (1024 * 1024)
                    for _ in range(64):
                        conn.sendall(block)
                        sent[0] += len(block)
                else:
                    go_on.wait(30)
                    received[0] = len(head.split(b"\r\n\r\n", 1)[1])
                    while received[0] < BIG:
                        received[0] += len(conn.recv(1024 * 1024))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    threading.Thread(target=app, daemon=True).start()
    with router({"big": [Upstream(f"127.0.0.1:{listener.getsockname()[1]}")]}) as r:
        client = socket.create_connection(("127.0.0.1", r.port), timeout=30)
        client.sendall(b"GET / HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
        first = client.recv(1024)
        while b"\r\n\r\n" not in first:
            first += client.recv(1024)
        got = len(first.split(b"\r\n\r\n", 1)[1])
        time.sleep(1.5)  # the client reads nothing meanwhile
        assert sent[0] < BIG // 4, sent  # the app is held back, not drained into memory
        while got < BIG:
            got += len(client.recv(1024 * 1024))
        assert got == BIG
        client.close()

        uploader = socket.create_connection(("127.0.0.1", r.port), timeout=30)
        uploader.sendall(
            b"POST / HTTP/1.1\r\nHost: big.localhost\r\nContent-Length: %d\r\n\r\n" % BIG
        )
        progress = [0]

        def upload() -> None:
            block = b"y" * (1024 * 1024)
            for _ in range(64):
                uploader.sendall(block)
                progress[0] += len(block)

        sender = threading.Thread(target=upload)
        sender.start()
        time.sleep(1.5)  # the app reads nothing meanwhile
        assert progress[0] < BIG // 4, progress
        go_on.set()
        sender.join(30)
        assert uploader.recv(1024).endswith(b"\r\n\r\nok") and received[0] == BIG
        uploader.close()
    listener.close()


def test_requests_arriving_byte_by_byte_are_read_alike(caplog: pytest.LogCaptureFixture):
    """Two pipelined requests (a POST with a chunked body, then a GET) sent one
    byte per write: the same answers as in one write, and no error logged."""
    requests = (
        b"POST /a HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /b HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
    )
    with (
        caplog.at_level(logging.WARNING),
        app_server() as (app, seen),
        router({"web": [Upstream(app)]}) as r,
    ):
        whole = raw(r.port, requests)
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(requests)):
                s.sendall(requests[i : i + 1])
                time.sleep(0.001)
            dribbled = b""
            while chunk := s.recv(65536):
                dribbled += chunk
    assert whole.count(b"HTTP/1.1 200 OK") == dribbled.count(b"HTTP/1.1 200 OK") == 2
    assert [(q["path"], q["body"]) for q in seen.requests] == [("/a", b"abcde"), ("/b", b"")] * 2
    assert caplog.records == []
