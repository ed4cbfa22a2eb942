"""`pc daemon`: compose the node and serve until SIGINT/SIGTERM.

Stopping the daemon never stops apps: instances belong to the runtime (a
container, a process in its own session), and the next daemon re-adopts them
on its first reconcile pass.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import signal
from typing import IO

from docker import DockerClient

import builder
from gitserver.server import start_server
from router.proxy import start_router
from swarm.deploy import Deployer
from swarm.errors import PCError
from swarm.logbus import LogBus
from swarm.node import Node
from swarm.reconciler import Reconciler
from swarm.runtime.base import LABEL_NODE
from swarm.runtime.select import open_runtime
from swarm.settings import Settings
from swarm.state import State
from swarm.store import LocalStore

log = logging.getLogger("pc")

RECONCILE_EVERY = 2.0  # seconds between passes that notice crashes


def lock_home(settings: Settings) -> IO[str]:
    """One daemon per node home: a second one would fight the first over its apps."""
    f = open(settings.home / "daemon.lock", "w")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PCError(f"a daemon already runs for {settings.home}") from None
    f.write(str(os.getpid()))
    f.flush()
    return f


def make_executor(settings: Settings, client: DockerClient | None) -> builder.Executor:
    """Builds run where the app will: in the stack image for docker, on the host otherwise."""
    if client is not None:
        return builder.DockerExecutor(
            client,
            settings.build.stack_image,
            settings.build.ca_bundle,
            timeout=settings.build.timeout,
            labels={LABEL_NODE: settings.name},
        )
    return builder.HostExecutor(timeout=settings.build.timeout, ca_bundle=settings.build.ca_bundle)


def sweep_leftovers(settings: Settings) -> None:
    """What a killed daemon left half-made: nothing refers to any of it, and each
    is written under a temporary name before an atomic rename."""
    leftovers = [
        settings.home / "tmp",  # build work dirs
        settings.store_dir / "tmp",  # slugs being added to the store
        *settings.slugs_dir.glob("*.partial"),  # slugs being fetched from the store
        *(settings.cache_dir / "deps").glob(".tmp-*"),  # dependency cache entries
    ]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def sweep_build_containers(client: DockerClient, node: str) -> None:
    """Build containers a killed daemon of this node left behind."""
    labels = ["peoplescloud.build=1", f"{LABEL_NODE}={node}"]
    for container in client.containers.list(all=True, filters={"label": labels}):
        container.remove(force=True)


def build_node(settings: Settings) -> tuple[Node, Reconciler, LogBus]:
    if not settings.state_file.exists():
        raise PCError(f"no node at {settings.home}: run `pc init` first")
    sweep_leftovers(settings)
    state = State(settings.state_file)
    store = LocalStore(settings.store_dir)
    runtime = open_runtime(settings, log.warning)
    log.info("runtime: %s", runtime.name)
    client: DockerClient | None = getattr(runtime, "client", None)  # the docker runtime's
    if client is not None:
        sweep_build_containers(client, settings.name)
    logbus = LogBus(settings.logs_dir, runtime)
    reconciler = Reconciler(settings, state, store, runtime, logbus)
    deployer = Deployer(settings, state, store, reconciler, logbus, make_executor(settings, client))
    node = Node(settings, state, runtime, store, reconciler, deployer, logbus)
    return node, reconciler, logbus


def web_addresses(reconciler: Reconciler, app: str) -> list[str]:
    return [
        s.address
        for (name, process), s in reconciler.instances().items()
        if name == app and s.running and s.address and process.startswith("web.")
    ]


async def serve(settings: Settings) -> None:
    lock = lock_home(settings)
    node, reconciler, logbus = build_node(settings)
    await asyncio.to_thread(reconciler.reconcile)  # re-adopt what already runs
    ssh = await start_server(
        node,
        settings.listen,
        settings.ssh_port,
        settings.host_key,
        max_push_bytes=settings.build.max_push_mb * 1024 * 1024,
    )
    router = await start_router(
        lambda app: web_addresses(reconciler, app),
        settings.domain,
        settings.listen,
        settings.router_port,
    )
    log.info(
        "node %s ready: ssh on %s:%d, router on %s:%d (http://APP.%s:%d/)",
        settings.name,
        settings.listen,
        settings.ssh_port,
        settings.listen,
        settings.router_port,
        settings.domain,
        settings.router_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), RECONCILE_EVERY)
            except TimeoutError:
                try:
                    await asyncio.to_thread(reconciler.reconcile)
                except Exception:  # one bad pass must not end the daemon
                    log.exception("reconcile pass failed")
    finally:
        log.info("stopping (apps keep running)")
        ssh.close()
        await router.cleanup()
        logbus.close()
        lock.close()
