"""Dockerfile apps end to end: pushed with the system git, built by the Docker
engine FROM the project's stack (no registry answers here), answered through
the router, refused on the process runtime."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest

from tests.conftest import commit_all, make_repo, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def get(node, app: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.router_port}/", headers={"Host": f"{app}.localhost"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read().decode(errors='replace')}"
    except OSError:
        return ""


def test_dockerfile_app_on_docker(node_factory, tmp_path: Path):
    node = node_factory("docker")
    work = make_repo(tmp_path, "dockerfile-web")
    r = node.git(work, "push", node.remote("img"), "main")
    assert r.returncode == 0, r.stderr
    assert "Dockerfile app detected" in r.stderr
    assert "Process types: web" in r.stderr
    assert "Release v1 running: web.1" in r.stderr
    # The image's CMD, in its WORKDIR, as the runtime's unprivileged user (the
    # image has no USER); its VOLUME is a writable tmpfs.
    assert get(node, "img") == "hello from web.1 uid 10001 in /srv\n"
    assert "web.1" in node.ssh("ps", "img").stdout
    assert "dockerfile" in node.ssh("apps:info", "img").stdout
    wait_for(lambda: "app[web.1]: listening on" in node.ssh("logs", "img").stdout, what="logs")
    assert node.ssh("run", "img", "id -u").stdout.strip() == "10001"
    client = docker.from_env()
    try:
        (container,) = client.containers.list(filters={"label": "peoplescloud.app=img"})
        assert container.labels["peoplescloud.release"] == "v1"
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["Memory"] > 0
        # No anonymous volume for VOLUME /data: nothing outlives the container.
        assert [m for m in container.attrs["Mounts"] if m["Type"] == "volume"] == []

        # A failing RUN step fails the push with the builder's error line; v1 runs on.
        dockerfile = work / "Dockerfile"
        good = dockerfile.read_text()
        dockerfile.write_text(good + "RUN echo about to fail && exit 3\n")
        commit_all(work, "broken")
        r = node.git(work, "push", node.remote("img"), "main")
        assert r.returncode != 0
        assert "returned a non-zero code: 3" in r.stderr
        assert get(node, "img") == "hello from web.1 uid 10001 in /srv\n"
        assert "v2" not in node.ssh("releases", "img").stdout

        # The image's non-root USER is kept; a Procfile's types run in the image.
        dockerfile.write_text(good + "USER nobody\n")
        (work / "Procfile").write_text("web: python3 server.py\nworker: sleep 600\n")
        commit_all(work, "procfile")
        r = node.git(work, "push", node.remote("img"), "main")
        assert r.returncode == 0, r.stderr
        assert "Release v2 running" in r.stderr and "worker.1" in r.stderr
        assert get(node, "img") == "hello from web.1 uid 65534 in /srv\n"

        # USER root runs as the unprivileged user all the same.
        dockerfile.write_text(good + "USER root\n")
        commit_all(work, "root")
        assert node.git(work, "push", node.remote("img"), "main").returncode == 0
        assert get(node, "img") == "hello from web.1 uid 10001 in /srv\n"

        # A rollback runs that release's own image.
        assert node.ssh("rollback", "img", "v2").returncode == 0
        assert get(node, "img") == "hello from web.1 uid 65534 in /srv\n"
        releases = node.ssh("releases", "img").stdout
        assert "Rollback to v2" in releases and "v4" in releases
    finally:
        node.ssh("apps:destroy", "img", "--confirm", "img")  # its containers use the images
        for image in client.images.list(filters={"reference": f"pc-{node.name}/*"}):
            client.images.remove(image.id, force=True)  # every tag, and the image
        client.close()


def test_dockerfile_app_refused_on_the_process_runtime(node_factory, tmp_path: Path):
    node = node_factory("process")
    work = make_repo(tmp_path, "dockerfile-web")
    r = node.git(work, "push", node.remote("img"), "main")
    assert r.returncode != 0
    assert "cannot build or run a Dockerfile" in r.stderr
