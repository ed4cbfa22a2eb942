"""The layout's rules, checked on the code itself: the node's core imports
nothing from the swarm (and works without it), and files and classes stay
small enough to read in one sitting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("peoplescloud", "swarm", "gitserver", "builder", "router")
MAX_FILE_LINES = 500
MAX_CLASS_LINES = 300


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names (at any depth of the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_core_imports_nothing_from_the_swarm() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources("peoplescloud")
        for module in sorted(imported_modules(path))
        if module == "swarm" or module.startswith("swarm.")
    ]
    assert offenders == []


def test_the_rule_above_sees_an_import_of_the_swarm(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from swarm.peer import PeerClient\n")
    assert "swarm.peer" in imported_modules(sneaky)


def test_a_lone_node_and_the_cli_work_without_the_swarm_package() -> None:
    """With `swarm` unimportable, the daemon's modules load and `pc` still parses
    its lone-node commands (the swarm's are simply absent)."""
    script = (
        "import sys\n"
        "sys.modules['swarm'] = None\n"  # any import of it now fails
        "import peoplescloud.daemon, peoplescloud.doctor\n"
        "from peoplescloud import cli\n"
        "cli.parser().parse_args(['doctor'])\n"
        "print('swarm' in sys.modules and sys.modules['swarm'] is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("path", sources(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_classes_stay_small(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{len(lines)} lines: split it by what it does"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"class {node.name} has {size} lines"
