"""Unit tests of the builder: Procfile parsing, detection, checkout, the dependency
cache and the build flow with a fake executor. No Docker, no network."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

import builder
from builder import BuildError, HostExecutor, build, checkout
from builder.build import detect, processes_for
from builder.cache import cache_key, install_cached
from builder.docker_executor import _lines
from builder.executor import Say, last_meaningful
from builder.kinds import node, procfile, python
from builder.kinds.python import check_python_version, make_relocatable
from builder.procfile import parse_procfile, read_procfile

APPS = Path(__file__).resolve().parent / "apps"

FILE, EXEC, LINK, DIR, GITLINK = 0o100644, 0o100755, 0o120000, 0o040000, 0o160000


# --- Procfile ---------------------------------------------------------------


def test_procfile_types_in_order_with_comments_and_crlf() -> None:
    text = (
        "# processes\r\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\r\n\r\nworker_2:python w.py\r\n"
    )
    assert parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker_2": "python w.py",
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("web: ok\nno colon here\n", 2),
        ("Web: python app.py\n", 1),  # types are lowercase
        ("\n\n2web: python app.py\n", 3),
        ("web:\n", 1),  # no command
        ("web: a\nweb: b\n", 2),  # twice
    ],
)
def test_procfile_bad_line_names_its_number(text: str, line: int) -> None:
    with pytest.raises(BuildError, match=f"^Procfile line {line}: "):
        parse_procfile(text)


def test_procfile_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Notepad saves UTF-8 with a BOM: the first type is still `web`, not '\\ufeffweb'."""
    (tmp_path / "Procfile").write_bytes(b"\xef\xbb\xbfweb: python app.py\r\nbot: python b.py\r\n")
    assert read_procfile(tmp_path) == {"web": "python app.py", "bot": "python b.py"}


def test_empty_procfile_is_refused() -> None:
    with pytest.raises(BuildError, match="no process types"):
        parse_procfile("# nothing\n\n")


# --- detection and process types --------------------------------------------


@pytest.mark.parametrize(
    ("app", "kind"),
    [
        ("python-bot", python),
        ("bad-requirement", python),
        ("node-bot", node),
        ("node-no-start", node),
        ("procfile-two", procfile),
        ("bad-procfile", procfile),
    ],
)
def test_sample_apps_are_detected(app: str, kind: object) -> None:
    assert detect(APPS / app) is kind


def test_nothing_recognisable_lists_what_was_looked_for() -> None:
    with pytest.raises(BuildError) as e:
        detect(APPS / "nothing")
    message = str(e.value)
    assert "\n" not in message
    for wanted in ("requirements.txt", "pyproject.toml", "package.json", "Procfile"):
        assert wanted in message


def test_default_processes() -> None:
    assert processes_for(python, APPS / "python-bot") == {"bot": "python bot.py"}
    assert processes_for(node, APPS / "node-bot") == {"bot": "npm start"}
    assert processes_for(procfile, APPS / "procfile-two").keys() == {"web", "worker"}


def test_procfile_replaces_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "bot.py").write_text("print('hi')\n")
    (tmp_path / "requirements.txt").write_text("six\n")
    (tmp_path / "Procfile").write_text("web: python -m http.server $PORT\n")
    assert processes_for(python, tmp_path) == {"web": "python -m http.server $PORT"}


def test_bad_procfile_fails_with_its_line() -> None:
    with pytest.raises(BuildError, match="Procfile line 3: .*'this line has no colon'"):
        processes_for(procfile, APPS / "bad-procfile")


def test_node_without_start_or_procfile_says_what_to_add() -> None:
    with pytest.raises(BuildError, match='add a "start" script to package.json or a Procfile'):
        processes_for(node, APPS / "node-no-start")


def test_python_without_bot_or_procfile_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six\n")
    with pytest.raises(BuildError, match="add bot.py or a Procfile"):
        processes_for(python, tmp_path)


# --- requested Python version -----------------------------------------------


class FakeExecutor:
    """Records the steps; "installs" by creating the directory the step would."""

    stack = "fake"
    slug_moves = False

    def __init__(self, python: str = "3.11.2") -> None:
        self.python = python
        self.steps: list[list[str]] = []
        self.configs: list[dict[str, str]] = []
        self.fail_collectstatic = False

    def identity(self) -> str:
        return "fake-stack-1"

    def python_version(self) -> str:
        return self.python

    def run(
        self,
        argv: Sequence[str],
        app: Path,
        cache: Path,
        say: Say,
        shown: str = "",
        config: Mapping[str, str] | None = None,
    ) -> None:
        self.steps.append(list(argv))
        self.configs.append(dict(config or {}))
        if argv[:2] == ["sh", "-c"] and "uv venv" in argv[2]:  # venv and install, one step
            (app / ".venv" / "bin").mkdir(parents=True)
            (app / ".venv" / "lib.txt").write_text("six\n")
            reqs = app / "requirements.txt"
            if reqs.is_file() and "Django" in reqs.read_text():
                django = app / ".venv" / "lib" / "python3.11" / "site-packages" / "django"
                django.mkdir(parents=True)
                (django / "__init__.py").write_text("")
        elif "collectstatic" in argv and self.fail_collectstatic:
            raise BuildError(f"'{' '.join(argv)}' failed: ImproperlyConfigured: no STATIC_ROOT")
        elif argv[0] == "npm":
            (app / "node_modules" / "is-number").mkdir(parents=True)
            (app / "node_modules" / "is-number" / "index.js").write_text("module.exports = 1\n")
        say("       step output")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("runtime.txt", "python-3.11.x"),
        ("runtime.txt", "python-3.11.4\n"),
        (".python-version", "3.11"),
        (".python-version", "3.11.9"),
        # As `uv init` writes it: pyenv and uv skip comments and blank lines.
        (".python-version", "# The Python version to use for the project.\n3.11\n"),
        (".python-version", "\n  # pinned\n\n3.11.4\n3.10\n"),  # further lines: fallbacks
    ],
)
def test_matching_python_version_is_accepted(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    check_python_version(tmp_path, FakeExecutor("3.11.2"))


def test_other_python_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runtime.txt").write_text("python-3.12.1\n")
    with pytest.raises(BuildError) as e:
        check_python_version(tmp_path, FakeExecutor("3.11.2"))
    assert str(e.value) == "this stack has Python 3.11; runtime.txt asks for 3.12"


class CountingExecutor(FakeExecutor):
    def __init__(self, python: str = "3.11.2") -> None:
        super().__init__(python)
        self.asked = 0

    def python_version(self) -> str:
        self.asked += 1  # a container start on the docker executor
        return self.python


def test_the_stacks_python_is_asked_only_for_a_version_request(tmp_path: Path) -> None:
    executor = CountingExecutor()
    assert check_python_version(tmp_path, executor) == "" and executor.asked == 0
    (tmp_path / "runtime.txt").write_text("python-2.7.18\n")
    assert check_python_version(tmp_path, CountingExecutor("2.7.18")) == "2.7"


def test_a_python_2_stack_installs_with_virtualenv_and_pip(tmp_path: Path) -> None:
    src, out, cache = tmp_path / "src", tmp_path / "out", tmp_path / "cache"
    src.mkdir()
    (src / "requirements.txt").write_text("six\n")
    (src / "runtime.txt").write_text("python-2.7.18\n")
    (src / "bot.py").write_text('print "hi"\n')
    executor = FakeExecutor("2.7.18")
    build(src, out, cache, executor, lambda line: None)
    [step] = executor.steps
    assert "virtualenv" in step[2] and "--python python2.7" in step[2] and "uv " not in step[2]


def test_unreadable_runtime_txt_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runtime.txt").write_text("3.11\n")
    with pytest.raises(BuildError, match="runtime.txt should hold .*python-3.11.x"):
        check_python_version(tmp_path, FakeExecutor())


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("runtime.txt", "python-\u0663.\u0661\u0661"),  # ARABIC-INDIC digits
        (".python-version", "\uff13.\uff11\uff11"),  # FULLWIDTH digits
        (".python-version", "# only a comment\n"),
    ],
)
def test_python_versions_are_ascii_digits(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(BuildError, match=f"{name} should hold a Python version like"):
        check_python_version(tmp_path, FakeExecutor("3.11.2"))


# --- checkout ---------------------------------------------------------------


def make_repo(path: Path, entries: dict[str, tuple[int, bytes]]) -> str:
    """A bare repo with one commit holding `entries` (path -> (mode, data));
    for a submodule, data is the commit sha it points at. Returns the commit sha."""
    repo = Repo.init_bare(str(path), mkdir=True)
    store = repo.object_store

    def write(level: dict) -> bytes:
        tree = Tree()
        for name, value in level.items():
            if isinstance(value, dict):
                tree.add(name.encode(), DIR, write(value))
            elif value[0] == GITLINK:
                tree.add(name.encode(), GITLINK, value[1])
            else:
                blob = Blob.from_string(value[1])
                store.add_object(blob)
                tree.add(name.encode(), value[0], blob.id)
        store.add_object(tree)
        return tree.id

    nested: dict = {}
    for rel, value in entries.items():
        *dirs, name = rel.split("/")
        level = nested
        for d in dirs:
            level = level.setdefault(d, {})
        level[name] = value
    commit = Commit()
    commit.tree = write(nested)
    commit.author = commit.committer = b"Test <test@example.org>"
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"test\n"
    store.add_object(commit)
    repo.close()
    return commit.id.decode()


def test_checkout_writes_files_exec_bits_and_inner_symlinks(tmp_path: Path) -> None:
    sha = make_repo(
        tmp_path / "repo.git",
        {
            "bot.py": (FILE, b"print('hi')\n"),
            "bin/run": (EXEC, b"#!/bin/sh\necho run\n"),
            "lib/deep/data.txt": (FILE, b"data"),
            "lib/link.txt": (LINK, b"deep/data.txt"),
            "up": (LINK, b"lib/deep/../.."),  # the root itself: inside
            "vendor/sub": (GITLINK, b"a" * 40),
        },
    )
    dest = tmp_path / "src"
    checkout(tmp_path / "repo.git", sha, dest)
    assert (dest / "bot.py").read_text() == "print('hi')\n"
    assert stat.S_IMODE((dest / "bin/run").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "bot.py").stat().st_mode) == 0o644
    assert os.readlink(dest / "lib/link.txt") == "deep/data.txt"
    assert (dest / "lib/link.txt").read_text() == "data"
    assert not (dest / "vendor/sub").exists()  # submodules are skipped


@pytest.mark.parametrize(
    "links",
    [
        {"evil": (LINK, b"/etc/passwd")},
        {"a/evil": (LINK, b"../../outside")},
        # each lexically inside, but together they climb out: sub/up is the root,
        # so sub/x resolves to the root's parent
        {"sub/up": (LINK, b".."), "sub/x": (LINK, b"up/../y")},
    ],
)
def test_checkout_refuses_symlinks_out_of_the_tree(tmp_path: Path, links: dict) -> None:
    sha = make_repo(tmp_path / "repo.git", {"bot.py": (FILE, b"x"), **links})
    with pytest.raises(BuildError, match=r"^symlink (evil|a/evil|sub/x) points outside the app"):
        checkout(tmp_path / "repo.git", sha, tmp_path / "src")


def test_a_push_refused_at_checkout_fails_as_a_build(tmp_path: Path) -> None:
    """The checkout's refusal reaches the pusher as `build failed: <reason>`, like
    the build's own, not as an internal error; and nothing is left in the tmp dir."""
    from peoplescloud.deploy import Deployer
    from peoplescloud.errors import PCError
    from peoplescloud.settings import Settings
    from peoplescloud.state import State
    from peoplescloud.store import LocalStore
    from tests.fakes import FakeBus, FakeCluster

    sha = make_repo(tmp_path / "repo.git", {"bot.py": (FILE, b"x"), "evil": (LINK, b"/etc")})
    settings = Settings(home=tmp_path / "home", name="n1")
    cluster = FakeCluster(State(settings.state_file), LocalStore(settings.store_dir))
    deployer = Deployer(settings, cluster, None, FakeBus(), HostExecutor())  # type: ignore[arg-type]
    said: list[str] = []
    with pytest.raises(PCError) as refused:
        deployer.deploy("ann", "annbot", tmp_path / "repo.git", sha, said.append)
    assert type(refused.value) is PCError  # not an internal error
    assert str(refused.value) == "build failed: symlink evil points outside the app (/etc)"
    assert list(settings.tmp_dir.iterdir()) == []


def test_checkout_wants_an_empty_dest_and_a_known_commit(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "repo.git", {"bot.py": (FILE, b"x")})
    with pytest.raises(BuildError, match="is not in the repository"):
        checkout(tmp_path / "repo.git", "0" * 40, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "left.txt").write_text("")
    with pytest.raises(BuildError, match="not empty"):
        checkout(tmp_path / "repo.git", sha, tmp_path / "b")


# --- the dependency cache ---------------------------------------------------


def test_cache_key_follows_the_dependency_files_only(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    (tmp_path / "bot.py").write_text("print(1)\n")
    files = python.DEPENDENCY_FILES
    key = cache_key("image-1", "python", tmp_path, files)
    (tmp_path / "bot.py").write_text("print(2)\n")
    assert cache_key("image-1", "python", tmp_path, files) == key
    assert cache_key("image-2", "python", tmp_path, files) != key
    assert cache_key("image-1", "node", tmp_path, files) != key
    (tmp_path / "runtime.txt").write_text("python-3.11.x\n")
    with_runtime = cache_key("image-1", "python", tmp_path, files)
    assert with_runtime != key
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    assert cache_key("image-1", "python", tmp_path, files) not in (key, with_runtime)


def test_cache_hit_links_instead_of_installing(tmp_path: Path) -> None:
    cache, said, installs = tmp_path / "cache", [], []

    def install(target: Path) -> None:
        installs.append(target)
        (target / "pkg").mkdir(parents=True)
        (target / "pkg" / "mod.py").write_text("X = 1\n")
        (target / "link").symlink_to("pkg/mod.py")

    first, second = tmp_path / "one" / ".venv", tmp_path / "two" / ".venv"
    install_cached(cache, "k1", first, "Installing", lambda: install(first), said.append)
    install_cached(cache, "k1", second, "Installing", lambda: install(second), said.append)
    assert installs == [first]
    assert said == ["-----> Installing", "-----> Installing ... done (cached)"]
    assert (second / "pkg" / "mod.py").stat().st_ino == (first / "pkg" / "mod.py").stat().st_ino
    assert os.readlink(second / "link") == "pkg/mod.py"
    assert sorted(p.name for p in (cache / "deps").iterdir()) == ["k1"]  # no temp dirs left


def test_failed_install_leaves_no_cache_entry(tmp_path: Path) -> None:
    target = tmp_path / "out" / ".venv"

    def install() -> None:
        (target / "half").mkdir(parents=True)
        raise BuildError("pip failed")

    with pytest.raises(BuildError):
        install_cached(tmp_path / "cache", "k1", target, "Installing", install, print)
    assert not (tmp_path / "cache" / "deps" / "k1").exists()


# --- the build flow ---------------------------------------------------------


def test_python_build_installs_once_then_uses_the_cache(tmp_path: Path) -> None:
    executor, said = FakeExecutor(), []
    result = build(
        APPS / "python-bot", tmp_path / "out1", tmp_path / "cache", executor, said.append
    )
    assert result == builder.BuildResult("python", "fake", {"bot": "python bot.py"})
    [step] = executor.steps  # one step: a venv by uv, then the requirements into it
    assert step[:2] == ["sh", "-c"] and step[3:] == ["sh", "-r", "requirements.txt"]
    assert said[0] == "-----> Python app detected (bot.py, requirements.txt)"
    assert said[-1] == "-----> Process types: bot"
    assert (tmp_path / "out1" / "bot.py").is_file()

    said.clear()
    build(APPS / "python-bot", tmp_path / "out2", tmp_path / "cache", executor, said.append)
    assert len(executor.steps) == 1  # nothing ran again
    assert "-----> Installing requirements ... done (cached)" in said
    assert (tmp_path / "out2" / ".venv" / "lib.txt").read_text() == "six\n"


def test_pyproject_app_is_installed_every_time(tmp_path: Path) -> None:
    # `pip install .` puts the app itself in the venv: a cached copy would be stale.
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text("[project]\nname = 'app'\nversion = '1'\n")
    (src / "Procfile").write_text("web: python -m app\n")
    executor = FakeExecutor()
    for out in ("a", "b"):
        build(src, tmp_path / out, tmp_path / "cache", executor, print)
    assert [step[-1] for step in executor.steps] == [".", "."]


def test_node_build_uses_npm_ci_with_a_lock_and_npm_install_without(tmp_path: Path) -> None:
    executor = FakeExecutor()
    build(APPS / "node-bot", tmp_path / "a", tmp_path / "cache", executor, print)
    assert executor.steps == [["npm", "ci", "--no-audit", "--no-fund"]]
    assert (tmp_path / "a" / "node_modules" / "is-number" / "index.js").is_file()

    src = tmp_path / "nolock"
    src.mkdir()
    (src / "package.json").write_text((APPS / "node-bot" / "package.json").read_text())
    build(src, tmp_path / "b", tmp_path / "cache", executor, print)
    assert executor.steps[-1] == ["npm", "install", "--no-audit", "--no-fund"]


def test_procfile_app_runs_nothing(tmp_path: Path) -> None:
    executor = FakeExecutor()
    result = build(APPS / "procfile-two", tmp_path / "out", tmp_path / "cache", executor, print)
    assert (result.kind, list(result.processes)) == ("procfile", ["web", "worker"])
    assert executor.steps == []
    assert (tmp_path / "out" / "web.py").is_file()


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        ("bad-procfile", "Procfile line 3"),
        ("node-no-start", '"start" script'),
        ("nothing", "no app found"),
    ],
)
def test_failing_apps_fail_before_installing(tmp_path: Path, app: str, reason: str) -> None:
    executor = FakeExecutor()
    with pytest.raises(BuildError, match=reason):
        build(APPS / app, tmp_path / "out", tmp_path / "cache", executor, print)
    assert executor.steps == []


# --- the host executor and its helpers -----------------------------------------


def test_host_executor_streams_indented_lines(tmp_path: Path) -> None:
    said: list[str] = []
    argv = ["python3", "-c", "print('one'); print(); print('two')"]
    HostExecutor().run(argv, tmp_path, tmp_path, said.append)
    assert said == ["       one", "       two"]


def test_host_executor_failure_gives_the_last_meaningful_line(tmp_path: Path) -> None:
    code = "import sys; print('ERROR: No matching distribution for six==999'); print(); sys.exit(1)"
    with pytest.raises(BuildError, match="failed: ERROR: No matching distribution for six==999$"):
        HostExecutor().run(["python3", "-c", code], tmp_path, tmp_path, print)


def test_host_executor_stops_a_step_at_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="took longer than 1 s and was stopped"):
        HostExecutor(timeout=1).run(["sleep", "60"], tmp_path, tmp_path, print)


def test_docker_output_is_cut_into_whole_lines() -> None:
    chunks = [b"Coll", b"ecting six\nDown", b"loading\r\n\xff", b"last"]
    assert list(_lines(iter(chunks))) == ["Collecting six", "Downloading", "\ufffdlast"]


def test_last_meaningful_skips_notices() -> None:
    lines = [
        "npm ERR! code E404",
        "npm ERR! 404 Not Found - is-numbr",
        "",
        "npm ERR! A complete log of this run can be found in: /tmp/x.log",
    ]
    assert last_meaningful(lines) == "npm ERR! 404 Not Found - is-numbr"
    assert last_meaningful(["ERROR: boom", "[notice] A new release of pip"]) == "ERROR: boom"


def test_make_relocatable_rewrites_only_venv_shebangs(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    (venv / "bin" / "pip").write_text(f"#!{python}3\nimport pip\n")
    (venv / "bin" / "long").write_text(
        f"#!/bin/sh\n'''exec' \"{python}3\" \"$0\" \"$@\"\n' '''\nimport long\n"
    )
    (venv / "bin" / "other").write_text("#!/bin/sh\necho other\n")
    (venv / "bin" / "python3").symlink_to("/usr/bin/python3")
    make_relocatable(venv)
    assert (venv / "bin" / "pip").read_text() == "#!/usr/bin/env python3\nimport pip\n"
    assert (venv / "bin" / "long").read_text() == "#!/usr/bin/env python3\nimport long\n"
    assert (venv / "bin" / "other").read_text() == "#!/bin/sh\necho other\n"
    assert os.readlink(venv / "bin" / "python3") == "/usr/bin/python3"


# --- Django: collectstatic during the build, as Heroku does -------------------

COLLECTSTATIC = [".venv/bin/python", "manage.py", "collectstatic", "--noinput"]


def django_tree(root: Path, requirements: str = "Django>=5.2,<6\n") -> Path:
    root.mkdir()
    (root / "requirements.txt").write_text(requirements)
    (root / "manage.py").write_text("# django-admin startproject wrote this\n")
    (root / "Procfile").write_text("web: gunicorn mysite.wsgi\n")
    return root


def test_a_django_app_gets_collectstatic_with_its_config(tmp_path: Path) -> None:
    executor, said = FakeExecutor(), []
    src = django_tree(tmp_path / "src")
    build(src, tmp_path / "out", tmp_path / "cache", executor, said.append, config={"K": "v"})
    assert executor.steps[-1] == COLLECTSTATIC
    assert executor.configs[-1] == {"K": "v"}  # settings may read config vars
    assert "-----> $ python manage.py collectstatic --noinput" in said


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_collectstatic_skips_it(tmp_path: Path, value: str) -> None:
    executor, said = FakeExecutor(), []
    src = django_tree(tmp_path / "src")
    config = {"DISABLE_COLLECTSTATIC": value}
    build(src, tmp_path / "out", tmp_path / "cache", executor, said.append, config=config)
    assert COLLECTSTATIC not in executor.steps
    assert "-----> Skipping collectstatic (DISABLE_COLLECTSTATIC is set)" in said


def test_no_collectstatic_without_django_or_manage_py(tmp_path: Path) -> None:
    executor = FakeExecutor()
    build(django_tree(tmp_path / "a", "six\n"), tmp_path / "out-a", tmp_path / "c", executor, print)
    src = django_tree(tmp_path / "b")
    (src / "manage.py").unlink()
    build(src, tmp_path / "out-b", tmp_path / "c", executor, print)
    assert COLLECTSTATIC not in executor.steps


def test_a_failing_collectstatic_fails_the_build_and_says_how_to_skip_it(tmp_path: Path) -> None:
    executor = FakeExecutor()
    executor.fail_collectstatic = True
    src = django_tree(tmp_path / "src")
    with pytest.raises(BuildError, match=r"no STATIC_ROOT \(set DISABLE_COLLECTSTATIC=1 to build"):
        build(src, tmp_path / "out", tmp_path / "cache", executor, print)
