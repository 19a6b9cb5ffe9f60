"""Imports point one way: config <- feeds, hits <- resolver <- betblock (composition root).

Reads every module's imports with ast and fails on a wrong arrow, so the data plane never grows
a dependency on aiohttp, SQL or parsers, and the control plane never on the resolver.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["config", "feeds", "hits", "resolver", "betblock"]
# package -> packages of ours it may import
ALLOWED = {
    "config": set(),
    "feeds": {"config"},
    "hits": {"config", "feeds"},
    "resolver": {"config", "feeds", "hits"},
    "betblock": {"config", "feeds", "hits", "resolver"},
}
# third-party modules the data plane must never import
FORBIDDEN_IN_RESOLVER = {"aiohttp", "asyncpg", "sqlite3", "dnslib"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_import_arrows_point_one_way() -> None:
    wrong = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for mod in _imports(path):
                if mod in PACKAGES and mod != pkg and mod not in ALLOWED[pkg]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {mod}")
                if pkg == "resolver" and mod in FORBIDDEN_IN_RESOLVER:
                    wrong.append(f"{path.relative_to(ROOT)} imports {mod} (not on the data plane)")
    assert wrong == []


def test_every_module_has_a_docstring() -> None:
    missing = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if p.name != "__init__.py" and ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert missing == []
