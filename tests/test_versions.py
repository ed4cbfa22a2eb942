"""Which stack an app's version requests pick (builder.versions): no Docker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.versions import Offer, choose, read_request
from peoplescloud.stack import DEFAULT_STACK, STACKS, image_of

OFFERS = [s.offer for s in STACKS.values()]


def pick(tree: Path) -> str:
    return choose(OFFERS, read_request(tree), DEFAULT_STACK).name


@pytest.mark.parametrize(
    ("name", "text", "stack"),
    [
        (".python-version", "3.13\n", "trixie"),
        (".python-version", "# The Python version to use for the project.\n\n3.14\n", "forky"),
        (".python-version", "3.11.9\n3.13\n", "bookworm"),  # further lines: pyenv's fallbacks
        (".python-version", "2.7\n", "bullseye"),
        (".python-version", "3\n", "forky"),  # any 3.x: the newest
        ("runtime.txt", "python-3.13.1\n", "trixie"),
        ("runtime.txt", "python-2.7.18", "bullseye"),
        ("runtime.txt", "python-3.11.x", "bookworm"),
    ],
)
def test_a_python_version_file_picks_its_stack(
    tmp_path: Path, name: str, text: str, stack: str
) -> None:
    (tmp_path / name).write_text(text)
    assert pick(tmp_path) == stack


def test_runtime_txt_comes_before_python_version(tmp_path: Path) -> None:
    (tmp_path / "runtime.txt").write_text("python-2.7.18\n")
    (tmp_path / ".python-version").write_text("3.13\n")
    assert pick(tmp_path) == "bullseye"


@pytest.mark.parametrize(
    ("spec", "stack"),
    [
        (">=3.12", "forky"),  # the newest that satisfies
        (">=3.10,<3.14", "trixie"),
        ("~=3.11.0", "bookworm"),
        ("==3.13.*", "trixie"),
        (">=2.7, !=3.0.*", "forky"),
        ("<3", "bullseye"),
        (">=3.13.2", "forky"),
    ],
)
def test_requires_python_picks_the_newest_stack_that_meets_it(
    tmp_path: Path, spec: str, stack: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "x"\nrequires-python = "{spec}"\n')
    assert pick(tmp_path) == stack


def test_python_version_file_wins_over_requires_python(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nrequires-python = ">=3.12"\n')
    (tmp_path / ".python-version").write_text("3.13\n")
    assert pick(tmp_path) == "trixie"


@pytest.mark.parametrize(
    ("engines", "stack"),
    [
        ("20", "trixie"),
        ("20.x", "trixie"),
        ("^20.1.0", "trixie"),
        ("~18.19", "bookworm"),
        (">=18", "forky"),
        (">= 18 < 21", "trixie"),
        (">=18 <=20", "trixie"),
        ("18 || 20", "trixie"),
        ("18 - 20", "trixie"),
        ("<20", "bookworm"),
        (">20", "forky"),
        ("*", "forky"),
        ("v24", "forky"),
    ],
)
def test_engines_node_picks_the_newest_stack_that_meets_it(
    tmp_path: Path, engines: str, stack: str
) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"engines": {"node": engines}}))
    assert pick(tmp_path) == stack


def test_python_and_node_requests_must_both_be_met(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"engines": {"node": "20.x"}}))
    (tmp_path / ".python-version").write_text("3.14\n")
    with pytest.raises(BuildError) as e:
        pick(tmp_path)
    assert str(e.value) == (
        "no stack on this node has that: .python-version asks for 3.14;"
        " package.json's engines.node asks for '20.x';"
        " it offers Python 2.7, 3.11, 3.13, 3.14 and Node 18, 20, 24"
    )


def test_no_request_gets_the_default_stack(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("requests\n")
    (tmp_path / "package.json").write_text(json.dumps({"name": "x", "engines": {}}))
    assert pick(tmp_path) == DEFAULT_STACK == "bookworm"


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        (".python-version", "3.12\n", ".python-version asks for 3.12"),
        ("runtime.txt", "python-3.9.1", "runtime.txt asks for 3.9"),
    ],
)
def test_a_version_no_stack_has_names_the_offered_ones(
    tmp_path: Path, name: str, text: str, why: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BuildError) as e:
        pick(tmp_path)
    assert str(e.value) == (
        f"no stack on this node has that: {why}; it offers Python 2.7, 3.11, 3.13, 3.14"
        " and Node 18, 20, 24"
    )
    assert "\n" not in str(e.value)


def test_a_node_version_no_stack_has(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"engines": {"node": ">=26"}}))
    with pytest.raises(BuildError, match="engines.node asks for '>=26'; it offers Python"):
        pick(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("pyproject.toml", '[project]\nrequires-python = "3.12+"\n', "requires-python should be"),
        ("pyproject.toml", "[project\n", "pyproject.toml is not valid TOML"),
        ("package.json", '{"engines": {"node": "lts/*"}}', "engines.node should be a version"),
        ("package.json", '{"engines": {"node": "twenty"}}', "engines.node should be a version"),
        (".python-version", "pypy3.10\n", ".python-version should hold a Python version"),
        ("runtime.txt", "python-3\n", "runtime.txt should hold a Python version"),
    ],
)
def test_unreadable_requests_say_what_to_write(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BuildError, match=message):
        read_request(tmp_path)


def test_a_host_offer_without_node_refuses_a_node_request(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"engines": {"node": "20"}}))
    with pytest.raises(BuildError, match=r"it offers Python 3\.11 \(no Node\)"):
        choose([Offer("host", "3.11")], read_request(tmp_path), "host")


def test_stack_image_names() -> None:
    default = "peoplescloud/stack:bookworm"
    assert image_of(default, "bookworm") == default
    assert image_of(default, "forky") == "peoplescloud/stack:forky"
    assert image_of("reg:5000/stack:mine", "trixie") == "reg:5000/stack:trixie"


def test_an_unknown_stack_name_lists_the_stacks() -> None:
    from peoplescloud.errors import PCError
    from peoplescloud.stack import stack_named

    with pytest.raises(
        PCError, match="no stack 'jessie': the stacks are bullseye, bookworm, trixie, forky"
    ):
        stack_named("jessie")
