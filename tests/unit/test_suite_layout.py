"""The test suite's own shape: test modules share code only through the shared helper
modules, never by importing one another or a conftest."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SHARED = {"tests.helpers", "tests.proxy"}


def imported_test_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import reaches a sibling module
                found.add("." * node.level + (node.module or ""))
            elif node.module and node.module.split(".")[0] == "tests":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tests"}
    return found


def test_test_modules_import_only_the_shared_helpers():
    strays = {str(p.relative_to(TESTS)): sorted(mods - SHARED)
              for p in TESTS.rglob("*.py") if (mods := imported_test_modules(p)) - SHARED}
    assert strays == {}


def test_the_check_sees_a_stray(tmp_path):
    module = tmp_path / "test_x.py"
    module.write_text("from tests.deploy.conftest import tool\nfrom . import sibling\n"
                      "from tests.helpers import call\n")
    assert imported_test_modules(module) == {"tests.deploy.conftest", ".", "tests.helpers"}
