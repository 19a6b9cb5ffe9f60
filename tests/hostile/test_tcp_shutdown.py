"""SIGTERM answers the TCP queries in flight, as it does UDP ones (issue 8, item 11).

Before: TCP connections were closed at once on SIGTERM and 20 of 20 queries waiting on the
upstream went unanswered, while UDP clients got their answer or SERVFAIL.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import dns.rcode
import pytest

from tests.dnsutil import wait_until
from tests.fakedns import FakeDns
from tests.hostile.node import Node, frame, query, recv_answer, tcp_connect


@pytest.mark.parametrize("upstream_answers", [True, False])
async def test_sigterm_answers_tcp_queries_in_flight(tmp_path: Path, upstream_answers: bool) -> None:
    upstream = await FakeDns().start()
    if upstream_answers:
        upstream.behaviour.delay = 1.0
    else:
        upstream.behaviour.silent = True
    for i in range(20):
        upstream.add(f"n{i}.test", "A", f"192.0.2.{i + 1}")
    node = Node(tmp_path, upstream=upstream.address, upstream_conf="deadline = 2.0\nattempt_timeout = 2.0")
    await asyncio.to_thread(node.start)
    socks = [tcp_connect(node.port) for _ in range(4)]
    try:
        for i in range(20):  # five pipelined queries on each of four connections
            socks[i % 4].sendall(frame(query(f"n{i}.test", qid=i)))
        await wait_until(lambda: upstream.udp_queries >= 20, timeout=20, what="every query upstream")
        node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        answers = {}
        for i in range(20):
            try:
                r = await asyncio.to_thread(recv_answer, socks[i % 4])
            except (ConnectionError, TimeoutError):
                continue
            answers[r.id] = r
        assert len(answers) == 20, f"{len(answers)} of 20 TCP queries in flight answered"
        for qid, r in answers.items():
            if upstream_answers:
                assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == f"192.0.2.{qid + 1}"
            else:
                assert r.rcode() == dns.rcode.SERVFAIL
        assert await asyncio.to_thread(node.proc.wait, 30) == 0  # type: ignore[union-attr]
    finally:
        for s in socks:
            s.close()
        node.kill()
        await upstream.stop()
