"""``dataplane.settle_heap``: the long-lived heap leaves the collector's sight, dead cycles do not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from betblock import dataplane


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test runner's heap goes back as it was


def test_a_dead_cycle_is_collected_not_frozen() -> None:
    dead = Node()
    ref = weakref.ref(dead)
    del dead
    dataplane.settle_heap()
    assert ref() is None
    assert gc.get_freeze_count() > 0


def test_what_was_frozen_and_died_since_is_freed_at_the_next_settle() -> None:
    # An old snapshot's objects are frozen with it; the install of the next one must free them.
    old = Node()
    ref = weakref.ref(old)
    dataplane.settle_heap()
    del old
    gc.collect()
    assert ref() is not None  # frozen: a plain collection does not see it
    dataplane.settle_heap()
    assert ref() is None
