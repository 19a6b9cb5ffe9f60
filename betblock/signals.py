"""Stop signals that arrive before the event loop handles them: held, then handed to the node.

Owns the process-wide record of SIGTERM, SIGINT and SIGHUP received between ``betblock serve``
starting and ``App.run`` installing its loop handlers. Without it the default action (end the
process at once) would skip the orderly stop: hits flushed, stores closed, workers drained.
Only ``betblock serve`` holds signals; other commands, and tests running a node in their own
process, keep the default actions.
"""

from __future__ import annotations

import signal
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_held: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)  # runs in the main thread between bytecodes: acted on by ``take``'s caller


def hold() -> None:
    """From now on, record these signals rather than take their default action."""
    for sig in HANDLED:
        signal.signal(sig, _record)


def take() -> list[int]:
    """The signals held so far, in arrival order; forgets them. Call it after the loop's
    handlers are installed, so that no signal falls between the two."""
    out = list(_held)
    del _held[: len(out)]
    return out
