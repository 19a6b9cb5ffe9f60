"""Descriptors: the soft limit is raised at start, and running out in accept is survived
(issue 8, item 5, the DNS side).

Before: under the common 1,024 soft limit the descriptors ran out long before the connection
caps, and DNS over TCP broke.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

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


def test_running_out_of_descriptors_in_accept_is_survived(tmp_path: Path) -> None:
    raise_own_fd_limit()
    with Node(tmp_path, dns=CAPS, nofile=(128, 128)) as node:
        socks, answered = _hold(node.port, 200)
        try:
            assert answered < 200, "the shortage did not happen: the test proves nothing"
            # Meanwhile UDP is answered and the process lives.
            r = dns.query.udp(dns.message.make_query(BLOCKED, "A"), "127.0.0.1", port=node.port, timeout=5)
            assert r.rcode() == dns.rcode.NXDOMAIN
            assert node.alive()
        finally:
            for s in socks:
                s.close()
        # Once descriptors are free again, TCP is answered again (the listener was not lost).
        deadline = time.monotonic() + 30
        while True:
            try:
                assert tcp_ask(node.port, BLOCKED).rcode() == dns.rcode.NXDOMAIN
                break
            except (ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
        assert node.alive()
