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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import builder
from gitserver.server import start_server
from peoplescloud.bridge import every
from peoplescloud.certs import start_tls
from peoplescloud.cluster import Cluster, LocalParts, open_cluster
from peoplescloud.cron import CRON_EVERY, Cron
from peoplescloud.dashboard_api import start_api
from peoplescloud.dashboard_process import supervise
from peoplescloud.deploy import Deployer
from peoplescloud.domains import HostTable
from peoplescloud.errors import PCError
from peoplescloud.front_process import FrontProcess, Routes, choose
from peoplescloud.logbus import LogBus
from peoplescloud.private import make_private
from peoplescloud.reconciler import Reconciler
from peoplescloud.runtime import firewall, sandbox
from peoplescloud.runtime.base import LABEL_NODE, Runtime
from peoplescloud.runtime.select import open_runtime
from peoplescloud.service import Node
from peoplescloud.settings import Settings
from peoplescloud.store import LocalStore
from router.front import Front
from router.proxy import Upstream, start_router

if TYPE_CHECKING:  # docker-py is imported only where the docker runtime runs
    from docker import DockerClient

    from peoplescloud.runtime.docker import DockerRuntime

log = logging.getLogger("pc")

RECONCILE_EVERY = 2.0  # seconds between passes that notice crashes
STOP_WAIT = 5.0  # seconds a loop's round under way may take to finish at stop
# The loop's default pool: the node's own short blocking calls (asyncssh's logins
# among them). Users' commands, the lease and key lookups have pools of their own.
DEFAULT_THREADS = 16


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


def make_executor(settings: Settings, runtime: Runtime) -> builder.Executor:
    """Builds run where the app will: in the stack image for docker (on the node's
    isolated network, as its apps), on the host otherwise (in the sandbox)."""
    if (docker := as_docker(runtime)) is not None:
        return builder.DockerExecutor(
            docker.client,
            settings.build.stack_image,
            settings.build.ca_bundle,
            network=docker.holding_network,
            timeout=settings.build.timeout,
            memory_mb=settings.build.memory_mb,
            pids=settings.build.pids,
            labels={LABEL_NODE: settings.name},
        )
    shares = settings.shares
    box, _why = sandbox.probe(shares.sandbox_uid)  # the process runtime's: see its capabilities
    limits = sandbox.Limits(
        memory_mb=shares.memory_mb,
        file_mb=shares.sandbox_file_mb,
        pids=shares.sandbox_pids,
        tmp_mb=shares.sandbox_tmp_mb,
    )
    return builder.HostExecutor(
        timeout=settings.build.timeout,
        ca_bundle=settings.build.ca_bundle,
        jail=box.for_builds(limits) if box else None,
    )


def sweep_leftovers(settings: Settings) -> None:
    """What a killed daemon left half-made: nothing refers to any of it, and each
    is written under a temporary name before an atomic rename."""
    leftovers = [
        settings.tmp_dir,  # build work dirs, repo copies
        settings.tls_dir,  # a certificate's key being loaded
        settings.store_dir / "tmp",  # slugs being added to the store
        *settings.slugs_dir.glob("*.partial"),  # slugs being fetched from the store
        *settings.cache_dir.glob("*/deps/.tmp-*"),  # dependency cache entries
        *(p for p in settings.cache_dir.glob("*") if not (p / ".owner").is_file()),  # no app's
    ]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    # Packs a killed push was receiving: dulwich writes a thin pack as
    # objects/tmp_pack_* and a whole one as objects/pack/tmp*.pack (mkstemp's
    # name), and renames it to pack-<sha>.pack once complete.
    for repo in settings.repos_dir.glob("*.git"):
        for part in (*repo.glob("objects/tmp_pack_*"), *repo.glob("objects/pack/tmp*")):
            part.unlink(missing_ok=True)


def sweep_unused_slugs(cluster: Cluster) -> None:
    """Remove the slugs of a lone node's store that no release names: of an app
    destroyed by a daemon killed before it unpinned them, of a push killed
    between storing its slug and recording its release. In a swarm the pins are
    the planner's business (and the state the swarm's): nothing is touched."""
    store = cluster.store
    if not isinstance(store, LocalStore):
        return
    named = {r.slug for a in cluster.state.read().apps.values() for r in a.releases}
    for cid in store.cids() - named:
        store.unpin(cid)


def as_docker(runtime: Runtime) -> DockerRuntime | None:
    """The runtime as the docker runtime, or None: asked by name, so a node on the
    process runtime never imports docker-py."""
    if runtime.name != "docker":
        return None
    from peoplescloud.runtime.docker import DockerRuntime

    return runtime if isinstance(runtime, DockerRuntime) else None


def sweep_containers(client: DockerClient, node: str) -> None:
    """Build and one-off `run` containers a killed daemon of this node left
    behind: nobody reads their output any more (as a one-off dyno ends with
    its session on Heroku)."""
    from peoplescloud.runtime.docker import LABEL_ONEOFF

    for kind in ("peoplescloud.build=1", f"{LABEL_ONEOFF}=1"):
        labels = [kind, f"{LABEL_NODE}={node}"]
        for container in client.containers.list(all=True, filters={"label": labels}):
            container.remove(force=True)


@dataclass
class Parts:
    """The node, composed on its cluster (a lone node's, or its swarm's)."""

    node: Node
    reconciler: Reconciler
    logbus: LogBus
    cluster: Cluster
    cron: Cron

    @property
    def local(self) -> LocalParts:
        return LocalParts(self.node.settings, self.node.runtime, self.reconciler, self.logbus)


def build_node(settings: Settings) -> Parts:
    if not settings.state_file.exists():
        raise PCError(f"no node at {settings.home}: run `pc init` first")
    make_private(settings)  # a home made by an older version may be readable by all
    sweep_leftovers(settings)
    cluster = open_cluster(settings)  # a swarm's starts its kubo and Raft
    try:
        sweep_unused_slugs(cluster)
        runtime = open_runtime(settings, log.warning)
        log.info("runtime: %s, store: %s", runtime.name, cluster.store.name)
        if not runtime.capabilities.isolates_tenants:
            log.warning("%s", runtime.capabilities.owner_only())
        if (docker := as_docker(runtime)) is not None:
            sweep_containers(docker.client, settings.name)
            docker.sweep_network()  # one left by an older version, made another way
            docker.make_network()
        logbus = LogBus(settings.logs_dir, runtime)
        reconciler = Reconciler(settings, cluster, runtime, logbus)
        deployer = Deployer(settings, cluster, reconciler, logbus, make_executor(settings, runtime))
        node = Node(settings, cluster, runtime, reconciler, deployer, logbus)
    except BaseException:  # no kubo or Raft node outlives a start that did not finish
        asyncio.run(cluster.close())
        raise
    return Parts(node, reconciler, logbus, cluster, Cron(settings, cluster, reconciler, logbus))


def web_upstreams(parts: Parts, app: str, local_only: bool) -> list[Upstream] | None:
    """Where the router sends a request for `app`: this node's web instances that
    passed their health check and are not draining, and (unless a sibling's
    router passed the request on) the routers of the siblings that run one.
    None: there is no such app."""
    if app not in parts.reconciler.apps():
        return None
    upstreams = [Upstream(s.address) for s in parts.reconciler.serving(app) if s.address]
    if not local_only:
        routers = parts.cluster.sibling_routers(app)
        upstreams += [Upstream(address, router=True) for address in routers]
    return upstreams


def front_routes(parts: Parts, hosts: HostTable, domain: str) -> Routes:
    """For the nginx front: each app's host names and its ready local web instances."""
    names: dict[str, list[str]] = {}
    for host, app in hosts.domains().items():
        names.setdefault(app, []).append(host)
    routes: Routes = {}
    for app in parts.reconciler.apps():
        local = web_upstreams(parts, app, local_only=True) or []
        hostnames = [f"{app}.{domain}".lower(), *names.get(app, [])]
        routes[app] = (hostnames, [u.address for u in local if not u.router])
    return routes


async def start_front(
    settings: Settings,
    parts: Parts,
    hosts: HostTable,
    router: Path,
    binary: str,
    started: contextlib.AsyncExitStack,
) -> asyncio.Future[None]:
    """nginx on the router port, in front of `router` (see front_process.py)."""
    logbus = parts.logbus
    front = Front(
        listen=settings.listen,
        port=settings.router_port,
        router=router,
        work=settings.run_dir / "front",
        via=f"1.1 {settings.name}",
        limits=settings.router,
        logs=settings.router.logs,
        user="root" if os.geteuid() == 0 else "",
    )
    process = FrontProcess(
        binary,
        front,
        lambda: front_routes(parts, hosts, settings.domain),
        lambda app, line: logbus.line(app, "router", line),
    )
    await asyncio.to_thread(process.prepare)
    await process.start()
    done = asyncio.Event()
    task = asyncio.ensure_future(process.run(done))

    async def stop_front() -> None:
        done.set()
        await task

    started.push_async_callback(stop_front)
    return task


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when it is installed: the router's
    data path spends about half its time in the event loop and its socket calls."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(DEFAULT_THREADS, thread_name_prefix="pc"))
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
    reconciler, cluster = parts.reconciler, parts.cluster
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()  # what to run changed: reconcile now, not in 2 s

    def wake_soon() -> None:  # from any thread
        loop.call_soon_threadsafe(wake.set)

    reconciler.on_stopped = wake_soon  # start what replaces a stopped instance

    # The cluster first: in a swarm it takes a lease, or the first pass would stop everything.
    swarm_loops = await cluster.start(parts.local, stop, wake_soon)
    cluster_loops = [asyncio.ensure_future(c) for c in swarm_loops]
    started.callback(lambda: [f.cancel() for f in cluster_loops])  # for a start that fails
    await asyncio.to_thread(reconciler.reconcile)  # re-adopt what already runs
    # What a build asks its executor first (the host's python3 and node versions):
    # asked now, beside the start, so that the first push does not wait for it.
    threading.Thread(target=_warm, args=(parts.node.deployer.executor,), daemon=True).start()
    ssh = await start_server(
        parts.node,
        settings.listen,
        settings.ssh_port,
        settings.host_key,
        max_push_bytes=settings.build.max_push_mb * 1024 * 1024,
        max_unpacked_bytes=settings.build.max_tree_mb * 1024 * 1024,
    )
    started.callback(ssh.close)
    hosts = HostTable(cluster.state)  # custom domains and ACME answers, for the router
    tls, tls_loops = start_tls(settings, cluster.state, stop)
    logbus = parts.logbus
    try:
        nginx = choose(settings.router.front, settings.router_port)
    except RuntimeError as e:
        raise PCError(str(e)) from None
    front_socket = settings.run_dir / "front.sock"  # the Python router's, behind nginx
    settings.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    front_socket.unlink(missing_ok=True)
    router = await start_router(
        lambda app, local_only: web_upstreams(parts, app, local_only),
        settings.domain,
        settings.name,
        settings.listen,
        settings.router_port,
        hop_key=cluster.hop_key,
        resolve_host=hosts.app_for,
        challenge=hosts.challenge,
        tls=tls,
        limits=settings.router,
        on_request=(lambda app, line: logbus.line(app, "router", line))
        if settings.router.logs
        else None,
        unix=str(front_socket) if nginx else None,
    )
    started.push_async_callback(router.close)
    if nginx:
        try:
            await start_front(settings, parts, hosts, front_socket, nginx, started)
        except RuntimeError as e:
            raise PCError(str(e)) from None
        log.info(
            "data path: nginx (%s) on port %d, in front of the Python router (%s)",
            nginx,
            settings.router_port,
            front_socket,
        )
    else:
        log.info("data path: the Python router on port %d (no nginx front)", settings.router_port)
    if settings.dashboard_port:
        await start_dashboard(settings, parts, started)
    if as_docker(parts.node.runtime) is not None:  # its containers reach only the router
        router_port = settings.router_port or router.addresses[0][1]  # 0: the one bound
        if why := await asyncio.to_thread(firewall.protect, settings.name, router_port):
            log.warning("containers can reach this node's SSH, peer and Raft ports: %s", why)
    log.info(
        "node %s ready: ssh on %s:%d, router on %s:%d (http://APP.%s:%d/)%s",
        settings.name,
        settings.listen,
        settings.ssh_port,
        settings.listen,
        settings.router_port,
        settings.domain,
        settings.router_port,
        cluster.describe(),
    )
    if tls:
        log.info("router serves HTTPS on %s:%d", settings.listen, tls[1])
    loops: list[asyncio.Future[None]] = [
        asyncio.ensure_future(every(RECONCILE_EVERY, reconciler.tick, stop, wake)),
        *(asyncio.ensure_future(c) for c in tls_loops),
        asyncio.ensure_future(every(CRON_EVERY, parts.cron.tick, stop)),
    ]
    return loops + cluster_loops


async def start_dashboard(
    settings: Settings, parts: Parts, started: contextlib.AsyncExitStack
) -> None:
    """The local API for the dashboard, and its gunicorn (stopped last-first with the node)."""
    api = await start_api(parts.node, settings.run_dir / "api.sock")
    started.push_async_callback(api.cleanup)
    done = asyncio.Event()
    gunicorn = asyncio.ensure_future(supervise(settings, settings.run_dir / "api.sock", done))

    async def stop_dashboard() -> None:
        done.set()
        await gunicorn

    started.push_async_callback(stop_dashboard)


def _warm(executor: builder.Executor) -> None:
    with contextlib.suppress(Exception):  # a push says what is wrong, with its context
        executor.identity()


async def close_parts(parts: Parts) -> None:
    parts.reconciler.close()
    if (docker := as_docker(parts.node.runtime)) is not None:
        await asyncio.to_thread(docker.sweep_network)  # kept if instances run on
    await parts.cluster.close()  # a swarm's kubo stops: the apps have their slugs already
    parts.logbus.close()
