"""The stack images a node's containers run in, made on the node that needs one.

A push builds a missing stack before its build step (`stack_choice`), but in a
swarm an instance may be placed on, or fail over to, a member whose engine has
never seen its release's stack. That member builds it in the background (a
few minutes of debootstrap, seconds from a cached rootfs) and says so through
the start that could not happen yet; the reconciler tries again on its passes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from peoplescloud.errors import RuntimeFailure
from peoplescloud.stack import (
    DEFAULT_STACK,
    STACKS,
    build_stack_image,
    default_cache_dir,
    image_exists,
    split_tag,
)

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

RETRY_AFTER = 600.0  # seconds before a failed stack build is tried again


class StackImages:
    """Which stack images this engine has; a missing one is built once, off the
    caller's thread."""

    def __init__(self, client: docker.DockerClient, default_image: str) -> None:
        self.client = client
        self.default_image = default_image
        self._lock = threading.Lock()
        self._here: set[str] = set()  # images seen on the engine (never removed by us)
        self._building: set[str] = set()
        self._failed: dict[str, tuple[float, str]] = {}  # image -> (when, why)

    def stack_of(self, image: str) -> str | None:
        """The stack `image` is, or None for an image that is no stack of ours."""
        if image == self.default_image:
            return DEFAULT_STACK
        repository, tag = split_tag(image)
        if repository == split_tag(self.default_image)[0] and tag in STACKS:
            return tag
        return None

    def need(self, image: str) -> None:
        """Return when the engine has `image`; else, for a stack of ours, start
        building it and raise RuntimeFailure saying so (a one-line reason)."""
        if image in self._here:
            return
        if image_exists(self.client, image):
            with self._lock:
                self._here.add(image)
            return
        name = self.stack_of(image)
        if name is None:
            return  # not ours: the engine's own error says what is missing
        with self._lock:
            failed = self._failed.get(image)
            if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER:
                raise RuntimeFailure(
                    f"the {name} stack could not be built here ({failed[1]}): "
                    f"run `pc stack build {name}` on this node"
                )
            if image not in self._building:
                self._building.add(image)
                threading.Thread(target=self._build, args=(image, name), daemon=True).start()
        raise RuntimeFailure(
            f"the {name} stack is not on this node yet: building {image} (first use, "
            "seconds from a cached root filesystem, minutes without)"
        )

    def _build(self, image: str, name: str) -> None:
        try:
            build_stack_image(self.client, image, log.info, default_cache_dir(), name)
        except Exception as e:  # said through the next start's failure
            log.warning("could not build the %s stack: %s", name, e)
            with self._lock:
                self._failed[image] = (time.monotonic(), str(e).splitlines()[0] if str(e) else "")
        else:
            log.info("the %s stack is ready: %s", name, image)
            with self._lock:
                self._here.add(image)
                self._failed.pop(image, None)
        finally:
            with self._lock:
                self._building.discard(image)
