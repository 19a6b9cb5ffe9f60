"""Integration: a UDP cache miss is answered from the upstream's reply callback (issue 11).

No task per miss: misses waiting on a silent upstream leave the event loop's task count where
it was. No reference cycle per miss either: an answered miss's objects are freed by their
reference counts, not left for the collector's full passes. Shutdown still answers every UDP miss in flight before the listener closes, over the
batched listener and the one-datagram endpoint alike.
"""

from __future__ import annotations

import asyncio
import gc

import dns.rcode
import pytest

from resolver.pipeline import Miss, _Fetch
from resolver.upstream import Exchange
from tests.conftest import port_of
from tests.dnsutil import a_records, wait_until
from tests.test_udp_batch import collect, send_burst, wire


@pytest.mark.parametrize("batch", [64, 0])
async def test_waiting_misses_hold_no_task_each(node, upstream, batch):
    upstream.behaviour.silent = True
    app = await node(dns={"udp_batch": batch}, upstream={"deadline": 2.0, "attempt_timeout": 1.0})
    baseline = len(asyncio.all_tasks())
    n = 50
    sock = send_burst(port_of(app), [wire(f"t{i}.silent.test", qid=i) for i in range(n)])
    try:
        await wait_until(lambda: upstream.udp_queries >= n, timeout=10, what="every miss to reach the upstream")
        assert len(app.pipeline.inflight) == n
        assert app.server.udp[0].waiting == n
        assert len(asyncio.all_tasks()) < baseline + 5, "a task per waiting miss"
        got = await collect(sock, n)
    finally:
        sock.close()
    assert {m.rcode() for m in got.values()} == {dns.rcode.SERVFAIL}
    assert not app.pipeline.inflight and app.server.udp[0].waiting == 0


@pytest.mark.parametrize("batch", [64, 0])
async def test_stop_answers_udp_misses_in_flight(node, upstream, batch):
    upstream.behaviour.delay = 1.0
    for i in range(20):
        upstream.add(f"d{i}.test", "A", f"192.0.2.{i + 1}")
    app = await node(dns={"udp_batch": batch}, upstream={"deadline": 5.0, "attempt_timeout": 4.0})
    sock = send_burst(port_of(app), [wire(f"d{i}.test", qid=i) for i in range(20)])
    try:
        await wait_until(lambda: upstream.udp_queries >= 20, timeout=10, what="every miss to reach the upstream")
        app.stop()
        got = await collect(sock, 20)
    finally:
        sock.close()
    for i in range(20):
        assert a_records(got[i]) == [f"192.0.2.{i + 1}"]


@pytest.mark.parametrize("timeout", [False, True])
@pytest.mark.parametrize("batch", [64, 0])
async def test_misses_leave_no_reference_cycles(node, upstream, batch, timeout):
    # Each cycle per miss used to cost a busy resolver a third of its time in full collections.
    for i in range(20):
        upstream.add(f"c{i}.test", "A", f"192.0.2.{i + 1}")
    upstream.behaviour.silent = timeout
    app = await node(dns={"udp_batch": batch}, upstream={"deadline": 0.5, "attempt_timeout": 0.2})
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage
    try:
        sock = send_burst(port_of(app), [wire(f"c{i}.test", qid=i) for i in range(20)])
        try:
            got = await collect(sock, 20)
        finally:
            sock.close()
        # Cancelled deadlines and attempt timeouts leave their queues at their time: until then
        # a queued entry could keep a cycle reachable, and hide it.
        pipeline = app.pipeline
        await wait_until(lambda: not pipeline.inflight and not len(pipeline._deadlines) and not len(pipeline.upstream.timeouts),
                         timeout=10, what="every miss and its timers to end")
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, (Miss, _Fetch, Exchange))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(got) == 20
    assert not cyclic, f"{len(cyclic)} miss objects were left in reference cycles"
