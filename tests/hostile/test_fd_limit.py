"""Descriptors (issue 8, item 5, the DNS side): the soft limit is raised at start and logged,
and TCP clients are capped within it.

Before: under the common 1,024 soft limit the descriptors ran out long before the connection
caps (1,000 TCP clients by default), and DNS over TCP and forwarded queries broke.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode

from tests.fakedns import FakeDns

from tests.hostile.node import BLOCKED, Node, frame, query, raise_own_fd_limit, recv_answer, tcp_ask, tcp_connect

CAPS = "tcp_max_connections = 2000\ntcp_max_connections_per_prefix = 2000\ntcp_idle_timeout = 120.0"


def _hold(port: int, n: int) -> tuple[list[socket.socket], int]:
    """Open ``n`` connections that each ask one query and stay open; count the answers."""
    socks, answered = [], 0
    for i in range(n):
        try:
            s = tcp_connect(port, timeout=5)
        except OSError:
            continue
        socks.append(s)
        try:
            s.sendall(frame(query(BLOCKED, qid=i)))
            answered += recv_answer(s).rcode() == dns.rcode.NXDOMAIN
        except (ConnectionError, TimeoutError):
            pass
    return socks, answered


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    raise_own_fd_limit()
    with Node(tmp_path, dns=CAPS, nofile=(256, 4096)) as node:
        assert node.fd_limits() == (4096, 4096)
        assert any(line.get("soft") == 4096 and line.get("was") == 256 for line in node.events("file descriptor limit"))
        socks, answered = _hold(node.port, 400)
        try:
            assert answered == 400, f"{answered} of 400 TCP clients answered"
        finally:
            for s in socks:
                s.close()


async def test_tcp_clients_cannot_take_every_descriptor(tmp_path: Path) -> None:
    """Under a 256 limit, 400 TCP clients holding their connections open: each is answered (the
    cap follows the limit, idle ones make room), and forwarded queries still get the sockets
    they need."""
    raise_own_fd_limit()
    upstream = await FakeDns().start()
    upstream.add("fwd.test", "A", "192.0.2.9")
    upstream.add("fwd2.test", "A", "192.0.2.10")
    node = Node(tmp_path, upstream=upstream.address, dns=CAPS, nofile=(256, 256))
    await asyncio.to_thread(node.start)
    try:
        assert node.events("TCP connection cap lowered to fit the descriptor limit")[0]["cap"] == 64
        socks, answered = await asyncio.to_thread(_hold, node.port, 400)
        try:
            assert answered == 400, f"{answered} of 400 TCP clients answered"
            r = await dns.asyncquery.udp(dns.message.make_query("fwd.test", "A"), "127.0.0.1", port=node.port, timeout=5)
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.9"]
            r = await asyncio.to_thread(tcp_ask, node.port, "fwd2.test")
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.10"]
        finally:
            for s in socks:
                s.close()
        assert node.alive()
    finally:
        node.kill()
        await upstream.stop()
