"""A Dockerfile app in a swarm of two nodes (one shared Docker engine, a kubo
each): the pushing node saves the image into the store, and a node whose
engine lacks the image loads it from there, with no registry."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.conftest import make_repo, wait_for
from tests.test_e2e_swarm import get_web, where

pytestmark = [pytest.mark.docker, pytest.mark.ipfs, pytest.mark.e2e]


def test_a_dockerfile_app_runs_from_the_image_in_the_store(node_factory, tmp_path: Path):
    n1, n2 = (node_factory("docker", start=False) for _ in range(2))
    assert n1.pc("swarm", "create", "--name", "images").returncode == 0
    n1.start()
    token = n1.pc("swarm", "invite").stdout.strip().splitlines()[-1]
    assert n2.pc("swarm", "join", token).returncode == 0
    n2.start()
    wait_for(lambda: n2.pc("swarm", "status").stdout.count(" up ") == 2, what="two members up")

    client = docker.from_env()
    work = make_repo(tmp_path, "dockerfile-web")
    try:
        r = n1.git(work, "push", n1.remote("img"), "main")
        assert r.returncode == 0, r.stderr
        assert "Saving the image for the swarm" in r.stderr
        home = wait_for(lambda: where(n2, "img", "web.1"), what="web.1 up")
        for n in (n1, n2):
            body, _via = wait_for(lambda n=n: get_web(n, "img"), what=f"img through {n.name}")
            assert body == "hello from web.1 uid 10001 in /srv\n"

        # The node that runs it loses the image (as a sibling that never had it):
        # started again, it loads the image from the release's archive in the store.
        image = [line for line in n1.ssh("apps:info", "img").stdout.split() if "sha256:" in line]
        assert n1.ssh("ps:stop", "img").returncode == 0
        mine = {"label": "peoplescloud.app=img"}
        wait_for(lambda: not client.containers.list(all=True, filters=mine), what="web.1 gone")
        client.images.remove(image[0], force=True)
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(image[0])
        assert n1.ssh("ps:start", "img").returncode == 0
        assert wait_for(lambda: where(n1, "img", "web.1"), what="web.1 up again") == home
        body, _via = wait_for(lambda: get_web(n1, "img"), what="img answers again")
        assert body == "hello from web.1 uid 10001 in /srv\n"
        assert client.images.get(image[0]).id == image[0]
    finally:
        for n in (n1, n2):
            n.ssh("apps:destroy", "img", "--confirm", "img")
        for n in (n1, n2):
            for img in client.images.list(filters={"reference": f"pc-{n.name}/*"}):
                client.images.remove(img.id, force=True)
        client.close()
