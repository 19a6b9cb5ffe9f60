"""A TCP client that sends queries and never reads the answers must not grow the server's memory.

Issue 8 item 1: pipelining queries for an 8 KB cached answer without reading took RSS from 78 MB
to 3.2 GB in 20 s (also from outside the ACL, with REFUSED answers): the server read on because
only upstream queries counted as pending, and wrote on regardless of the transport's buffer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.rcode
import pytest

from tests.fakedns import FakeDns
from tests.hostile.node import BLOCKED, Node, flood, frame, query, recv_answer, tcp_ask, tcp_connect

MIB = 1 << 20


@pytest.mark.parametrize("client", ["allowed", "refused"])
async def test_a_client_that_never_reads_holds_bounded_memory(tmp_path: Path, client: str) -> None:
    upstream = await FakeDns().start()
    for i in range(32):  # about 8.5 KB of TXT: the large answer of the report
        upstream.add("big.test", "TXT", f"{i:03d}" + "x" * 240)
    acl = 'allow = ["127.0.0.1/32"]' if client == "allowed" else 'allow = ["10.0.0.0/8"]'
    node = Node(tmp_path, f"[acl]\n{acl}\n", upstream=upstream.address)
    await asyncio.to_thread(node.start)
    try:
        if client == "allowed":
            warm = await asyncio.to_thread(_ask_big, node.port)
            assert warm.rcode() == dns.rcode.NOERROR and len(warm.answer[0]) == 32
            # 20,000 queries of 1 KB (EDNS padding: more than the kernel's socket buffers hold)
            # whose answers would be 170 MB.
            data = frame(query("big.test", "TXT", edns=True, pad=1000)) * 20000
        else:
            # 100,000 queries from outside the ACL with long names: 30 MB of REFUSED answers.
            name = ".".join(["r" * 60] * 4)
            data = frame(query(name, "TXT", edns=True)) * 100000
        before = node.rss()
        sock = tcp_connect(node.port)
        try:
            # Until the server says it stopped reading a client that does not read (or all is sent).
            sent = await asyncio.to_thread(flood, sock, data, lambda: node.metric("betblock_tcp_unread_waiting", 0) >= 1)
            grown = node.rss() - before
        finally:
            sock.close()
        assert sent < len(data), "the server went on reading a client that reads nothing"
        assert grown <= 32 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
        # The server is still whole: a new connection is answered.
        r = await asyncio.to_thread(tcp_ask, node.port, BLOCKED)
        assert r.rcode() == (dns.rcode.NXDOMAIN if client == "allowed" else dns.rcode.REFUSED)
        assert await asyncio.to_thread(node.stop) == 0
    finally:
        node.kill()
        await upstream.stop()


def _ask_big(port: int):
    with tcp_connect(port) as s:
        s.sendall(frame(query("big.test", "TXT")))
        return recv_answer(s)
