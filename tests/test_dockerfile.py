"""Dockerfile apps: detection, the image's user, the release record, and the
bounds of a Dockerfile build (these with the real engine and the stack image)."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import docker
import pytest

import builder
from builder import BuildError, DockerExecutor, HostExecutor, build
from builder.build import detect
from builder.image import resolve_user
from builder.kinds import dockerfile
from peoplescloud.desired import instance_spec
from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime import images
from peoplescloud.runtime.base import InstanceSpec
from peoplescloud.runtime.process import ProcessRuntime
from peoplescloud.settings import load
from peoplescloud.state import App, Release, Snapshot, kept_images, snapshot_from_dict
from tests.conftest import STACK_IMAGE

FROM = f"FROM {STACK_IMAGE}\n"


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    top = tmp_path / "src"
    top.mkdir()
    for name, text in files.items():
        (top / name).write_text(text)
    return top


def kind_of(src: Path) -> str:
    return (dockerfile if dockerfile.wanted(src) else detect(src)).KIND


# --- detection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"Dockerfile": FROM}, "dockerfile"),
        ({"Dockerfile": FROM, "Procfile": "web: x\n"}, "dockerfile"),  # types run in the image
        ({"Dockerfile": FROM, "requirements.txt": ""}, "python"),  # the language kind first
        ({"Dockerfile": FROM, "package.json": "{}"}, "node"),
        (
            {"Dockerfile": FROM, "requirements.txt": "", "app.json": '{"stack": "container"}'},
            "dockerfile",
        ),
        (
            {"Dockerfile": FROM, "requirements.txt": "", "app.json": '{"stack": "heroku-24"}'},
            "python",
        ),
        ({"Procfile": "web: x\n"}, "procfile"),
    ],
)
def test_detection(tmp_path: Path, files: dict[str, str], kind: str) -> None:
    assert kind_of(tree(tmp_path, files)) == kind


def test_app_json_asking_for_a_missing_dockerfile_or_malformed_is_refused(tmp_path: Path) -> None:
    src = tree(tmp_path, {"requirements.txt": "", "app.json": '{"stack": "container"}'})
    with pytest.raises(BuildError, match="no Dockerfile"):
        kind_of(src)
    (src / "app.json").write_text('{\n  "stack": "container",\n}\n')
    with pytest.raises(BuildError, match="app.json line 3 column"):
        kind_of(src)


def test_no_app_names_the_dockerfile_among_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="Dockerfile"):
        detect(tree(tmp_path, {"README": "hi"}))


def test_the_process_runtime_refuses_a_dockerfile_app(tmp_path: Path) -> None:
    src = tree(tmp_path, {"Dockerfile": FROM})
    with pytest.raises(BuildError, match="cannot build or run a Dockerfile"):
        build(src, tmp_path / "out", tmp_path / "cache", HostExecutor(), print)


def test_the_process_runtime_refuses_to_start_an_image(tmp_path: Path) -> None:
    """A release built elsewhere (a swarm member with Docker) never runs its
    command on the host instead of the image."""
    runtime = ProcessRuntime(tmp_path / "run", "n1")
    spec = InstanceSpec(
        app="img",
        process="web.1",
        release="v1",
        command="true",
        slug=tmp_path,
        node="n1",
        image="sha256:" + "ab" * 32,
    )
    with pytest.raises(RuntimeFailure, match="built from a Dockerfile: it runs only on Docker"):
        runtime.start(spec)
    assert runtime.status() == []


# --- the image's user ---------------------------------------------------------

PASSWD = "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
PASSWD += "app:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


@pytest.mark.parametrize(
    ("user", "runs_as"),
    [
        ("root", ""),  # the runtime's own unprivileged user
        ("0", ""),
        ("0:50", ""),
        ("toor", ""),  # uid 0 by another name
        ("nobody", "65534:65534"),
        ("app", "1000:1001"),  # the primary group from /etc/passwd
        ("app:staff", "1000:50"),
        ("1234", "1234:1234"),  # not in /etc/passwd: its own number as group
        ("1000", "1000:1001"),
        ("app:0", "1000:1000"),  # never root's group
    ],
)
def test_resolve_user(user: str, runs_as: str) -> None:
    assert resolve_user(user, PASSWD, GROUP) == runs_as


def test_resolve_user_refuses_unknown_names() -> None:
    with pytest.raises(BuildError, match="USER ghost is not in the image's /etc/passwd"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(BuildError, match="group ghosts"):
        resolve_user("app:ghosts", PASSWD, GROUP)


# --- the release record -------------------------------------------------------


def test_release_records_the_image_and_instances_run_it(tmp_path: Path) -> None:
    image = "sha256:" + "ab" * 32
    release = Release(
        version=1,
        slug="sha256-marker",
        kind="dockerfile",
        stack=STACK_IMAGE,
        processes={"web": "python3 server.py"},
        commit="c" * 40,
        pushed_by="ann",
        created="2026-11-30T00:00:00Z",
        description="Deploy ccccccc",
        image=image,
        user="65534:65534",
    )
    app = App(name="img", owner="ann", created="now", releases=[release], current=1)
    snap = snapshot_from_dict(json.loads(json.dumps({"apps": {"img": _asdict(app)}})))
    assert snap.apps["img"].release() == release  # survives the state file
    assert kept_images(snap) == {image}
    old = Release(**{**_asdict(release), "version": 0, "image": "sha256:old"})
    snap.apps["img"].releases[:0] = [old] + [release] * 10  # old falls out of the kept ten
    assert kept_images(snap) == {image}

    settings = load(tmp_path / "home")
    spec = instance_spec(app, 1, "web.1", "python3 server.py", "n1", settings)
    assert (spec.image, spec.user) == (image, "65534:65534")
    assert kept_images(Snapshot()) == set()


def _asdict(obj: object) -> dict:
    from dataclasses import asdict

    return asdict(obj)  # type: ignore[call-overload]


# --- real builds: bounds, tags, pruning ---------------------------------------


@pytest.fixture
def client():
    client = docker.from_env()
    yield client
    client.close()


def docker_build(client, tmp_path: Path, files: dict[str, str], said=None, **limits):
    executor = DockerExecutor(client, STACK_IMAGE, "", network="none", **limits)
    repo = f"pc-t{uuid.uuid4().hex[:8]}/app"
    said = [] if said is None else said
    try:
        result = build(
            tree(tmp_path, files),
            tmp_path / "out",
            tmp_path / "c",
            executor,
            said.append,
            image_repo=repo,
        )
    finally:
        for image in client.images.list(filters={"reference": f"{repo}*"}):
            client.images.remove(image.id, force=True)
    return result, said


@pytest.mark.docker
def test_build_gives_the_image_command_and_a_marker_slug(client, tmp_path: Path) -> None:
    files = {
        "Dockerfile": FROM + 'USER nobody\nENTRYPOINT ["python3"]\nCMD ["-m", "http.server"]\n'
    }
    result, said = docker_build(client, tmp_path, files)
    assert result.kind == "dockerfile"
    assert result.processes == {"web": "python3 -m http.server"}
    assert result.image.startswith("sha256:") and result.user == "65534:65534"
    marker = json.loads((tmp_path / "out" / builder.image.MARKER).read_text())
    assert marker == {"image": result.image}
    assert said[-1] == "-----> Process types: web"


@pytest.mark.docker
def test_a_dockerfile_without_a_command_or_procfile_is_refused(client, tmp_path: Path) -> None:
    stack = client.images.get(STACK_IMAGE).attrs["Config"]
    if stack.get("Cmd") or stack.get("Entrypoint"):
        files = {"Dockerfile": FROM + "ENTRYPOINT []\nCMD []\n"}
    else:
        files = {"Dockerfile": FROM}
    with pytest.raises(BuildError, match="CMD or an ENTRYPOINT"):
        docker_build(client, tmp_path, files)


@pytest.mark.docker
def test_a_build_step_past_the_timeout_is_killed(client, tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(BuildError, match="longer than 3 s"):
        step = f"RUN sleep 60 # {uuid.uuid4().hex}\n"  # never in the engine's build cache
        docker_build(client, tmp_path, {"Dockerfile": FROM + step}, timeout=3)
    assert time.monotonic() - began < 30


@pytest.mark.docker
def test_a_build_step_past_the_memory_limit_fails(client, tmp_path: Path) -> None:
    grab = "RUN python3 -c 'x = bytearray(300 << 20); print(len(x))'\n"
    with pytest.raises(BuildError, match="docker build failed: .*non-zero code: 137"):
        docker_build(client, tmp_path, {"Dockerfile": FROM + grab}, memory_mb=64)


@pytest.mark.docker
def test_a_failed_build_leaves_no_layers(client, tmp_path: Path) -> None:
    files = {"Dockerfile": FROM + f"LABEL probe={uuid.uuid4().hex}\nENV A=1\nRUN exit 3\n"}
    said: list[str] = []
    with pytest.raises(BuildError, match="returned a non-zero code: 3"):
        docker_build(client, tmp_path, files, said)
    layers = [
        line.split("---> ")[1] for line in said if re.fullmatch(r"\s*---> [0-9a-f]{12}", line)
    ]
    assert len(layers) == 3  # FROM, LABEL, ENV
    assert client.images.get(layers[0]).tags  # the stack stays
    for layer in layers[1:]:
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(layer)


@pytest.mark.docker
def test_prune_untags_only_this_nodes_unkept_old_images(client) -> None:
    node, other = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    stack = client.images.get(STACK_IMAGE)  # old enough to prune
    stack.tag(f"pc-{node}/a", tag="x")
    stack.tag(f"pc-{other}/a", tag="x")
    try:
        images.prune(client, node, keep={stack.id})
        assert f"pc-{node}/a:x" in client.images.get(STACK_IMAGE).tags  # kept
        images.prune(client, node, keep=set())
        tags = client.images.get(STACK_IMAGE).tags
        assert f"pc-{node}/a:x" not in tags and f"pc-{other}/a:x" in tags
        assert STACK_IMAGE in tags  # the image itself stays: it has other tags
    finally:
        for tag in (f"pc-{node}/a:x", f"pc-{other}/a:x"):
            if tag in client.images.get(STACK_IMAGE).tags:
                client.images.remove(tag)


@pytest.mark.docker
def test_a_node_without_the_image_loads_it_from_the_release_archive(client, tmp_path: Path) -> None:
    """The swarm's path: the pushing node saved the image into the slug; a sibling
    whose engine lacks it loads it from there, and tags it as its own."""
    executor = DockerExecutor(client, STACK_IMAGE, "", network="none")
    src = tree(tmp_path, {"Dockerfile": FROM + f"LABEL probe={uuid.uuid4().hex}\nCMD sleep 1\n"})
    slug, node = tmp_path / "slug", f"t{uuid.uuid4().hex[:8]}"
    built = builder.image.build_app(executor, src, slug, "pc-builder/app", True, print)
    client.images.remove(built.id, force=True)  # as on a sibling's engine
    spec = InstanceSpec(
        app="app",
        process="web.1",
        release="v1",
        command="x",
        slug=slug,
        node=node,
        image=built.id,
    )
    try:
        assert images.ensure(client, node, spec).id == built.id
        assert f"pc-{node}/app:{built.id[7:19]}" in client.images.get(built.id).tags
    finally:
        client.images.remove(built.id, force=True)
    (slug / builder.image.ARCHIVE).unlink()  # neither here nor in the slug
    with pytest.raises(RuntimeFailure, match="is not on this node: push again"):
        images.ensure(client, node, spec)


@pytest.mark.docker
def test_prune_leaves_a_young_image_whose_push_may_be_under_way(client, tmp_path: Path) -> None:
    node = f"t{uuid.uuid4().hex[:8]}"
    executor = DockerExecutor(client, STACK_IMAGE, "", network="none")
    src = tree(tmp_path, {"Dockerfile": FROM + f"LABEL probe={uuid.uuid4().hex}\n"})
    built = builder.image.build_image(executor, src, f"pc-{node}/app", print)
    try:
        images.prune(client, node, keep=set())  # built a moment ago, no release yet
        assert client.images.get(built.id).tags == [f"pc-{node}/app:{built.id[7:19]}"]
    finally:
        client.images.remove(built.id, force=True)
