"""FixedDelay: many timeouts of one delay served by one loop timer, in order, cancellable."""

from __future__ import annotations

import asyncio

from resolver.timers import FixedDelay


async def test_fires_in_order_skips_cancelled_and_rearms_from_callbacks() -> None:
    loop = asyncio.get_running_loop()
    timers = FixedDelay(0.01)
    fired: list[int] = []
    done = loop.create_future()

    def call(n: int) -> None:
        fired.append(n)
        if n == 2:
            timers.add(loop, call, 9)  # added while firing: armed after the others
        if n == 9:
            done.set_result(None)

    entries = [timers.add(loop, call, n) for n in range(5)]
    FixedDelay.cancel(entries[1])
    FixedDelay.cancel(entries[3])
    await asyncio.wait_for(done, 10)
    assert fired == [0, 2, 4, 9]
    assert len(timers) == 0 and timers.handle is None


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    timers = FixedDelay(0.01)
    done = loop.create_future()

    def boom(_: object) -> None:
        raise RuntimeError("bug")

    timers.add(loop, boom, None)
    timers.add(loop, done.set_result, "after")
    assert await asyncio.wait_for(done, 10) == "after"
