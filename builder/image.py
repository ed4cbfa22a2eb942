"""Dockerfile apps: build the tree's Dockerfile with the Docker engine.

The image is the app: its `CMD`/`ENTRYPOINT` is the `web` process unless a
Procfile names the types. The slug of such an app is only a marker, `image.json`
(the image id), plus, in a swarm, `image.tar` (`docker save`), which siblings
`docker load` when they must run the app: the store keeps and moves it like
any slug, so no registry is needed.

RUN steps are the pusher's code, run by the engine's builder as the Dockerfile
says (as root, unless it has a USER), so the build is bounded from outside:
the node's isolated network (the same firewall as its apps), a memory limit on
every step's container, and a wall-clock timeout that kills the running step.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from builder.docker_executor import DockerExecutor
from builder.errors import BuildError
from builder.executor import INDENT, Deadline, Say

MARKER = "image.json"  # in the slug: {"image": "<image id>"}
ARCHIVE = "image.tar"  # in the slug, in a swarm: the image as `docker save` writes it
_RUNNING = " ---> Running in "  # the classic builder names each step's container so
_LAYER = re.compile(r" ---> ([0-9a-f]{12})")  # and each step's image so


@dataclass(frozen=True)
class Image:
    id: str  # "sha256:…"
    user: str  # "uid:gid" the instances run as; "" for the runtime's own unprivileged user
    command: str  # ENTRYPOINT + CMD as one shell line ("" when the image has neither)


def build_app(executor: object, tree: Path, out: Path, repo: str, archive: bool, say: Say) -> Image:
    """Build `tree`'s Dockerfile into an image tagged `repo:<short id>`, and write
    the app's slug into `out`: the marker, and with `archive` the saved image."""
    if not isinstance(executor, DockerExecutor):
        raise BuildError(
            "this node runs apps as plain processes, without Docker, so it cannot build "
            "or run a Dockerfile: push the app to a node with Docker, or drop the Dockerfile"
        )
    image = build_image(executor, tree, repo, say)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"image": image.id}) + "\n")
    if archive:
        say("-----> Saving the image for the swarm")
        with open(out / ARCHIVE, "wb") as f:
            for chunk in executor.client.images.get(image.id).save(named=False):
                f.write(chunk)
    return image


def build_image(executor: DockerExecutor, tree: Path, repo: str, say: Say) -> Image:
    """`docker build` of `tree` with its Dockerfile, bounded (see the module's
    docstring); output streams to `say`. Raises BuildError with the builder's
    own error line."""
    client = executor.client
    steps: list[str] = []  # the containers the builder ran steps in, the last one running

    def kill_step() -> None:
        if steps:
            client.containers.get(steps[-1]).kill()

    layers: list[str] = []  # the images of the steps done, the last one last
    try:
        with _network(executor) as network, Deadline(executor.timeout, kill_step) as deadline:
            image_id = _stream(executor, tree, network, deadline, steps, layers, say)
    except BuildError:
        _drop_layers(client, layers)
        raise
    if deadline.expired:
        _drop_layers(client, layers)
        raise BuildError(f"docker build took longer than {executor.timeout} s and was stopped")
    if not image_id:
        raise BuildError("docker build ended without an image: see the output above")
    image = client.images.get(image_id)
    image.tag(repo, tag=short_id(image_id))
    config = image.attrs.get("Config") or {}
    argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    user = str(config.get("User") or "")
    return Image(
        id=image_id,
        user=resolve_user(user, *_read_files(client, image_id, user)) if user else "",
        command=shlex.join(argv),
    )


def _stream(
    executor: DockerExecutor,
    tree: Path,
    network: str,
    deadline: Deadline,
    steps: list[str],
    layers: list[str],
    say: Say,
) -> str:
    """Run the build, its output to `say`, noting each step's container and
    image; the image's id ("" when it was stopped)."""
    image_id = ""
    try:
        stream = executor.client.api.build(
            path=str(tree),
            pull=False,  # FROM an image the node has (or the engine's default pull)
            rm=True,
            forcerm=True,
            decode=True,
            network_mode=network,
            container_limits={
                "memory": executor.memory_mb << 20,
                "memswap": executor.memory_mb << 20,
            },
        )
        for event in stream:
            if "error" in event:
                if deadline.expired:
                    return ""
                raise BuildError(f"docker build failed: {_one_line(event['error'])}")
            image_id = event.get("aux", {}).get("ID", image_id)
            for line in str(event.get("stream", "")).splitlines():
                if line.startswith(_RUNNING):
                    steps.append(line.removeprefix(_RUNNING).strip())
                elif layer := _LAYER.fullmatch(line):
                    layers.append(layer.group(1))
                if line.strip():
                    say(INDENT + line)
    except docker.errors.APIError as e:
        raise BuildError(f"docker build failed: {_one_line(str(e.explanation or e))}") from None
    return image_id


def _drop_layers(client: docker.DockerClient, layers: list[str]) -> None:
    """Remove what a failed build left: the image of its last good step, with
    its untagged parents (the engine keeps any that another image or a tag
    still uses, and never removes a tagged image that way)."""
    if not layers:
        return
    with contextlib.suppress(docker.errors.APIError):  # in use, shared, or gone
        if not client.images.get(layers[-1]).tags:
            client.images.remove(layers[-1])


def short_id(image_id: str) -> str:
    """The 12 hex digits Docker shows for an image id."""
    return image_id.removeprefix("sha256:")[:12]


@contextmanager
def _network(executor: DockerExecutor) -> Iterator[str]:
    """The network RUN steps join, kept while the build runs: the node's isolated
    network is removed with its last container, so a created (never started)
    container of the build holds it between steps."""
    network = executor.network
    if isinstance(network, str):
        yield network
        return
    with network() as name:
        holder = executor.client.containers.create(
            executor.stack, ["true"], network=name, labels=executor.labels
        )
    try:
        yield name
    finally:
        holder.remove(force=True)


def resolve_user(user: str, passwd: str, group: str) -> str:
    """The "uid:gid" an image's `USER` names, looked up in its /etc/passwd and
    /etc/group; "" (the runtime's own unprivileged user) when that is root (uid
    0, by any name). A gid of 0 becomes the uid's own: never root's group."""
    name, _, group_name = user.partition(":")
    users = _table(passwd)  # name -> (id, primary gid)
    if name.isdigit():
        uid = int(name)
        primary = next((g for u, g in users.values() if u == uid), uid)
    elif name in users:
        uid, primary = users[name]
    else:
        raise BuildError(f"the Dockerfile's USER {name} is not in the image's /etc/passwd")
    if uid == 0:
        return ""
    if not group_name:
        gid = primary
    elif group_name.isdigit():
        gid = int(group_name)
    elif group_name in (groups := _table(group)):
        gid = groups[group_name][0]
    else:
        raise BuildError(f"the Dockerfile's USER group {group_name} is not in its /etc/group")
    return f"{uid}:{gid or uid}"


def _table(text: str) -> dict[str, tuple[int, int]]:
    """/etc/passwd or /etc/group: name -> (its id, the next field as a number or -1)."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            extra = fields[3] if len(fields) > 3 and fields[3].isdigit() else "-1"
            out.setdefault(fields[0], (int(fields[2]), int(extra)))
    return out


def _read_files(client: docker.DockerClient, image_id: str, user: str) -> tuple[str, str]:
    """The image's /etc/passwd and /etc/group ("" for one it lacks), read from a
    container that is created, never started."""
    if user.replace(":", "").isdigit():
        return "", ""  # numbers only: nothing to look up (uid 0 is refused all the same)
    container = client.containers.create(image_id, entrypoint=["true"], network_mode="none")
    try:
        return _file(container, "/etc/passwd"), _file(container, "/etc/group")
    finally:
        container.remove(force=True)


def _file(container: Any, path: str) -> str:
    try:
        chunks, _stat = container.get_archive(path)
    except docker.errors.NotFound:
        return ""
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        f = tar.extractfile(member) if member is not None else None
        return f.read(1 << 20).decode("utf-8", "replace") if f is not None else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = ["ARCHIVE", "MARKER", "Image", "build_app", "resolve_user", "short_id"]
