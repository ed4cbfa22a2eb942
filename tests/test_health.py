"""Health checks of web instances (real sockets on loopback) and the app.json
they come from."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.appjson import AppJson, HealthCheck, read_app_json
from builder.errors import BuildError
from peoplescloud.errors import ConfigError
from peoplescloud.health import Check, budget, resolve, run_checks
from peoplescloud.settings import WebSettings, load


def check(path: str = "", content: str = "", attempts: int = 2) -> Check:
    return Check("", path, content, attempts, timeout=0.5, wait=0.05, initial_delay=0)


def alive() -> bool:
    return True


class Answers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server calls
        status, body = {"/health": (200, b"ready"), "/broken": (500, b"ready")}.get(
            self.path, (404, b"")
        )
        assert self.headers["Host"] in ("site.example.org", "localhost")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def listener(close_at_once: bool = False) -> tuple[socket.socket, str]:
    """A port that accepts connections but never answers (as Docker's port proxy
    does while it cannot reach the container); or one that closes them at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    if close_at_once:

        def close_each() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=close_each, daemon=True).start()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def closed_port() -> str:
    sock, address = listener()
    sock.close()
    return address


def test_the_default_check_passes_when_the_port_answers(http: str):
    assert run_checks(http, "site", [check()], alive) == ""  # any answer (here 501)


def test_the_default_check_fails_when_nothing_listens():
    why = run_checks(closed_port(), "site", [check()], alive)
    refused = "connection refused (does it listen on $PORT?)"
    assert why == f"health check (the port answers) failed 2 attempts: {refused}"


def test_a_connection_that_is_accepted_is_not_enough():
    sock, address = listener()
    with sock:
        assert run_checks(address, "site", [check()], alive).endswith("no answer in time")
    sock, address = listener(close_at_once=True)
    with sock:
        why = run_checks(address, "site", [check()], alive)  # closed, or reset: no answer
        assert why.endswith("(does it listen on $PORT?)") and "refused" not in why


def test_an_exited_process_fails_its_check_at_once():
    exited = "health check (the port answers): the process exited"
    assert run_checks(closed_port(), "site", [check(attempts=500)], lambda: False) == exited


def test_a_path_check_wants_2xx_and_its_content(http: str):
    host = "site.example.org"
    assert run_checks(http, host, [check("/health", "ready")], alive) == ""
    why = run_checks(http, host, [check("/health", "all good")], alive)
    assert why.endswith("answered 200 without 'all good' in its body")
    assert "GET /health" in why and "failed 2 attempts" in why
    assert run_checks(http, host, [check("/broken", "ready")], alive).endswith(
        "answered 500, not 2xx"
    )
    named = Check("ready", "/missing", "", 1, 2, 0, 0)
    assert run_checks(http, host, [named], alive) == (
        'health check "ready" (GET /missing) failed 1 attempt: answered 404, not 2xx'
    )


def test_checks_take_the_nodes_defaults_for_what_app_json_leaves_out():
    web = WebSettings(check_attempts=7, check_timeout=3, check_wait=1)
    [default] = resolve([], web)
    assert (default.path, default.attempts, default.timeout, default.wait) == ("", 7, 3, 1)
    [mine] = resolve([HealthCheck(path="/up", attempts=2, initial_delay=4)], web)
    assert (mine.path, mine.attempts, mine.timeout, mine.initial_delay) == ("/up", 2, 3, 4)
    assert budget([mine]) >= 4 + 2 * (3 + 1)


def test_web_settings_are_checked_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PC_WEB_DRAIN_SECONDS", "2.5")
    assert load(tmp_path).web.drain_seconds == 2.5
    monkeypatch.setenv("PC_WEB_DRAIN_SECONDS", "-1")
    with pytest.raises(ConfigError, match=r"\[web\] drain_seconds must be at least 0"):
        load(tmp_path)


# --- app.json ----------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "app.json").write_text(text)
    return tmp_path


def test_no_app_json_is_no_checks(tmp_path: Path):
    assert read_app_json(tmp_path) == AppJson()


def test_app_json_healthchecks_in_dokkus_convention(tmp_path: Path):
    data = {
        "name": "ignored: Heroku's keys are not ours",
        "env": {"X": {"value": "1"}},
        "healthchecks": {
            "web": [
                {
                    "type": "startup",
                    "name": "ready",
                    "path": "/health",
                    "content": "ok",
                    "attempts": 3,
                    "timeout": 5,
                    "wait": 1.5,
                    "initialDelay": 2,
                    "port": 5000,
                },
                {"type": "liveness", "path": "/live"},  # not run at deploys
                {"listening": True},  # no path: the port check (type defaults to startup)
            ],
            "worker": [{"type": "startup", "uptime": 5}],
        },
    }
    found = read_app_json(write(tmp_path, json.dumps(data)))
    assert found.web_checks == (
        HealthCheck("ready", "/health", "ok", 3, 5.0, 1.5, 2.0),
        HealthCheck(),
    )


def test_a_malformed_app_json_says_where(tmp_path: Path):
    with pytest.raises(BuildError, match=r"app.json line 3 column 1: .*fix the JSON"):
        read_app_json(write(tmp_path, '{\n  "healthchecks": {}\n'))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", "must hold a JSON object"),
        ('{"healthchecks": []}', '"healthchecks" must be an object'),
        ('{"healthchecks": {"web": {}}}', '"healthchecks.web" must be a list'),
        (
            '{"healthchecks": {"web": [{"attempts": "3"}]}}',
            'attempts must be a whole number, not "3"',
        ),
        ('{"healthchecks": {"web": [{"timeout": true}]}}', "timeout must be a number, not true"),
        ('{"healthchecks": {"web": [{"path": "health"}]}}', 'path must start with "/"'),
        ('{"healthchecks": {"web": [{"attempts": 0}]}}', "attempts must be between 1 and 100"),
        ('{"healthchecks": {"web": [{"command": ["true"]}]}}', "command check"),
    ],
)
def test_bad_healthchecks_fail_the_push_with_a_reason(tmp_path: Path, text: str, reason: str):
    with pytest.raises(BuildError, match=reason.replace("[", r"\[")) as failed:
        read_app_json(write(tmp_path, text))
    assert "\n" not in str(failed.value)
