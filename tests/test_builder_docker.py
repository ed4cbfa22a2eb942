"""Real builds of the sample apps: in containers of the stack image, and on the host.

They reach PyPI and npm (through the machine's proxy), so they are slower than
the unit tests; the docker ones need the engine and the stack image.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from builder import BuildError, DockerExecutor, HostExecutor, build

APPS = Path(__file__).resolve().parent / "apps"
STACK = "peoplescloud/stack:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
RUNTIME_UID = "10001"


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def network(client: docker.DockerClient) -> str:
    """Docker's bridge where it works; some sandboxes have no docker0, and there
    build steps use the host's network to reach the registries."""
    probe = client.containers.create(
        STACK, ["true"], network_mode="bridge", labels={"peoplescloud.build": "1"}
    )
    try:
        probe.start()
    except docker.errors.APIError:
        return "host"
    finally:
        probe.remove(force=True)
    return "bridge"


@pytest.fixture
def executor(client: docker.DockerClient, network: str) -> DockerExecutor:
    return DockerExecutor(client, STACK, CA_BUNDLE, network=network, labels=MINE)


def run_slug(client: docker.DockerClient, slug: Path, argv: list[str]) -> str:
    """Run `argv` on the slug as the runtime would: read-only at /app, non-root,
    no network, PATH with the installed dependencies first. Returns the output."""
    output = client.containers.run(
        STACK,
        argv,
        remove=True,
        user=RUNTIME_UID,
        network_mode="none",
        working_dir="/app",
        volumes={str(slug): {"bind": "/app", "mode": "ro"}},
        environment={
            "HOME": "/tmp",
            "PATH": "/app/.venv/bin:/app/node_modules/.bin:/usr/local/bin:/usr/bin:/bin",
        },
    )
    return output.decode()


# This run's builds only: other builds may share the engine.
MINE = {"peoplescloud.node": f"test-{uuid.uuid4().hex[:8]}"}


def no_build_containers_left(client: docker.DockerClient) -> bool:
    mine = "peoplescloud.node=" + MINE["peoplescloud.node"]
    return client.containers.list(all=True, filters={"label": ["peoplescloud.build=1", mine]}) == []


@pytest.mark.docker
def test_python_bot_builds_runs_and_hits_the_cache(
    tmp_path: Path, client: docker.DockerClient, executor: DockerExecutor
) -> None:
    said: list[str] = []
    result = build(APPS / "python-bot", tmp_path / "one", tmp_path / "cache", executor, said.append)
    assert (result.kind, result.stack, result.processes) == (
        "python",
        STACK,
        {"bot": "python bot.py"},
    )
    assert said[0] == "-----> Python app detected (bot.py, requirements.txt)"
    assert "-----> Installing requirements" in said
    assert any(line.strip().startswith("+ six==") for line in said)  # uv: " + six==1.17.0"
    assert no_build_containers_left(client)

    # The runtime's user reads the slug through a read-only mount at /app.
    bot = ["sh", "-c", "timeout 2 python bot.py || true"]  # the bot never ends by itself
    out = run_slug(client, tmp_path / "one", bot)
    assert "logged in as python-bot (six 1.17.0)" in out

    # A source-only change: nothing is installed again.
    src = tmp_path / "src"
    shutil.copytree(APPS / "python-bot", src)
    (src / "bot.py").write_text((src / "bot.py").read_text().replace("logged in", "signed in"))
    said.clear()
    build(src, tmp_path / "two", tmp_path / "cache", executor, said.append)
    assert "-----> Installing requirements ... done (cached)" in said
    assert not any(line.startswith("       ") for line in said)  # no step ran
    out = run_slug(client, tmp_path / "two", bot)
    assert "signed in as python-bot (six 1.17.0)" in out


@pytest.mark.docker
def test_node_bot_builds_runs_and_hits_the_cache(
    tmp_path: Path, client: docker.DockerClient, executor: DockerExecutor
) -> None:
    said: list[str] = []
    result = build(APPS / "node-bot", tmp_path / "one", tmp_path / "cache", executor, said.append)
    assert (result.kind, result.processes) == ("node", {"bot": "npm start"})
    assert "-----> Installing dependencies (npm ci)" in said
    bot = ["sh", "-c", "timeout 3 npm start || true"]  # the bot never ends by itself
    assert "logged in as node-bot (is-number says true)" in run_slug(client, tmp_path / "one", bot)

    said.clear()
    build(APPS / "node-bot", tmp_path / "two", tmp_path / "cache", executor, said.append)
    assert "-----> Installing dependencies (npm ci) ... done (cached)" in said
    assert not any(line.startswith("       ") for line in said)
    assert "logged in as node-bot (is-number says true)" in run_slug(client, tmp_path / "two", bot)


@pytest.mark.docker
def test_bad_requirement_fails_with_pips_reason(
    tmp_path: Path, client: docker.DockerClient, executor: DockerExecutor
) -> None:
    with pytest.raises(BuildError) as e:
        build(APPS / "bad-requirement", tmp_path / "out", tmp_path / "cache", executor, print)
    message = str(e.value)
    assert "\n" not in message
    assert "six==999.0.0" in message
    assert not (tmp_path / "cache" / "deps").exists() or not any(
        (tmp_path / "cache" / "deps").iterdir()
    )
    assert no_build_containers_left(client)


@pytest.mark.docker
def test_runtime_txt_for_another_python_is_refused(
    tmp_path: Path, executor: DockerExecutor
) -> None:
    major, minor = executor.python_version().split(".")[:2]
    src = tmp_path / "src"
    shutil.copytree(APPS / "python-bot", src)
    (src / "runtime.txt").write_text(f"python-{major}.{int(minor) + 1}.0\n")
    with pytest.raises(BuildError) as e:
        build(src, tmp_path / "out", tmp_path / "cache", executor, print)
    expected = (
        f"this stack has Python {major}.{minor}; runtime.txt asks for {major}.{int(minor) + 1}"
    )
    assert str(e.value) == expected


@pytest.mark.docker
def test_a_step_past_its_timeout_is_killed(
    tmp_path: Path, client: docker.DockerClient, network: str
) -> None:
    executor = DockerExecutor(client, STACK, CA_BUNDLE, timeout=2, network=network, labels=MINE)
    with pytest.raises(BuildError, match="took longer than 2 s and was stopped"):
        executor.run(["sleep", "120"], tmp_path, tmp_path, print)
    assert no_build_containers_left(client)


@pytest.mark.docker
def test_missing_stack_image_is_a_build_error(tmp_path: Path, client: docker.DockerClient) -> None:
    executor = DockerExecutor(client, "peoplescloud/no-such-stack:never", CA_BUNDLE)
    with pytest.raises(BuildError, match="stack image peoplescloud/no-such-stack:never"):
        build(APPS / "python-bot", tmp_path / "out", tmp_path / "cache", executor, print)


def test_python_bot_on_the_host_runs_from_another_path(tmp_path: Path) -> None:
    executor = HostExecutor(ca_bundle=CA_BUNDLE)
    said: list[str] = []
    result = build(APPS / "python-bot", tmp_path / "out", tmp_path / "cache", executor, said.append)
    assert (result.kind, result.stack) == ("python", "host")
    assert "-----> Installing requirements" in said

    said.clear()
    build(APPS / "python-bot", tmp_path / "again", tmp_path / "cache", executor, said.append)
    assert "-----> Installing requirements ... done (cached)" in said

    # The process runtime runs a copy of the slug somewhere else.
    moved = tmp_path / "elsewhere" / "slug"
    shutil.copytree(tmp_path / "again", moved, symlinks=True)
    shutil.rmtree(tmp_path / "out")
    shutil.rmtree(tmp_path / "again")
    env = {"PATH": f"{moved}/.venv/bin:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    code = "import six, sys; print(six.__version__, sys.prefix)"
    found = subprocess.run(
        ["python3", "-c", code], cwd=moved, env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == ["1.17.0", str(moved / ".venv")]
    # `run APP pip freeze`: the stack's pip, run by the moved venv's python, lists the venv
    pip = subprocess.run(
        ["pip", "freeze"], cwd=moved, env=env, capture_output=True, text=True, check=True
    )
    assert pip.stdout.split() == ["six==1.17.0"]
