"""A Django app with whitenoise, pushed as a newcomer would: its page and its
static files answer through the router on the first push, because the build ran
`manage.py collectstatic` (as Heroku's Python buildpack does)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.conftest import commit_all, make_repo


def get(port: int, path: str) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": "site.localhost"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


@pytest.mark.docker
@pytest.mark.e2e
def test_django_with_whitenoise_serves_its_static_files_on_the_first_push(
    node_factory, tmp_path: Path
) -> None:
    node = node_factory("docker")
    work = make_repo(tmp_path, "django-whitenoise")
    r = node.git(work, "push", node.remote("site"), "main")
    assert r.returncode == 0, r.stderr
    assert "remote: -----> $ python manage.py collectstatic --noinput" in r.stderr
    assert "static file copied" in r.stderr  # Django's own summary line
    assert get(node.router_port, "/") == (200, "hello from django\n")
    assert get(node.router_port, "/static/app.css") == (200, "body { color: rebeccapurple; }\n")

    # The switch Heroku users know: no collectstatic, so whitenoise has nothing to serve.
    assert node.ssh("config:set", "site", "DISABLE_COLLECTSTATIC=1").returncode == 0
    (work / "static" / "more.css").write_text("p { margin: 0; }\n")
    commit_all(work, "more css")
    r = node.git(work, "push", node.remote("site"), "main")
    assert r.returncode == 0, r.stderr
    assert "Skipping collectstatic (DISABLE_COLLECTSTATIC is set)" in r.stderr
    assert get(node.router_port, "/static/more.css")[0] == 404
