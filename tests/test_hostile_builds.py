"""Hostile builds (issue 8, "builds isolated per app"): one user's build must not
reach another's slug through the dependency caches, nor lead the host out of the
build through a symlink, nor run as root or without bounds.

The unit tests need nothing; the `docker` ones run real pip and npm builds in the
stack image, with local packages only (no registry is needed).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import docker
import docker.errors
import pytest

from builder import BuildError, DockerExecutor, app_cache, build
from builder.cache import cache_key, install_cached
from builder.docker_executor import BUILD_UID
from builder.executor import Say
from builder.kinds import node, python
from builder.tree import check_tree
from peoplescloud.errors import ConfigError
from peoplescloud.settings import BuildSettings

STACK = "peoplescloud/stack:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MINE = {"peoplescloud.node": f"test-hostile-{uuid.uuid4().hex[:8]}"}
SYSTEM_LINKS = python.SYSTEM_LINKS


class ProcfileExecutor:
    """An executor for builds that run no step (Procfile apps)."""

    stack = "fake"
    slug_moves = False

    def identity(self) -> str:
        return "fake"

    def python_version(self) -> str:
        return "3.11.2"

    def run(
        self, argv: Sequence[str], app: Path, cache: Path, say: Say, *_: object, **__: object
    ) -> None:
        raise AssertionError(f"no step expected, got {argv}")


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def python_app(root: Path, lib_setup: str, requirements: str = "./lib\n") -> Path:
    """An app whose requirements.txt installs its own ./lib (package `greet`)."""
    return write(
        root,
        {
            "requirements.txt": requirements,
            "Procfile": "web: python -m greet\n",
            "lib/setup.py": lib_setup,
            "lib/greet/__init__.py": "",
        },
    )


def greet_setup(who: str, extra: str = "") -> str:
    """A setup.py for `greet`, whose module says `who`; `extra` runs at install."""
    return (
        "import os\n"
        "from setuptools import setup\n"
        f"with open('greet/__main__.py', 'w') as f: f.write({f'print({who!r})'!r})\n"
        f"{extra}"
        "setup(name='greet', version='1.0', packages=['greet'])\n"
    )


def installed_greeting(slug: Path) -> str:
    found = list(slug.glob(".venv/lib/python3*/site-packages/greet/__main__.py"))
    assert len(found) == 1, found
    return found[0].read_text()


def files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs]


# --- unit: what the cache key and the cache dir depend on --------------------


@pytest.mark.parametrize(
    ("requirements", "local"),
    [
        ("six==1.17.0\nrequests[socks]>=2 ; python_version >= '3'\n", False),
        ("--index-url https://pypi.example/simple\nsix\n", False),
        ("pkg @ https://example.org/pkg-1.0.tar.gz\n", False),
        ("six==1.17.0 --hash=sha256:abc\n", False),
        ("./lib\n", True),
        ("-e ./lib\n", True),
        ("-e .\n", True),
        ("/abs/path\n", True),
        ("lib/\n", True),
        ("-r more.txt\n", True),
        ("-c constraints.txt\nsix\n", True),
        ("--find-links ./wheels\nsix\n", True),
        ("greet @ file:///app/lib\n", True),
        ("six \\\n  @ file:///app/lib\n", True),
        ("${HOME}/lib\n", True),
    ],
)
def test_requirements_naming_local_paths_are_recognised(
    tmp_path: Path, requirements: str, local: bool
) -> None:
    (tmp_path / "requirements.txt").write_text(requirements)
    assert python.names_local_paths(tmp_path, tmp_path / "requirements.txt") is local


def test_a_requirement_named_like_a_file_of_the_app_is_local(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("greet-1.0-py3-none-any.whl\n")
    (tmp_path / "greet-1.0-py3-none-any.whl").write_bytes(b"PK")
    assert python.names_local_paths(tmp_path, tmp_path / "requirements.txt")


@pytest.mark.parametrize(
    ("package", "local"),
    [
        ({"dependencies": {"is-number": "^7.0.0"}}, False),
        ({"dependencies": {"x": "github:user/x"}, "scripts": {"start": "node ."}}, False),
        ({"dependencies": {"lib": "file:./lib"}}, True),
        ({"dependencies": {"lib": "./lib"}}, True),
        ({"devDependencies": {"lib": "link:../lib"}}, True),
        ({"overrides": {"a": {"b": "file:b"}}}, True),
        ({"workspaces": ["packages/*"]}, True),
        ({"scripts": {"postinstall": "node gen.js"}}, True),
        ({"dependencies": ["not", "an", "object"]}, True),
    ],
)
def test_package_json_naming_local_paths_is_recognised(
    tmp_path: Path, package: dict, local: bool
) -> None:
    (tmp_path / "package.json").write_text(json.dumps(package))
    assert node.names_local_paths(tmp_path) is local


def test_a_changed_local_package_changes_the_key(tmp_path: Path) -> None:
    app = python_app(tmp_path, greet_setup("one"))
    local = python.names_local_paths(app, app / "requirements.txt")
    key = cache_key("img", "python", app, python.DEPENDENCY_FILES, local)
    (app / "lib" / "greet" / "__init__.py").write_text("X = 2\n")
    assert cache_key("img", "python", app, python.DEPENDENCY_FILES, local) != key


def test_each_app_has_its_own_cache_and_a_new_owner_starts_empty(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    a = app_cache(root, "a", "alice 2024-01-01")
    b = app_cache(root, "b", "bob 2024-01-01")
    assert a != b and a.parent == b.parent == root
    (a / "deps" / "k").mkdir(parents=True)
    (a / "pip").mkdir()
    assert app_cache(root, "a", "alice 2024-01-01") == a
    assert (a / "deps" / "k").is_dir()  # the same app: kept
    again = app_cache(root, "a", "mallory 2024-02-02")  # destroyed, made anew by another
    assert not (again / "deps").exists() and not (again / "pip").exists()


def test_only_the_last_entries_of_an_app_are_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for n in range(4):
        target = tmp_path / f"out{n}" / ".venv"

        def install(target: Path = target, n: int = n) -> None:
            write(target, {"n.txt": str(n)})

        install_cached(cache, f"k{n}", target, "Installing", install, print)
        time.sleep(0.01)
    assert sorted(p.name for p in (cache / "deps").iterdir()) == ["k2", "k3"]


# --- unit: symlinks, set-id bits, size ----------------------------------------


def test_a_dependency_dir_left_as_a_symlink_is_refused_and_not_copied(tmp_path: Path) -> None:
    secret = write(tmp_path / "node-home", {"repos/other.git/config": "secret\n"})
    slug = tmp_path / "slug"
    slug.mkdir()

    def install() -> None:
        (slug / "node_modules").symlink_to(secret)

    cache = tmp_path / "cache"
    with pytest.raises(BuildError, match="node_modules is a symlink .* points outside the app"):
        install_cached(cache, "k", slug / "node_modules", "Installing", install, print)
    assert files_under(cache) == []


@pytest.mark.parametrize(
    "links",
    [
        {"leak": "/etc"},
        {"leak": "../../node-home"},
        {"sub/up": "..", "sub/x": "up/../y"},  # each lexically inside, together outside
        {"a": "b", "b": "a"},  # a loop
        {".venv/bin/python3": "/usr/bin/python3", "x": ".venv/bin/python3/../../etc"},
        {".venv/bin/sub/python3": "/usr/bin/python3"},  # not the interpreter's place
    ],
)
def test_symlinks_out_of_the_slug_are_refused(tmp_path: Path, links: dict) -> None:
    slug = tmp_path / "slug"
    for rel, target in links.items():
        (slug / rel).parent.mkdir(parents=True, exist_ok=True)
        (slug / rel).symlink_to(target)
    with pytest.raises(BuildError, match="points outside the app"):
        check_tree(slug, system_links=SYSTEM_LINKS)


def test_inner_symlinks_and_the_venv_interpreter_are_kept(tmp_path: Path) -> None:
    slug = write(tmp_path / "slug", {"lib/index.js": "1", ".venv/lib/x.py": ""})
    links = {
        ".venv/bin/python3": "/usr/bin/python3",
        ".venv/bin/python": "python3",
        ".venv/lib64": "lib",
        "node_modules/lib": "../lib",
        "node_modules/.bin/tool": "../lib/index.js",
        "dangling": "nowhere",
    }
    for rel, target in links.items():
        (slug / rel).parent.mkdir(parents=True, exist_ok=True)
        (slug / rel).symlink_to(target)
    assert check_tree(slug, system_links=SYSTEM_LINKS) == 1


def test_set_id_and_shared_write_bits_are_stripped(tmp_path: Path) -> None:
    slug = write(tmp_path / "slug", {"bin/tool": "#!/bin/sh\n", "data": "x"})
    os.chmod(slug / "bin" / "tool", 0o6777)
    os.chmod(slug / "bin", 0o3777)
    check_tree(slug)
    assert stat.S_IMODE((slug / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((slug / "bin").stat().st_mode) == 0o755


def test_special_files_are_refused(tmp_path: Path) -> None:
    slug = tmp_path / "slug"
    slug.mkdir()
    os.mkfifo(slug / "pipe")
    with pytest.raises(BuildError, match="pipe, which is not a file"):
        check_tree(slug)


def test_a_slug_bigger_than_the_bound_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"Procfile": "web: python -m http.server\n"})
    (src / "zeros").write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    with pytest.raises(BuildError, match=r"2 MB, more than the 1 MB .*max_slug_mb"):
        build(src, tmp_path / "out", tmp_path / "cache", ProcfileExecutor(), print, max_slug_mb=1)
    build(src, tmp_path / "ok", tmp_path / "cache", ProcfileExecutor(), print, max_slug_mb=3)


class BinSwappingHostExecutor(ProcfileExecutor):
    """A host build whose pip step swaps .venv/bin for a link to a host directory."""

    slug_moves = True

    def __init__(self, host_dir: Path) -> None:
        self.host_dir = host_dir

    def run(
        self, argv: Sequence[str], app: Path, cache: Path, say: Say, *_: object, **__: object
    ) -> None:
        (app / ".venv").mkdir()
        (app / ".venv" / "bin").symlink_to(self.host_dir)


def test_the_host_rewrites_nothing_through_a_planted_venv_bin(tmp_path: Path) -> None:
    """On the host, scripts in .venv/bin are rewritten after the install: never
    through a symlink the install left."""
    host = tmp_path / "host-bin"
    script = f"#!{tmp_path / 'app-slug' / '.venv' / 'bin' / 'python'}\nsecret\n"
    write(host, {"tool": script})
    src = write(tmp_path / "src", {"requirements.txt": "six\n", "Procfile": "web: x\n"})
    executor = BinSwappingHostExecutor(host)
    with pytest.raises(BuildError, match=r"symlink \.venv/bin points outside the app"):
        build(src, tmp_path / "app-slug", tmp_path / "cache", executor, print)
    assert (host / "tool").read_text() == script


# --- docker: real builds with hostile install scripts -------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def network(client: docker.DockerClient) -> str:
    """Docker's bridge where it works, else the host's network (as in test_builder_docker)."""
    probe = client.containers.create(STACK, ["true"], network_mode="bridge", labels=MINE)
    try:
        probe.start()
    except docker.errors.APIError:
        return "host"
    finally:
        probe.remove(force=True)
    return "bridge"


@pytest.fixture
def executor(client: docker.DockerClient, network: str) -> DockerExecutor:
    return DockerExecutor(client, STACK, CA_BUNDLE, network=network, labels=MINE, pids=200)


@pytest.fixture(autouse=True)
def no_containers_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "client" in request.fixturenames:
        client = request.getfixturevalue("client")
        mine = [f"peoplescloud.node={MINE['peoplescloud.node']}", "peoplescloud.build=1"]
        left = client.containers.list(all=True, filters={"label": mine})
        for container in left:
            container.remove(force=True)
        assert left == []


@pytest.mark.docker
def test_another_apps_local_package_never_lands_in_a_slug(
    tmp_path: Path, executor: DockerExecutor
) -> None:
    """B pushes `./lib` and plants a file in its pip cache; A pushes the same
    requirements.txt text with another ./lib. A gets its own lib, and never sees
    B's download cache."""
    root = tmp_path / "cache"
    plant = "open('/cache/pip/planted-by-b', 'w').write('x')\n"
    b = python_app(tmp_path / "b", greet_setup("I am B", extra=plant))
    a = python_app(tmp_path / "a", greet_setup("I am A"))
    assert (a / "requirements.txt").read_text() == (b / "requirements.txt").read_text()

    b_cache = app_cache(root, "b", "bob 2024-01-01")
    build(b, tmp_path / "b-slug", b_cache, executor, print)
    assert installed_greeting(tmp_path / "b-slug") == "print('I am B')"
    assert (b_cache / "pip" / "planted-by-b").is_file()

    said: list[str] = []
    a_cache = app_cache(root, "a", "alice 2024-01-01")
    build(a, tmp_path / "a-slug", a_cache, executor, said.append)
    assert "-----> Installing requirements ... done (cached)" not in said
    assert installed_greeting(tmp_path / "a-slug") == "print('I am A')"
    assert not (a_cache / "pip" / "planted-by-b").exists()


@pytest.mark.docker
def test_a_changed_local_package_is_installed_again(
    tmp_path: Path, executor: DockerExecutor
) -> None:
    cache = app_cache(tmp_path / "cache", "a", "alice 2024-01-01")
    app = python_app(tmp_path / "one", greet_setup("v1"))
    build(app, tmp_path / "slug1", cache, executor, print)
    assert installed_greeting(tmp_path / "slug1") == "print('v1')"

    said: list[str] = []
    build(app, tmp_path / "slug2", cache, executor, said.append)  # unchanged: cached
    assert "-----> Installing requirements ... done (cached)" in said

    (app / "lib" / "setup.py").write_text(greet_setup("v2"))
    said.clear()
    build(app, tmp_path / "slug3", cache, executor, said.append)
    assert "-----> Installing requirements ... done (cached)" not in said
    assert installed_greeting(tmp_path / "slug3") == "print('v2')"


@pytest.mark.docker
def test_a_symlink_planted_by_a_python_install_is_refused(
    tmp_path: Path, executor: DockerExecutor
) -> None:
    """The local package's setup.py leaves `.venv/leak` pointing at the node's
    home (a path that means something on the host, not in the container)."""
    home = write(tmp_path / "node-home", {"repos/other.git/config": "secret\n"})
    leak = "/app/.venv/leak"  # setup.py runs twice: for its metadata, then to install
    plant = f"os.path.lexists({leak!r}) or os.symlink({str(home)!r}, {leak!r})\n"
    app = python_app(tmp_path / "app", greet_setup("hi", extra=plant))
    cache = app_cache(tmp_path / "cache", "a", "alice 2024-01-01")
    with pytest.raises(BuildError, match=r"symlink \.venv/leak points outside the app"):
        build(app, tmp_path / "slug", cache, executor, print)
    assert not any(p.read_bytes() == b"secret\n" for p in files_under(cache))
    assert not (cache / "deps").exists() or list((cache / "deps").iterdir()) == []


@pytest.mark.docker
def test_node_modules_replaced_by_a_symlink_is_not_copied(
    tmp_path: Path, executor: DockerExecutor
) -> None:
    """An install script swaps node_modules for a link to the node's repos: the
    host must not copy what it points at into the cache."""
    home = write(tmp_path / "node-home", {"repos/other.git/config": "secret\n"})
    swap = f"rm -rf node_modules && ln -s {home / 'repos'} node_modules"
    package = {"name": "evil", "version": "1.0.0", "scripts": {"postinstall": swap}}
    app = write(
        tmp_path / "app",
        {"package.json": json.dumps(package), "Procfile": "web: node -e 1\n"},
    )
    cache = app_cache(tmp_path / "cache", "a", "alice 2024-01-01")
    with pytest.raises(BuildError, match="node_modules.* points outside the app"):
        build(app, tmp_path / "slug", cache, executor, print)
    assert not any(p.read_bytes() == b"secret\n" for p in files_under(cache))


def watch_build_container(client: docker.DockerClient) -> Callable[[], dict]:
    """Start looking for this test run's build container in a thread; the
    returned function gives its `attrs`, taken while it runs."""
    seen: dict = {}

    def look() -> None:
        labels = [f"peoplescloud.node={MINE['peoplescloud.node']}", "peoplescloud.build=1"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            for container in client.containers.list(filters={"label": labels}):
                seen.update(container.attrs)
            time.sleep(0.1)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()

    def result() -> dict:
        thread.join()
        return seen

    return result


@pytest.mark.docker
def test_a_build_step_runs_unprivileged_and_bounded(
    tmp_path: Path, client: docker.DockerClient, network: str
) -> None:
    executor = DockerExecutor(
        client, STACK, CA_BUNDLE, network=network, labels=MINE, memory_mb=300, pids=64
    )
    app, cache = tmp_path / "slug", tmp_path / "cache"
    write(app, {"Procfile": "web: true\n"})
    probe = (
        "id -u; touch /app/written && echo app-writable; "
        "touch /var/tmp/x 2>/dev/null || echo root-read-only; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; sleep 2"
    )
    attrs = watch_build_container(client)
    lines: list[str] = []
    executor.run(["sh", "-c", probe], app, cache, lines.append)
    output = [line.strip() for line in lines]
    expected_uid = str(BUILD_UID) if os.getuid() == 0 else str(os.getuid())
    assert output[:3] == [expected_uid, "app-writable", "root-read-only"]
    assert "CapEff:\t0000000000000000" in lines[3] and lines[4].split() == ["NoNewPrivs:", "1"]
    assert expected_uid != "0"

    host = attrs()["HostConfig"]
    assert host["Memory"] == 300 * 1024 * 1024
    assert host["PidsLimit"] == 64
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert "size=300m" in host["Tmpfs"]["/tmp"]


@pytest.mark.parametrize("bad", [{"memory_mb": 10}, {"pids": 1}, {"max_slug_mb": 0}])
def test_build_bounds_below_their_minimum_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match=f"\\[build\\] {next(iter(bad))} must be at least"):
        BuildSettings(**bad)
