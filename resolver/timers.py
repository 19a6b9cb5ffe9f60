"""Timeouts of one fixed delay, served by one event-loop timer.

Owns ``FixedDelay``: every cache miss needs a deadline and every upstream attempt a timeout,
and nearly all of them are cancelled a fraction of a millisecond later. A loop timer per
timeout costs about 5 µs to set and cancel under uvloop (a libuv handle each); here setting one
is a list appended to a deque and cancelling it clears one slot. With one delay for all, the
deque is in expiry order, so a single loop timer for the oldest live entry serves them all.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("betblock.timers")

Entry = list[Any]  # [when, callback or None once cancelled or fired, argument or None likewise]


class FixedDelay:
    """``add`` calls ``callback(arg)`` ``delay`` seconds later unless ``cancel``led first."""

    __slots__ = ("delay", "queue", "handle", "loop")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queue: deque[Entry] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, loop: asyncio.AbstractEventLoop, callback: Callable[[Any], None], arg: Any) -> Entry:
        entry = [loop.time() + self.delay, callback, arg]
        self.queue.append(entry)
        if self.handle is None or loop is not self.loop:
            self.loop = loop  # another loop (tests run one per asyncio.run): arm on this one
            self.handle = loop.call_at(entry[0], self._fire)
        return entry

    @staticmethod
    def cancel(entry: Entry) -> None:
        # The argument goes too: the entry stays queued until its time, and must not keep the
        # cancelled miss or attempt (and what it holds) alive that long.
        entry[1] = entry[2] = None

    def _fire(self) -> None:
        loop, queue = self.loop, self.queue
        assert loop is not None
        now = loop.time()
        # self.handle stays set meanwhile, so callbacks that add entries arm nothing.
        while queue:
            entry = queue[0]
            callback = entry[1]
            if callback is None:
                queue.popleft()  # cancelled, whenever it was due
                continue
            if entry[0] > now:
                self.handle = loop.call_at(entry[0], self._fire)
                return
            queue.popleft()
            arg = entry[2]
            entry[1] = entry[2] = None
            try:
                callback(arg)
            except Exception:  # one failing timeout must not stop the others
                log.exception("timeout callback failed")
        self.handle = None

    def __len__(self) -> int:
        return len(self.queue)
