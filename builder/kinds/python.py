"""Python apps: `requirements.txt` or `pyproject.toml`, dependencies in `.venv`."""

from __future__ import annotations

import re
from pathlib import Path

from builder.cache import cache_key, install_cached
from builder.errors import BuildError
from builder.executor import Config, Executor, Say, uv_binary
from builder.tree import check_tree
from builder.versions import Offer, python_fits, read_request

NAME = "Python"
KIND = "python"
LOOKS_FOR = "requirements.txt or pyproject.toml (Python)"
NOTHING_TO_RUN = "add bot.py or a Procfile (e.g. 'web: gunicorn app:app')"
MARKERS = ("bot.py", "requirements.txt", "pyproject.toml", "runtime.txt", ".python-version")
BIN_DIRS = (".venv/bin",)  # put on PATH when the slug runs
SYSTEM_LINKS = (".venv/bin/python*",)  # the venv's interpreter: /usr/bin/python3
DEPENDENCY_FILES = ("requirements.txt", "pyproject.toml", "runtime.txt", ".python-version")

# A requirement naming a package of an index: a name, extras, then nothing, version
# specifiers, markers, or `@` and a remote URL. Anything else (paths, `-e`, `-r`,
# `file:`, options) may make the install read the app's own files.
_INDEX_REQUIREMENT = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*"
    r"(|[<>=!~;(].*|@\s*(https?|git\+https?|git\+ssh)://\S+(\s*;.*)?)"
)
_HARMLESS_OPTIONS = re.compile(r"(-i|--index-url|--extra-index-url|--trusted-host)(\s|=)\S+")

# One step, so one container: a venv made by uv (a second, where `python3 -m venv`
# spends seconds installing pip), then the app's dependencies ("$@") with uv. For
# `run APP pip freeze`, `.venv/bin/pip` is a two-line script running the stack's
# own pip from Debian's wheel with the venv's python (pip runs from its wheel):
# putting pip itself in was 500 of the venv's 520 files, a third of the install
# step, copied and hashed again by every later push. A fixed script: the app's
# input only ever arrives as arguments.
_INSTALL = (
    "uv venv --quiet --python python3 .venv"
    " && for w in /usr/share/python-wheels/pip-*.whl; do"
    ' [ ! -f "$w" ] || printf \'#!/bin/sh\\nexec "${0%%/*}/python" %s/pip "$@"\\n\' "$w"'
    " > .venv/bin/pip; done"
    " && { [ ! -f .venv/bin/pip ] || { chmod 755 .venv/bin/pip && ln -s pip .venv/bin/pip3; }; }"
    ' && exec uv pip install --python .venv/bin/python "$@"'
)
# Python 2 (uv makes no Python 2 venvs): the stack's virtualenv, seeded offline
# with the pip it embeds for 2.7 (20.3.4), which then installs the dependencies.
# --copies: a Python 2 venv otherwise links stdlib modules (os.py) out of the slug.
_INSTALL_PY2 = (
    "virtualenv --quiet --no-download --no-periodic-update --copies --python python2.7 .venv"
    ' && exec .venv/bin/pip install "$@"'
)


def detect(tree: Path) -> bool:
    return (tree / "requirements.txt").is_file() or (tree / "pyproject.toml").is_file()


def default_processes(tree: Path) -> dict[str, str]:
    return {"bot": "python bot.py"} if (tree / "bot.py").is_file() else {}


def build(tree: Path, out: Path, cache: Path, executor: Executor, say: Say, config: Config) -> None:
    """Check the requested Python against the stack's, then install the
    dependencies into `out/.venv` (from the cache when they did not change)."""
    python = check_python_version(tree, executor)
    if (tree / "requirements.txt").is_file():
        install = ["-r", "requirements.txt"]
        local = names_local_paths(tree, tree / "requirements.txt")
        key: str | None = cache_key(executor.identity(), KIND, tree, DEPENDENCY_FILES, local)
    else:
        # `pip install .` copies the app itself into the venv, so the result
        # depends on every source file: never reuse it for another commit.
        install = ["."]
        key = None

    python2 = python.startswith("2.")  # only a stack asked for by version has Python 2
    if uv_binary() is None and not python2:
        raise BuildError("this node has no uv: reinstall it (pip install -e .)")
    script, tool = (_INSTALL_PY2, "pip install") if python2 else (_INSTALL, "uv pip install")

    def run_install() -> None:
        shown = " ".join([tool, *install])
        executor.run(["sh", "-c", script, "sh", *install], out, cache, say, shown)
        if executor.slug_moves:
            check_tree(out, ".venv", SYSTEM_LINKS)  # before the host rewrites files in it
            make_relocatable(out / ".venv")

    label = "Installing requirements"
    install_cached(cache, key, out / ".venv", label, run_install, say, SYSTEM_LINKS)
    collectstatic(out, cache, executor, say, config)


def collectstatic(out: Path, cache: Path, executor: Executor, say: Say, config: Config) -> None:
    """Gather a Django app's static files into the slug, as Heroku's Python
    buildpack does, so that whitenoise serves them from the first push. Runs the
    app's own settings, with its config vars; DISABLE_COLLECTSTATIC=1 skips it."""
    if not (out / "manage.py").is_file():
        return
    if not any((out / ".venv").glob("lib/python*/site-packages/django/__init__.py")):
        return
    if config.get("DISABLE_COLLECTSTATIC", "").lower() not in ("", "0", "false"):
        say("-----> Skipping collectstatic (DISABLE_COLLECTSTATIC is set)")
        return
    say("-----> $ python manage.py collectstatic --noinput")
    argv = [".venv/bin/python", "manage.py", "collectstatic", "--noinput"]
    try:
        executor.run(argv, out, cache, say, config=config)
    except BuildError as e:
        raise BuildError(f"{e} (set DISABLE_COLLECTSTATIC=1 to build without it)") from None


def names_local_paths(tree: Path, requirements: Path) -> bool:
    """Whether a requirements file may make pip read files of the app itself
    (`./lib`, `-e .`, `file:`, `-r other.txt`, a wheel in the tree), so that
    the installed result depends on more than the file's text."""
    text = requirements.read_text(encoding="utf-8", errors="replace")
    for raw in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line or _HARMLESS_OPTIONS.fullmatch(line):
            continue
        name = re.split(r"[\s\[<>=!~;@(]", line, maxsplit=1)[0]
        if not _INDEX_REQUIREMENT.fullmatch(line) or (tree / name).exists():
            return True
    return False


def check_python_version(tree: Path, executor: Executor) -> str:
    """Refuse a Python version request (see builder.versions) that the executor's
    stack does not meet: the app would build against one Python and break on it.
    Returns the stack's Python ("2.7") when asked for one, else "" (without
    asking the stack: that is a container start)."""
    request = read_request(tree)
    if request.python is None:
        return ""
    have = ".".join(executor.python_version().split(".")[:2])
    if not python_fits(Offer("", have), request.python):
        raise BuildError(f"this stack has Python {have}; {request.python_from}")
    return have


def make_relocatable(venv: Path) -> None:
    """Point the scripts of `venv/bin` at `python3` on PATH instead of the venv's
    absolute build-time path.

    pip writes `#!<venv>/bin/python3` into every script it installs. On the host
    the slug is built in a temporary directory and run from another one (the
    store's copy), where that path does not exist. The runtime puts
    `<slug>/.venv/bin` first on PATH, so `/usr/bin/env python3` finds the venv's
    own interpreter, which reads the `pyvenv.cfg` beside it and so uses the
    venv's packages wherever the slug lies.
    """
    python = str(venv / "bin" / "python").encode()
    for script in (venv / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        lines = script.read_bytes().split(b"\n")
        if lines[0].startswith(b"#!") and python in lines[0]:
            skip = 1
        elif lines[0] == b"#!/bin/sh" and len(lines) > 2 and python in lines[1]:
            skip = 3  # pip's form for long paths: #!/bin/sh, '''exec' <python> "$0" "$@", ' '''
        else:
            continue
        script.write_bytes(b"\n".join([b"#!/usr/bin/env python3", *lines[skip:]]))
