"""Slow TCP clients must not hold every connection slot (issue 8, item 4).

1,000 connections sending one byte every 4 s held every slot and every legitimate TCP query was
reset: the idle timer was re-armed by every byte, and one global cap applied to everyone.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import dns.rcode

from tests.hostile.node import BLOCKED, Node, closed_by_peer, raise_own_fd_limit, tcp_ask, tcp_connect


def test_a_client_dripping_bytes_is_closed_after_one_deadline(tmp_path: Path) -> None:
    with Node(tmp_path, dns="tcp_idle_timeout = 1.0") as node:
        sock = tcp_connect(node.port)
        try:
            sock.sendall(b"\x01\xf4")  # a 500-byte message is coming...
            closed = False
            for _ in range(100):  # ...one byte every 0.2 s: 20 s for the whole message
                if closed_by_peer(sock, 0.2):
                    closed = True
                    break
                try:
                    sock.sendall(b"\x00")
                except ConnectionError:
                    closed = True
                    break
        finally:
            sock.close()
        assert closed, "every byte kept the connection alive: the deadline must be per message"
        assert tcp_ask(node.port, BLOCKED).rcode() == dns.rcode.NXDOMAIN


def test_slow_connections_do_not_lock_out_another_address(tmp_path: Path) -> None:
    raise_own_fd_limit()
    dns_conf = "tcp_idle_timeout = 120.0\ntcp_max_connections = 100"
    with Node(tmp_path, dns=dns_conf) as node:
        # 150 from one /24 (more than its prefix may hold) and 150 from 150 other /24s (more
        # than the whole server may hold), each holding a message it never finishes.
        sources = [f"127.0.9.{i}" for i in range(1, 151)] + [f"127.{10 + i}.0.1" for i in range(150)]
        slow: list[socket.socket] = []
        try:
            for source in sources:
                s = tcp_connect(node.port, source)
                try:
                    s.sendall(b"\x00")
                except ConnectionError:
                    pass  # already closed to make room: the attacker's loss
                slow.append(s)
            answered = 0
            for _ in range(20):
                try:
                    r = tcp_ask(node.port, BLOCKED, "127.0.0.1")
                except (ConnectionError, TimeoutError):
                    continue
                answered += r.rcode() == dns.rcode.NXDOMAIN
            assert answered == 20, f"{answered} of 20 legitimate TCP queries answered"
            assert node.metric("betblock_tcp_connections") <= 100
            assert node.metric("betblock_tcp_evicted_total", 0) > 0
        finally:
            for s in slow:
                s.close()
