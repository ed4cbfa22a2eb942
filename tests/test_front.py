"""The nginx front: the config text it gets (with fakes), and a real nginx
(the daemon's supervisor, FrontProcess) in front of the Python router on its
Unix socket, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import free_port
from peoplescloud import front_process
from peoplescloud.front_process import FrontProcess, Routes, find_nginx, log_line
from peoplescloud.leftovers import alive
from router.front import Front, config
from router.limits import RouterLimits
from router.proxy import Upstream
from tests.conftest import wait_for
from tests.routerkit import RouterThread, app_server, get, ws_echo_server, ws_frame, ws_read

NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None and not os.environ.get("PC_REQUIRE_DOCKER"), reason="nginx is not installed"
)


def front_for(
    work: Path, port: int = 18080, logs: bool = True, router: Path | None = None, **limits: Any
) -> Front:
    return Front(
        listen="127.0.0.1",
        port=port,
        router=router or work / "r.sock",
        work=work,
        via="1.1 n1",
        limits=RouterLimits(**limits),
        logs=logs,
        user="root" if os.geteuid() == 0 else "",  # as the daemon does
    )


def test_the_config_maps_each_host_of_a_ready_app_to_its_instances(tmp_path: Path):
    routes = {
        "shop": (["shop.localhost", "WWW.Shop.Example"], ["127.0.0.1:5001", "127.0.0.1:5000"]),
        "idle": (["idle.localhost"], []),  # no ready instance here: the Python router's
        "odd": (["bad host;evil", "odd.localhost"], ["127.0.0.1:5002"]),
    }
    front = front_for(tmp_path, header_timeout=2.5, max_header_kb=16, max_body_mb=7)
    text = config(front, routes)
    assert "upstream pc_app_2 {\n    server 127.0.0.1:5000 max_fails=0;\n" in text
    backup = f"    server 127.0.0.1:5001 max_fails=0;\n    server unix:{tmp_path}/r.sock backup;\n"
    assert backup in text
    assert "    keepalive 64;" in text
    assert "    shop.localhost pc_app_2;\n    www.shop.example pc_app_2;\n" in text
    assert "    shop.localhost shop;\n" in text
    assert "idle.localhost" not in text
    assert "evil" not in text and "    odd.localhost pc_app_1;\n" in text  # one bad name skipped
    assert "client_header_timeout 2500ms;" in text
    assert "large_client_header_buffers 4 16k;" in text
    assert "client_max_body_size 7m;" in text  # nginx answers 413 past it
    assert "proxy_http_version 1.1;" in text and "proxy_buffering off;" in text
    assert f"access_log syslog:server=unix:{tmp_path}/log.sock,tag=pcfront" in text
    assert 'path="$pc_path" host=$http_host request_id=$pc_request_id' in text
    assert "access_log off;" in config(front_for(tmp_path, logs=False), routes).split("server {")[1]
    if NGINX:
        (tmp_path / "nginx.conf").write_text(text)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / "tmp" / sub).mkdir(parents=True)
        check = subprocess.run(
            [NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr


def test_an_access_datagram_becomes_the_routers_log_line():
    message = (
        '<190>Nov 30 14:00:00 pcfront: shop|0.001|0.013|method=GET path="/a" '
        'host=shop.localhost request_id=abc fwd="10.0.0.9" status=200 bytes=12'
    )
    assert log_line(message) == (
        "shop",
        'method=GET path="/a" host=shop.localhost request_id=abc fwd="10.0.0.9" '
        "connect=1ms service=12ms status=200 bytes=12 protocol=http",
    )
    retried = message.replace("|0.001|0.013|", "|0.000, 0.001|0.000, 0.004|")
    assert "connect=1ms service=3ms" in log_line(retried)[1]  # type: ignore[index]
    assert log_line("<190>Nov 30 14:00:00 other: x") is None


class Fronted:
    """A Python router on a Unix socket, and nginx (FrontProcess) in front of it."""

    def __init__(self, tmp: Path, routes: dict[str, list[Upstream]]) -> None:
        assert NGINX is not None
        self.routes = routes  # what the Python router answers with
        self.ready: Routes = {}  # what nginx is given
        self.lines: list[tuple[str, str]] = []
        sock = tmp / "r.sock"
        self.r = RouterThread(routes, unix=str(sock))
        self.port = free_port()
        self.front = FrontProcess(
            NGINX,
            front_for(tmp / "front", self.port, router=sock, connect_timeout=2),
            lambda: {app: (hosts, list(addrs)) for app, (hosts, addrs) in self.ready.items()},
            lambda app, line: self.lines.append((app, line)),
        )
        self.front.front.work.mkdir()
        self.r.run(asyncio.to_thread(self.front.prepare))
        self.r.run(self.front.start())
        self.stop = self.r.run(_event())
        self.task = asyncio.run_coroutine_threadsafe(self.front.run(self.stop), self.r.loop)

    def serve(self, app: str, addresses: list[str]) -> None:
        """nginx sends `app` straight to `addresses` (after its next look, ≤ 0.5 s)."""
        self.ready[app] = ([f"{app}.localhost"], addresses)

    def close(self) -> None:
        self.r.loop.call_soon_threadsafe(self.stop.set)
        self.task.result(15)
        self.r.close()


async def _event() -> asyncio.Event:
    return asyncio.Event()


@contextlib.contextmanager
def fronted(tmp: Path, routes: dict[str, list[Upstream]]) -> Iterator[Fronted]:
    f = Fronted(tmp, routes)
    try:
        yield f
    finally:
        f.close()


def nginx_pids(conf: Path) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if str(conf).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


@needs_nginx
def test_the_front_passes_requests_as_the_router_does_and_stops_with_the_node(tmp_path: Path):
    body = bytes(range(256)) * 400
    with app_server() as (app, seen), ws_echo_server() as echo:
        routes = {"web": [Upstream(app)], "ws": [Upstream(echo)], "idle": []}
        with fronted(tmp_path, routes) as f:
            f.serve("web", [app])
            f.serve("ws", [echo])
            time.sleep(1)
            conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
            rid = "client-chosen-id-12345"
            headers = {"Host": "web.localhost", "X-Forwarded-For": "10.1.1.1", "X-Request-Id": rid}
            conn.request("POST", "/up?q=1", body=body, headers=headers)
            answer = conn.getresponse()
            got = json.loads(answer.read())
            assert (answer.status, got["length"]) == (200, len(body))
            assert got["sha"] == hashlib.sha256(body).hexdigest()
            assert answer.getheader("Via") == "1.1 n1"
            sent = dict(seen.requests[0]["headers"])
            assert sent["Content-Length"] == str(len(body))
            assert "Transfer-Encoding" not in sent
            assert sent["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
            assert sent["X-Request-Id"] == rid
            assert (sent["X-Forwarded-Proto"], sent["X-Forwarded-Port"]) == ("http", str(f.port))
            assert not {"X-PC-Front", "X-PC-App"} & set(sent)
            deadline = time.monotonic() + 5
            while not f.lines and time.monotonic() < deadline:
                time.sleep(0.05)
            app_name, line = f.lines[0]
            assert app_name == "web"
            assert line.startswith(f'method=POST path="/up" host=web.localhost request_id={rid} ')
            assert line.endswith(f"status=200 bytes={len(json.dumps(got))} protocol=http")

            # A WebSocket through nginx: the 101 and frames both ways.
            with socket.create_connection(("127.0.0.1", f.port), timeout=10) as s:
                key = base64.b64encode(os.urandom(16))
                s.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
                )
                reader = s.makefile("rb")
                assert reader.readline().startswith(b"HTTP/1.1 101")
                while reader.readline() not in (b"\r\n", b""):
                    pass
                s.sendall(ws_frame(b"hello through nginx", mask=True))
                assert ws_read(reader.read) == b"hello through nginx"

            # What nginx does not route goes to the Python router behind it.
            status, _, page = get(f.port, "shop.example.org")
            assert status == 404 and page.startswith(b"no app here")
            status, _, page = get(f.port, "idle.localhost")
            assert status == 503 and page.startswith(b"idle has no running web process")
            lines = len(f.r.wait_lines(1))
            assert lines == 1 and f.r.lines[0][0] == "idle"  # logged once, by the Python router
            assert f.r.lines[0][1].split('fwd="')[1].startswith('127.0.0.1"')
            time.sleep(0.5)
            assert "idle" not in [a for a, _ in f.lines]  # not by nginx too
            conf = f.front.conf
            assert nginx_pids(conf)
    assert nginx_pids(conf) == []  # gone with the node


@needs_nginx
def test_an_instance_gone_before_the_reload_is_answered_by_the_python_router(tmp_path: Path):
    refused = f"127.0.0.1:{free_port()}"
    with fronted(tmp_path, {"web": []}) as f:
        f.serve("web", [refused])  # nginx still thinks it is there
        time.sleep(1)
        status, _, page = get(f.port, "web.localhost")
        assert status == 503 and page.startswith(b"web has no running web process")
        f.routes["web"] = [Upstream(refused)]  # the Python router too: its own 502 page
        status, _, page = get(f.port, "web.localhost")
        assert status == 502 and b"web: the web process refused" in page
        assert b"request id: " in page
        time.sleep(0.5)  # datagrams a wrong config would send
        assert f.lines == []  # what the Python router answered is its to log (not nginx)
        assert [app for app, _ in f.r.lines] == ["web", "web"]


@needs_nginx
def test_a_reload_on_scale_loses_no_request(tmp_path: Path):
    with (
        app_server() as (one, _),
        app_server() as (two, seen_two),
        fronted(tmp_path, {"web": [Upstream(one), Upstream(two)]}) as f,
    ):
        f.serve("web", [one])
        time.sleep(1)
        master = f.front.proc
        failures: list[int] = []
        done = threading.Event()

        def client() -> None:
            for _ in range(400):  # bounded: ~10 s at most
                if done.is_set():
                    return
                try:
                    status = get(f.port, "web.localhost")[0]
                except (OSError, IndexError, ValueError):  # refused, reset, cut short
                    status = 0
                if status != 200:
                    failures.append(status)

        loop = threading.Thread(target=client)
        loop.start()
        for addresses in ([one, two], [two], [one, two], [one]):
            f.serve("web", addresses)
            time.sleep(0.7)
        done.set()
        loop.join(30)
        assert failures == []
        assert seen_two.requests  # the reload took effect
        assert f.front.proc is master  # reloaded, not restarted


@needs_nginx
def test_a_config_nginx_rejects_is_not_loaded_and_a_dead_nginx_is_restarted(tmp_path: Path):
    with app_server() as (app, _), fronted(tmp_path, {"web": [Upstream(app)]}) as f:
        f.serve("web", [app])
        time.sleep(1)
        good = f.front.conf.read_text()
        f.serve("web", ["127.0.0.1:99999"])  # no such port: nginx -t says no
        time.sleep(1)
        assert f.front.conf.read_text() == good
        assert get(f.port, "web.localhost")[0] == 200
        assert f.front.proc is not None
        f.front.proc.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, IndexError, ValueError):
                if get(f.port, "web.localhost")[0] == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("nginx was not started again")


@needs_nginx
@pytest.mark.e2e
def test_the_daemon_runs_nginx_and_replaces_the_one_a_killed_daemon_left(node_factory):
    node = node_factory("process")
    first = wait_for(node.front_pids, what="the nginx front", timeout=30)
    assert get(node.router_port, "nosuch.localhost")[0] == 404  # the Python router, behind
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGKILL)  # the daemon only: its nginx lives on
    node.proc.wait()
    node.proc = None
    assert node.front_pids() == first
    node.start()
    second = wait_for(lambda: node.front_pids() != first and node.front_pids(), what="nginx")
    assert second[0] != first[0]
    assert not alive(first[0])
    assert get(node.router_port, "nosuch.localhost")[0] == 404
    node.stop()
    assert node.front_pids() == [] and not alive(second[0])


def test_the_data_path_is_chosen_by_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(front_process, "find_nginx", lambda: "/usr/sbin/nginx")
    assert front_process.choose("auto", 8080) == "/usr/sbin/nginx"
    assert front_process.choose("none", 8080) is None
    assert front_process.choose("auto", 0) is None  # nginx needs its port named
    monkeypatch.setattr(front_process, "find_nginx", lambda: None)
    assert front_process.choose("auto", 8080) is None
    with pytest.raises(RuntimeError, match="apt install nginx"):
        front_process.choose("nginx", 8080)
