"""The parsing side of feeds stays pure: no network, SQL, resolver or composition code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    *sorted((ROOT / "feeds" / "formats").glob("*.py")),
    ROOT / "feeds" / "normalize.py",
    ROOT / "feeds" / "entry.py",
    ROOT / "feeds" / "validate.py",
]
FORBIDDEN = {"aiohttp", "asyncpg", "sqlite3", "resolver", "hits", "betblock", "socket", "urllib", "http"}


def test_formats_import_nothing_forbidden() -> None:
    wrong = []
    for path in PURE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert wrong == []
    assert ast.get_docstring(ast.parse((ROOT / "feeds" / "formats" / "__init__.py").read_text()))
