"""Every exception class of ours derives from config.errors.BetblockError.

Read with ast, so a new ``class X(Exception)`` anywhere in the product packages fails here
with its file and line instead of growing another unrelated root.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["config", "feeds", "hits", "resolver", "xfr", "betblock"]
BUILTIN_ROOTS = {"Exception", "ValueError", "RuntimeError", "OSError", "LookupError", "KeyError", "TypeError"}


def _roots(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & BUILTIN_ROOTS and "BetblockError" not in bases and node.name != "BetblockError":
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name}")
    return wrong


def test_every_exception_class_has_the_one_root() -> None:
    wrong = [w for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) for w in _roots(p)]
    assert wrong == []


def test_the_check_sees_a_class_with_another_root(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("class Oops(Exception):\n    pass\nclass Fine(BetblockError, ValueError):\n    pass\n")
    import tests.test_errors as me

    saved = me.ROOT
    me.ROOT = tmp_path
    try:
        assert _roots(bad) == ["bad.py:1 class Oops"]
    finally:
        me.ROOT = saved


def test_the_root_catches_errors_from_every_plane() -> None:
    from config.errors import BetblockError
    from config.settings import ConfigError
    from feeds.normalize import InvalidName
    from hits.query import FilterError
    from resolver.wire import FormErr

    for cls in (ConfigError, InvalidName, FilterError, FormErr):
        assert issubclass(cls, BetblockError), cls
    assert issubclass(InvalidName, ValueError)  # existing `except ValueError` callers keep working
