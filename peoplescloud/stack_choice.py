"""Which stack a push builds on: the newest one that meets the app's Python and
Node version requests (builder.versions), its image built on first use.

Builds in Docker get the chosen stack's image; the release records that image
and its instances run in it (a rollback too). Builds on the host (the process
runtime) have one "stack", the host's own python3 and node: a request they do
not meet fails the push with what the host offers.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import builder
from builder.build import kind_of
from builder.executor import INDENT
from builder.kinds import dockerfile
from builder.versions import Offer, choose, read_request
from peoplescloud.settings import Settings
from peoplescloud.stack import DEFAULT_STACK, STACKS, default_cache_dir, image_of

Say = Callable[[str], None]


class StackChooser:
    def __init__(self, settings: Settings, executor: builder.Executor) -> None:
        self.settings = settings
        self.executor = executor
        self._building = {name: threading.Lock() for name in STACKS}  # one build per stack
        self._host_node: str | None = None

    def executor_for(self, src: Path, say: Say) -> builder.Executor:
        """The executor to build the checked-out tree `src` with; a BuildError
        (one line, naming what is offered) when no stack meets its requests."""
        if kind_of(src) is dockerfile:
            return self.executor  # its image brings its own Python and Node
        request = read_request(src)
        with_stack = getattr(self.executor, "with_stack", None)
        if with_stack is None:  # the host's own Python and Node
            if request.python is not None or request.node is not None:
                choose([self._host_offer()], request, "host")
            return self.executor
        offer = choose([s.offer for s in STACKS.values()], request, DEFAULT_STACK)
        node = f", Node {offer.node}" if offer.node else ""
        say(f"-----> Stack {offer.name} (Python {offer.python}{node})")
        image = image_of(self.settings.build.stack_image, offer.name)
        self._ensure(image, offer.name, say)
        python = "python2.7" if offer.python.startswith("2.") else "python3"
        executor: builder.Executor = with_stack(image, python)
        return executor

    def _ensure(self, image: str, name: str, say: Say) -> None:
        """Build the stack's image when this node's engine lacks it (once at a time)."""
        from peoplescloud.stack import build_stack_image, image_exists

        client = self.executor.client  # type: ignore[attr-defined]  # a DockerExecutor
        if image_exists(client, image):
            return
        with self._building[name]:
            if image_exists(client, image):
                return  # another push built it meanwhile
            say(f"-----> The {name} stack is not on this node yet: building {image} (first use)")
            # The steps only: thousands of apt lines would drown the push.
            steps = lambda line: say(INDENT + line)  # noqa: E731
            build_stack_image(client, image, steps, default_cache_dir(), name, detail=_quiet)

    def _host_offer(self) -> Offer:
        python = ".".join(self.executor.python_version().split(".")[:2])
        if self._host_node is None:
            try:
                found = subprocess.run(["node", "--version"], capture_output=True, text=True)
                self._host_node = found.stdout.strip().lstrip("v").split(".")[0]
            except OSError:
                self._host_node = ""
        return Offer("host", python, self._host_node)


def _quiet(line: str) -> None:
    """Where the tools' output of a stack built for a push goes: nowhere (a
    failure still names its last line)."""
