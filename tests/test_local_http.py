"""The local API's small HTTP server (`peoplescloud.local_http`), over a real Unix
socket with raw bytes: routing, its limits, and what a lone daemon imports."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

from peoplescloud.local_http import MAX_HEAD, Answer, HttpServer, Request, Routes


def exchange(tmp_path: Path, raw: bytes, max_body: int = 100) -> tuple[int, dict]:
    """Serve two routes, send `raw`, return (status, JSON answer)."""
    path = tmp_path / "run" / "api.sock"

    async def echo(request: Request) -> Answer:
        body = await request.read()
        return Answer(200, {"app": request.match_info.get("app"), "body": body.decode()})

    routes = Routes()
    routes.add("GET", "/apps/{app}", echo)
    routes.add("POST", "/apps/{app}/scale", echo)

    def send() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(raw)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            return got

    async def main() -> bytes:
        server = HttpServer(routes, max_body)
        await server.start_unix(path)
        try:
            return await asyncio.to_thread(send)
        finally:
            await server.cleanup()

    answer = asyncio.run(main())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    return int(head.split()[1]), json.loads(body)


def test_routes_and_bodies(tmp_path: Path):
    assert exchange(tmp_path, b"GET /apps/my%2Dbot HTTP/1.1\r\nHost: x\r\n\r\n") == (
        200,
        {"app": "my-bot", "body": ""},
    )
    raw = b'POST /apps/bot/scale HTTP/1.1\r\nContent-Length: 7\r\n\r\n{"a":1}'
    assert exchange(tmp_path, raw) == (200, {"app": "bot", "body": '{"a":1}'})
    assert exchange(tmp_path, b"GET /nope HTTP/1.1\r\n\r\n")[0] == 404
    assert exchange(tmp_path, b"GET /apps/ HTTP/1.1\r\n\r\n")[0] == 404
    assert exchange(tmp_path, b"POST /apps/bot HTTP/1.1\r\n\r\n")[0] == 405


def test_limits(tmp_path: Path):
    big = b"POST /apps/bot/scale HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101
    assert exchange(tmp_path, big)[0] == 413
    chunked = b"POST /apps/bot/scale HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert exchange(tmp_path, chunked)[0] == 411
    huge = b"GET /apps/bot HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD + 10) + b"\r\n\r\n"
    assert exchange(tmp_path, huge)[0] == 431
    assert exchange(tmp_path, b"GARBAGE\r\n\r\n")[0] == 400


def test_a_lone_daemon_imports_no_swarm_aiohttp_or_dulwich():
    """Issue 12: a lone node's idle daemon leaves out what it does not need yet
    (dulwich loads with the first git command; aiohttp is no dependency at all)."""
    code = (
        "import sys, peoplescloud.daemon\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'dulwich', 'swarm', 'docker', 'pysyncobj'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_swarm_daemon_loads_dulwich_only_for_git():
    """Issue 12: the swarm's parts load dulwich with the first repo copy or check, and
    its peer API runs on peoplescloud.local_http, not aiohttp (about 10 MB of RSS)."""
    code = (
        "import sys, peoplescloud.daemon, swarm.entry, swarm.cluster\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dulwich', 'httpx', 'aiohttp'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
