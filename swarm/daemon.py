"""`pc daemon`: compose the node and serve until SIGINT/SIGTERM.

Stopping the daemon never stops apps: instances belong to the runtime (a
container, a process in its own session), and the next daemon re-adopts them
on its first reconcile pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from docker import DockerClient

import builder
from gitserver.server import start_server
from router.proxy import Upstream, start_router
from swarm.deploy import Deployer
from swarm.errors import PCError
from swarm.identity import SwarmIdentity
from swarm.ipfs.kubo import ExternalKubo, Kubo, KuboNode
from swarm.ipfs.store import IpfsStore
from swarm.logbus import LogBus
from swarm.membership import Membership
from swarm.node import Node
from swarm.peer import start_peer_server
from swarm.raft import Conflict, NoQuorum
from swarm.reconciler import Reconciler
from swarm.replicated import ReplicatedState
from swarm.runtime.base import LABEL_NODE
from swarm.runtime.docker import LABEL_ONEOFF
from swarm.runtime.lease import clear_lease
from swarm.runtime.select import open_runtime
from swarm.settings import Settings
from swarm.state import State
from swarm.store import LocalStore, Store

log = logging.getLogger("pc")

RECONCILE_EVERY = 2.0  # seconds between passes that notice crashes
TICK_EVERY = 1.0  # in a swarm: lease renewal, placement, observation
MAINTAIN_EVERY = 3.0  # in a swarm: kubo connections and pins
PIN_TIMEOUT = 20.0  # one try at fetching a slug; the next round tries again
STOP_WAIT = 5.0  # seconds a loop's round under way may take to finish at stop


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
        settings.tmp_dir,  # build work dirs, repo copies
        settings.store_dir / "tmp",  # slugs being added to the store
        *settings.slugs_dir.glob("*.partial"),  # slugs being fetched from the store
        *(settings.cache_dir / "deps").glob(".tmp-*"),  # dependency cache entries
    ]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def sweep_containers(client: DockerClient, node: str) -> None:
    """Build and one-off `run` containers a killed daemon of this node left
    behind: nobody reads their output any more (as a one-off dyno ends with
    its session on Heroku)."""
    for kind in ("peoplescloud.build=1", f"{LABEL_ONEOFF}=1"):
        labels = [kind, f"{LABEL_NODE}={node}"]
        for container in client.containers.list(all=True, filters={"label": labels}):
            container.remove(force=True)


@dataclass
class Parts:
    """The node, composed; `membership` and `kubo` only in a swarm."""

    node: Node
    reconciler: Reconciler
    logbus: LogBus
    membership: Membership | None = None
    kubo: KuboNode | None = None


def build_node(settings: Settings) -> Parts:
    if not settings.state_file.exists():
        raise PCError(f"no node at {settings.home}: run `pc init` first")
    sweep_leftovers(settings)
    identity = SwarmIdentity.load(settings.swarm_file)
    kubo: KuboNode | None = None
    # What is opened is closed again if a later step fails: no kubo or Raft node
    # outlives a start that did not finish.
    with contextlib.ExitStack() as opened:
        if identity is None:
            clear_lease(settings.run_dir / "lease")  # alone (again): no lease to enforce
            state: State | ReplicatedState = State(settings.state_file)
            store: Store = LocalStore(settings.store_dir)
        else:  # a swarm: state agreed by Raft, slugs in the swarm's private IPFS
            if settings.ipfs.api:  # a kubo the operator runs: checked, never started or stopped
                kubo = ExternalKubo(
                    settings.ipfs.api,
                    identity.swarm_key,
                    settings.home / "swarm.key",  # for the operator to put in that kubo's repo
                    host=settings.advertised,
                )
            else:
                kubo = Kubo(
                    settings.ipfs_dir,
                    identity.swarm_key,
                    settings.ipfs.api_port,
                    settings.ipfs.swarm_port,
                    host=settings.advertised,
                )
                kubo.init()
            kubo.start()
            opened.callback(kubo.stop)
            store = IpfsStore(kubo.api_url, fetch_timeout=PIN_TIMEOUT)
            state = ReplicatedState(
                f"{settings.advertised}:{settings.raft_port}",
                identity.partners,
                identity.secret,
                settings.home / "raft",
            )
            opened.callback(state.close)
        runtime = open_runtime(settings, log.warning)
        log.info("runtime: %s, store: %s", runtime.name, "ipfs" if kubo else "local")
        client: DockerClient | None = getattr(runtime, "client", None)  # the docker runtime's
        if client is not None:
            sweep_containers(client, settings.name)
        logbus = LogBus(settings.logs_dir, runtime)
        reconciler = Reconciler(settings, state, store, runtime, logbus)  # type: ignore[arg-type]
        executor = make_executor(settings, client)
        deployer = Deployer(settings, state, store, reconciler, logbus, executor)  # type: ignore[arg-type]
        node = Node(settings, state, runtime, store, reconciler, deployer, logbus)  # type: ignore[arg-type]
        parts = Parts(node, reconciler, logbus, kubo=kubo)
        if identity is not None:
            assert isinstance(state, ReplicatedState) and isinstance(store, IpfsStore) and kubo
            membership = Membership(
                settings, identity, state, kubo, store, runtime, reconciler, logbus
            )
            reconciler.may_run = membership.may_run
            reconciler.elsewhere = membership.remote_instances
            reconciler.failed_elsewhere = membership.failed_elsewhere
            deployer.replicated = membership.wait_replicated
            node.membership = parts.membership = membership
        opened.pop_all()  # built: the daemon closes them when it stops
        return parts


def web_upstreams(parts: Parts, app: str, local_only: bool) -> list[Upstream] | None:
    """Where the router sends a request for `app`: this node's web instances,
    and (unless a sibling's router passed the request on) the routers of the
    siblings that run one. None: there is no such app."""
    if app not in parts.reconciler.apps():
        return None
    upstreams = [
        Upstream(s.address)
        for (name, process), s in parts.reconciler.instances().items()
        if name == app and s.running and s.address and process.startswith("web.")
    ]
    if parts.membership is not None and not local_only:
        routers = parts.membership.sibling_routers(app)
        upstreams += [Upstream(address, router=True) for address in routers]
    return upstreams


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stop = asyncio.Event()
    ready = False

    def on_signal() -> None:
        stop.set()
        if not ready:  # still starting: unwind what has started
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # Each part is closed (last first) however far the start got: a daemon that
    # fails or is stopped half-way leaves no kubo, port or Raft node behind.
    # Apps keep running.
    try:
        async with contextlib.AsyncExitStack() as started:
            started.callback(lock_home(settings).close)
            parts = await build_in_thread(settings)
            started.push_async_callback(close_parts, parts)
            loops = await start_node(settings, parts, started, stop)
            ready = True
            await stop.wait()
            log.info("stopping (apps keep running)")
            _, late = await asyncio.wait(loops, timeout=STOP_WAIT)  # let a round finish
            for task in late:
                task.cancel()
    except asyncio.CancelledError:
        log.info("stopped while starting (apps keep running)")


async def build_in_thread(settings: Settings) -> Parts:
    """`build_node` off the loop; stopped meanwhile, it closes what the build opened."""
    build = asyncio.ensure_future(asyncio.to_thread(build_node, settings))
    try:
        return await asyncio.shield(build)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await close_parts(await build)
        raise


async def start_node(
    settings: Settings, parts: Parts, started: contextlib.AsyncExitStack, stop: asyncio.Event
) -> list[asyncio.Future[None]]:
    """Serve the node's ports and start its loops (which end when `stop` is set)."""
    reconciler, membership = parts.reconciler, parts.membership
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()  # a state change arrived: reconcile now
    if membership is not None:
        membership.loop = loop
        membership.on_removed = lambda: loop.call_soon_threadsafe(stop.set)
        membership.state.on_change(  # what to run changed: reconcile now, not in 2 s
            lambda _version: loop.call_soon_threadsafe(wake.set), only={"apps"}
        )
        peers = await start_peer_server(membership.peer_app(), settings.listen, settings.peer_port)
        started.push_async_callback(peers.cleanup)
        if not membership.identity.partners and not membership.state.read().members:
            # The swarm's first start: the first member brings the lone node's state.
            local = State(settings.state_file)
            await asyncio.to_thread(seed_when_elected, membership, local, stop.is_set)
        elif membership.identity.sponsor:  # joined, not yet admitted
            started.callback(asyncio.ensure_future(membership.seek_admission()).cancel)
        # A lease first, or the first pass would stop everything.
        await asyncio.to_thread(membership.tick)
    await asyncio.to_thread(reconciler.reconcile)  # re-adopt what already runs
    ssh = await start_server(
        parts.node,
        settings.listen,
        settings.ssh_port,
        settings.host_key,
        max_push_bytes=settings.build.max_push_mb * 1024 * 1024,
    )
    started.callback(ssh.close)
    router = await start_router(
        lambda app, local_only: web_upstreams(parts, app, local_only),
        settings.domain,
        settings.name,
        settings.listen,
        settings.router_port,
        hop_key=(lambda: membership.identity.secret_bytes) if membership else bytes,
    )
    started.push_async_callback(router.cleanup)
    log.info(
        "node %s ready: ssh on %s:%d, router on %s:%d (http://APP.%s:%d/)%s",
        settings.name,
        settings.listen,
        settings.ssh_port,
        settings.listen,
        settings.router_port,
        settings.domain,
        settings.router_port,
        f", swarm {membership.identity.name} (peer API :{settings.peer_port})"
        if membership
        else "",
    )
    loops = [asyncio.ensure_future(every(RECONCILE_EVERY, reconciler.reconcile, stop, wake))]
    if membership is not None:
        loops.append(asyncio.ensure_future(every(TICK_EVERY, membership.tick, stop)))
        loops.append(asyncio.ensure_future(every(MAINTAIN_EVERY, membership.maintain, stop)))
    return loops


async def close_parts(parts: Parts) -> None:
    parts.reconciler.close()
    if parts.membership is not None:
        await parts.membership.client.close()
        parts.membership.state.close()
    if parts.kubo is not None:
        await asyncio.to_thread(parts.kubo.stop)  # the apps have their slugs already
    parts.logbus.close()


async def every(
    seconds: float,
    work: Callable[[], object],
    stop: asyncio.Event,
    wake: asyncio.Event | None = None,
) -> None:
    """Run blocking `work` in a thread every `seconds` (at once when `wake` is set)
    until `stop`. Loops are separate so a slow one never delays another: a lease
    renewal never waits behind a slug fetch."""
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if stop.is_set():
            return
        if wake is not None:
            wake.clear()
        try:
            await asyncio.to_thread(work)
        except Exception:  # one bad round must not end the daemon
            log.exception("%s failed", getattr(work, "__qualname__", work))


def seed_when_elected(
    membership: Membership, local: State, stopping: Callable[[], bool] = bool
) -> None:
    """A one-member swarm elects itself within a few seconds; then seed it."""
    deadline = time.monotonic() + 30
    while not stopping():
        try:
            membership.seed(local.read())
            return
        except (NoQuorum, Conflict):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
