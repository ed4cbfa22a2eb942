"""The images of Dockerfile apps on a node's engine: loaded when missing, tagged
as the node's, pruned when no kept release uses them.

A node tags every app image it runs `pc-<node>/<app>:<short id>` (see
`base.image_repo`); the builder tags the images it builds the same way. Only
those tags are ever removed here, so nodes sharing one engine leave each
other's images alone, and the engine deletes an image with its last tag.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from builder.image import ARCHIVE, short_id
from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime.base import InstanceSpec, image_repo

PRUNE_GRACE = 3600.0  # seconds: an image this young may belong to a push under way
PRUNE_EVERY = 600.0  # seconds between prunes when the releases did not change
log = logging.getLogger(__name__)


class AppImages:
    """A node's view of its engine's app images, for the reconciler: whether an
    instance's image is here already (then its slug, the archive, need not be
    fetched), and which to prune."""

    def __init__(self, client: docker.DockerClient, node: str) -> None:
        self.client = client
        self.node = node
        self._pruned: tuple[set[str], float] = (set(), -PRUNE_EVERY)  # kept, when

    def has(self, image: str) -> bool:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def prune(self, keep: set[str]) -> None:
        """`prune` when the images to keep changed, and every PRUNE_EVERY seconds
        (it leaves young images, whose push may be under way): the reconciler
        calls it every pass."""
        due = time.monotonic() > self._pruned[1] + PRUNE_EVERY
        if keep == self._pruned[0] and not due:
            return
        self._pruned = (keep, time.monotonic())  # a failure waits for the next turn too
        try:
            prune(self.client, self.node, keep)
        except docker.errors.DockerException:  # instances matter more than disk space
            log.exception("pruning app images")


def ensure(client: docker.DockerClient, node: str, spec: InstanceSpec) -> Any:
    """The app's image, loaded from its slug's archive when the engine lacks it (a
    sibling built it), and tagged as this node's, which keeps it until `prune`
    finds no kept release that uses it."""
    try:
        image = client.images.get(spec.image)
    except docker.errors.ImageNotFound:
        archive = spec.slug / ARCHIVE
        if not archive.is_file():
            raise RuntimeFailure(
                f"the image of {spec.app} {spec.release} is not on this node: push again"
            ) from None
        with open(archive, "rb") as f:
            client.images.load(f)
        image = client.images.get(spec.image)
    image.tag(image_repo(node, spec.app), tag=short_id(spec.image))
    return image


def sandbox(
    client: docker.DockerClient, node: str, spec: InstanceSpec, box: dict[str, Any]
) -> dict[str, Any]:
    """A slug app's container settings `box` made a Dockerfile app's: no slug
    mount, the image's own WORKDIR and ENV, its user when it is not root (see
    `builder.image.resolve_user`), the same limits and read-only root. Each
    VOLUME the image declares becomes a private tmpfs like /tmp, rather than an
    anonymous volume on the node's disk that nothing bounds and that outlives
    the container."""
    config = ensure(client, node, spec).attrs.get("Config") or {}
    tmpfs = {path: box["tmpfs"]["/tmp"] for path in config.get("Volumes") or {}}
    box = {k: v for k, v in box.items() if k != "working_dir"}
    return {
        **box,
        "volumes": {},
        "user": spec.user or box["user"],
        "tmpfs": {**tmpfs, **box["tmpfs"]},
    }


def prune(client: docker.DockerClient, node: str, keep: set[str]) -> None:
    """Untag this node's app images whose id is not in `keep` (the engine never
    removes one a container uses). An image younger than PRUNE_GRACE is left: its
    push may not have recorded its release yet."""
    young = time.time() - PRUNE_GRACE
    mine = image_repo(node, "")
    for image in client.images.list(filters={"reference": f"{mine}*"}):
        if image.id in keep or _created(image) > young:
            continue
        for tag in image.tags:
            if tag.startswith(mine):
                with contextlib.suppress(docker.errors.APIError):  # in use, or gone
                    client.images.remove(tag)


def _created(image: Any) -> float:
    """When an image was built, in epoch seconds (0 when unknown)."""
    stamp = str(image.attrs.get("Created", ""))[:19]
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0
