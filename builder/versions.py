"""Which stack an app asks for: its Python and Node version requests, and the
newest offered stack that meets them.

A request is read, first found wins for Python, from `runtime.txt`
(`python-3.13.1`), `.python-version` (`3.13`; blank and `#` lines skipped, as
pyenv and uv read it), then `pyproject.toml`'s `project.requires-python`
(`>=3.12`); for Node from `package.json`'s `engines.node` (`20.x`, `>=18 <21`,
`^20.1`). A stack carries one Python and one Node release whose patch level is
Debian's, so a request is met when some release of the stack's major.minor
(Python) or major (Node) satisfies it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from builder.errors import BuildError
from builder.jsonfile import read_json

# ASCII digits only: `\d` also matches "٣" and "３", which no Python is numbered with.
_RUNTIME_TXT = re.compile(r"python-([0-9]+)\.([0-9]+)(\.[0-9x]+)?")
_PYTHON_VERSION = re.compile(r"([0-9]+)(\.[0-9]+)?(\.[0-9]+)?")
_PATCHES = range(100)  # the patch levels a stack's Python might have
_NODE_COMPARATOR = re.compile(
    r"(\^|~|>=|<=|>|<|=)?\s*v?([0-9]+|[xX*])(?:\.([0-9]+|[xX*]))?(?:\.([0-9]+|[xX*]))?"
)


@dataclass(frozen=True)
class Offer:
    """What one stack offers: its name, Python "3.13" and Node "20" ("" if none)."""

    name: str
    python: str
    node: str = ""


@dataclass(frozen=True)
class Request:
    """What a tree asks for; each part None when it asks nothing."""

    python: SpecifierSet | None = None
    python_from: str = ""  # "runtime.txt asks for 3.13"
    node: str | None = None  # package.json's engines.node, as written
    node_from: str = ""


def read_request(tree: Path) -> Request:
    """The version requests of the tree, or a BuildError naming the bad file."""
    python, python_from = _python_request(tree)
    node = _node_request(tree)
    node_from = f"package.json's engines.node asks for {node!r}" if node is not None else ""
    if node is not None:
        _node_ranges(node)  # a range we cannot read fails now, not as "no stack"
    return Request(python, python_from, node, node_from)


def choose(offers: Sequence[Offer], request: Request, default: str) -> Offer:
    """The newest offer meeting the request (`default` when there is none); a
    BuildError naming what is offered when no offer meets it."""
    if request.python is None and request.node is None:
        return next(o for o in offers if o.name == default)
    fits = [o for o in offers if python_fits(o, request.python) and node_fits(o, request.node)]
    if fits:
        return max(fits, key=lambda o: _numbers(o.python or "0"))
    why = "; ".join(w for w in (request.python_from, request.node_from) if w)
    pythons = ", ".join(sorted({o.python for o in offers if o.python}, key=_numbers))
    nodes = ", ".join(sorted({o.node for o in offers if o.node}, key=_numbers))
    offered = f"Python {pythons}" + (f" and Node {nodes}" if nodes else " (no Node)")
    raise BuildError(f"no stack on this node has that: {why}; it offers {offered}")


def python_fits(offer: Offer, wanted: SpecifierSet | None) -> bool:
    if wanted is None:
        return True
    if not offer.python:
        return False
    return any(wanted.contains(f"{offer.python}.{patch}") for patch in _PATCHES)


def node_fits(offer: Offer, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if not offer.node:
        return False
    major = int(offer.node)
    for comparators in _node_ranges(wanted):
        low, high = (0, 0), (10**9, 0)  # (major, minor) bounds: low inclusive, high exclusive
        for lo, hi in comparators:
            low, high = max(low, lo), min(high, hi)
        if low < high and low[0] <= major and (major, 0) < high:
            return True
    return False


def _python_request(tree: Path) -> tuple[SpecifierSet | None, str]:
    for name, pattern in (("runtime.txt", _RUNTIME_TXT), (".python-version", _PYTHON_VERSION)):
        path = tree / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if name == ".python-version":
            text = first_version_line(text)
        match = pattern.fullmatch(text)
        if match is None:
            example = "python-3.11.x" if name == "runtime.txt" else "3.11"
            raise BuildError(f"{name} should hold a Python version like {example}, not {text!r}")
        # "3.13.1" asks for 3.13 (the patch level is Debian's); "3" for any 3.x
        wanted = match.group(1) + ("." + match.group(2).lstrip(".") if match.group(2) else "")
        return SpecifierSet(f"=={wanted}.*"), f"{name} asks for {wanted}"
    return _requires_python(tree)


def _requires_python(tree: Path) -> tuple[SpecifierSet | None, str]:
    path = tree / "pyproject.toml"
    if not path.is_file():
        return None, ""
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BuildError(f"pyproject.toml is not valid TOML: {e}") from None
    spec = project.get("requires-python") if isinstance(project, dict) else None
    if spec is None:
        return None, ""
    try:
        return SpecifierSet(str(spec)), f"pyproject.toml's requires-python asks for {spec!r}"
    except InvalidSpecifier:
        raise BuildError(
            f"pyproject.toml's requires-python should be like '>=3.12', not {spec!r}"
        ) from None


def first_version_line(text: str) -> str:
    """The version a `.python-version` asks for, read as pyenv and uv read it: the
    first line that is neither blank nor a `#` comment (`uv init` writes a comment
    above the version). Further lines are pyenv's fallbacks: the first one rules."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return text


def _node_request(tree: Path) -> str | None:
    path = tree / "package.json"
    if not path.is_file():
        return None
    package = read_json(path)
    engines = package.get("engines") if isinstance(package, dict) else None
    wanted = engines.get("node") if isinstance(engines, dict) else None
    return wanted.strip() if isinstance(wanted, str) and wanted.strip() else None


Bound = tuple[int, int]  # (major, minor)


def _node_ranges(text: str) -> list[list[tuple[Bound, Bound]]]:
    """npm's range syntax, to (major, minor) bounds: alternatives joined by `||`,
    each a list of (low inclusive, high exclusive) that must all hold. Patch
    levels are ignored (the stack's is Debian's)."""
    ranges = []
    for part in text.split("||"):
        part = part.strip()
        hyphen = re.fullmatch(r"(\S+)\s+-\s+(\S+)", part)
        words = [">=" + hyphen.group(1), "<=" + hyphen.group(2)] if hyphen else _words(part)
        ranges.append([_bounds(w, text) for w in words] or [((0, 0), (10**9, 0))])
    return ranges


def _words(part: str) -> list[str]:
    """`>= 18 <21` -> [">=18", "<21"]: an operator may stand apart from its version."""
    return re.findall(r"(?:\^|~|>=|<=|>|<|=)?\s*[^\s<>=^~]+", part)


def _bounds(word: str, text: str) -> tuple[Bound, Bound]:
    match = _NODE_COMPARATOR.fullmatch(word.strip())
    if match is None or word.strip() in ("lts/*", "latest"):
        raise BuildError(
            "package.json's engines.node should be a version range like '20.x' or '>=18',"
            f" not {text!r}"
        )
    op, major, minor = match.group(1) or "", match.group(2), match.group(3)
    if not major.isdigit():
        return (0, 0), (10**9, 0)  # `*`, `x`
    ma = int(major)
    mi = int(minor) if minor is not None and minor.isdigit() else None
    exact_minor = mi is not None
    low: Bound = (ma, mi or 0)
    next_up: Bound = (ma, mi + 1) if exact_minor and op != "^" and mi is not None else (ma + 1, 0)
    if op in ("", "=", "^", "~"):
        return low, next_up
    if op == ">=":
        return low, (10**9, 0)
    if op == ">":
        return next_up, (10**9, 0)
    if op == "<":
        return (0, 0), low
    return (0, 0), next_up  # "<="


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())
