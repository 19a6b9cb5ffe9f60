"""Imports point one way: config <- feeds, hits <- resolver <- betblock (composition root);
config <- feeds <- xfr (zone transfers) <- betblock.

Reads every module's imports with ast and fails on a wrong arrow, so the data plane never grows
a dependency on aiohttp, SQL or parsers, and the control plane never on the resolver. feeds and
hits are peers: neither imports the other. Third-party imports are checked against an allowlist
per package, so a new dependency is a decision written here, not an accident.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["config", "feeds", "hits", "resolver", "xfr", "betblock"]
# package -> packages of ours it may import
ALLOWED = {
    "config": set(),
    "feeds": {"config"},
    "hits": {"config"},
    "resolver": {"config", "feeds", "hits"},
    "xfr": {"config", "feeds"},  # the transfer side of the control plane; never the data plane
    "betblock": {"config", "feeds", "hits", "resolver", "xfr"},
}
# third-party modules each package may import (anything not stdlib and not ours)
THIRD_PARTY = {
    "config": {"pydantic", "pydantic_settings"},
    "feeds": {"aiohttp", "cryptography", "dns", "idna", "numpy", "prometheus_client", "publicsuffixlist", "structlog"},
    "hits": {"aiohttp", "asyncpg", "prometheus_client", "pydantic", "structlog"},
    # the data plane: no HTTP, SQL or parsing libraries on the hot path
    "resolver": {"structlog"},
    # zone transfers: dnspython for the protocol (TSIG, parsing, NOTIFY), SQLite for the history
    "xfr": {"dns", "prometheus_client", "structlog"},
    "betblock": {"aiohttp", "dnslib", "prometheus_client", "pydantic", "structlog", "uvloop"},
}
# stdlib modules the data plane must not import either (SQL belongs to the hit log)
FORBIDDEN_STDLIB_IN_RESOLVER = {"sqlite3"}


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
                if pkg == "resolver" and mod in FORBIDDEN_STDLIB_IN_RESOLVER:
                    wrong.append(f"{path.relative_to(ROOT)} imports {mod} (not on the data plane)")
    assert wrong == []


def test_third_party_imports_are_on_each_packages_allowlist() -> None:
    wrong = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for mod in _imports(path):
                if mod in PACKAGES or mod in sys.stdlib_module_names or mod == "__future__":
                    continue
                if mod not in THIRD_PARTY[pkg]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {mod} (not in THIRD_PARTY[{pkg!r}])")
    assert wrong == []


def test_the_checker_sees_a_wrong_arrow_and_a_new_dependency(tmp_path: Path) -> None:
    # The rule must be able to fail: a module importing a peer and an unlisted library.
    bad = tmp_path / "bad.py"
    bad.write_text("import feeds.snapshot\nfrom requests import get\nimport os\n")
    mods = _imports(bad)
    assert "feeds" in mods and "feeds" not in ALLOWED["hits"]
    assert "requests" in mods and "requests" not in THIRD_PARTY["hits"]
    assert "os" in sys.stdlib_module_names


def test_every_module_has_a_docstring() -> None:
    missing = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if p.name != "__init__.py" and ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert missing == []


# A DNS worker process (betblock.worker) imports only what answering needs: not HTTP, SQL, the
# settings loader, metrics or DNS libraries, nor the hit log's recorder and stores or the feeds
# compiler; each would cost every worker start (and memory) for nothing.
WORKER = "betblock.worker"
WORKER_FORBIDDEN = {"aiohttp", "sqlite3", "asyncpg", "pydantic_settings", "prometheus_client", "dns", "dnslib", "idna"}
WORKER_FORBIDDEN_OURS = {"config.settings", "feeds.compile", "hits.recorder", "hits.store", "hits.sqlite", "hits.postgres", "hits.writer"}


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _runtime_imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` may name (function bodies included, since
    they run too; ``if TYPE_CHECKING:`` blocks left out, since they never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # a submodule, or a name in it
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _closure(start: str) -> set[str]:
    """``start`` and every module it imports, through our own modules (and their packages)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
            mod = ".".join(parts[:i])
            if mod in seen:
                continue
            path = _module_file(mod) if parts[0] in PACKAGES else None
            if parts[0] in PACKAGES and path is None:
                continue  # a name inside a module, not a module
            seen.add(mod)
            if path is not None:
                todo.extend(_runtime_imports(path))
    return seen


def test_a_worker_imports_only_what_answering_needs() -> None:
    reached = _closure(WORKER)
    assert "resolver.pipeline" in reached and "feeds.table" in reached  # the walk follows our imports
    assert sorted(m for m in reached if m.split(".")[0] in WORKER_FORBIDDEN) == []
    assert sorted(reached & WORKER_FORBIDDEN_OURS) == []


def test_a_worker_process_has_no_forbidden_module_loaded() -> None:
    # Libraries import more than their names say: ask a fresh interpreter what loading the
    # worker's module really brings in.
    import subprocess

    code = "import sys, betblock.worker; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    assert WORKER in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in WORKER_FORBIDDEN or m in WORKER_FORBIDDEN_OURS) == []
