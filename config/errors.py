"""The root of betblock's own exceptions.

Every error class of ours derives from ``BetblockError``, so a caller at a boundary (the CLI,
an HTTP middleware, the start-up sequence) can tell our expected, explained failures from a
bug with one ``except`` clause, and the classes' docstrings say what each means.
"""

from __future__ import annotations


class BetblockError(Exception):
    """An expected failure with a message meant for the operator, agency or admin."""
