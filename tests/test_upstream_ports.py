"""Integration: the upstream port pool (pre-opened sockets on random ports, rotated, bounded).

A random-subdomain flood against a silent upstream must not open a descriptor per miss; ports
rotate to fresh random ones; an upstream port that is closed fails over at once (the ICMP error
on the connected socket), not after the attempt timeout.
"""

from __future__ import annotations

import asyncio
import os
import socket

import dns.message
import dns.rcode
import pytest

from tests.conftest import port_of
from tests.dnsutil import a_records, query, udp, wait_until
from tests.fakedns import FakeDns
from tests.test_udp_batch import collect, send_burst, wire

RCODE = dns.rcode


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_flood_with_silent_upstream_keeps_descriptors_bounded(node, upstream):
    upstream.behaviour.silent = True
    app = await node(upstream={"ports": 8, "port_reuse": 4, "deadline": 1.0, "attempt_timeout": 0.8})
    pool = app.upstream.pools[next(iter(app.upstream.pools))]
    baseline = open_fds()
    n = 400
    sock = send_burst(port_of(app), [wire(f"r{i}.flood.test", qid=i) for i in range(n)])
    try:
        await wait_until(lambda: upstream.udp_queries >= n, timeout=10, what="every miss to reach the upstream")
        # Every miss is waiting on the silent upstream now: the descriptors they hold are the
        # pool's (at most its size, plus as many retired ports waiting for their last replies).
        assert len(pool.order) == 8 and len(pool.retired) <= 8
        assert open_fds() - baseline <= 2 * 8 + 1  # + the client's socket
        got = await collect(sock, n)
    finally:
        sock.close()
    assert {m.rcode() for m in got.values()} == {RCODE.SERVFAIL}
    await wait_until(lambda: not pool.retired, what="retired ports to close")
    assert open_fds() <= baseline + 8


async def test_ports_rotate_to_fresh_random_ports(node, upstream):
    app = await node(upstream={"ports": 4, "port_reuse": 2})
    port = port_of(app)
    for i in range(40):
        r = await udp(port, query(f"rot{i}.test"))
        assert r.rcode() == RCODE.NXDOMAIN
    pool = app.upstream.pools[next(iter(app.upstream.pools))]
    ports = {p for _, p, _ in upstream.sources}
    assert pool.opened > 4, "no port was ever replaced"
    assert len(ports) > 4, f"only the first ports were used: {ports}"
    assert len(pool.order) == 4 and not pool.retired


async def test_many_misses_share_the_pool(node, upstream):
    """A burst of distinct misses all answered, over no more sockets than the pool holds."""
    for i in range(300):
        upstream.add(f"m{i}.test", "A", f"192.0.2.{i % 250 + 1}")
    # Every reply waits until all 300 queries are in flight at once, so the ID check below is
    # about concurrent queries; the attempt timeout is far out so no retry adds queries.
    upstream.behaviour.gate = asyncio.Event()
    app = await node(upstream={"ports": 16, "port_reuse": 1000, "deadline": 120.0, "attempt_timeout": 100.0})
    sock = send_burst(port_of(app), [wire(f"m{i}.test", qid=i) for i in range(300)])
    try:
        await wait_until(lambda: upstream.udp_queries >= 300, timeout=60, what="every miss to reach the upstream")
        upstream.behaviour.gate.set()
        got = await collect(sock, 300)
    finally:
        sock.close()
    for i in range(300):
        assert a_records(got[i]) == [f"192.0.2.{i % 250 + 1}"]
    assert len({p for _, p, _ in upstream.sources}) <= 16
    assert len(upstream.sources) == 300, "a query was sent twice"
    assert len({(qid, p) for qid, p, _ in upstream.sources}) == 300, "an ID repeated on one port"


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_closed_upstream_port_fails_over_at_once(node, upstream):
    closed = f"127.0.0.1:{closed_udp_port()}"
    # The attempt timeout is far beyond the client's patience: only the ICMP error can make
    # the answer arrive in time (no measured duration is asserted).
    app = await node(upstreams=[closed, upstream.address], upstream={"deadline": 120.0, "attempt_timeout": 100.0})
    r = await udp(port_of(app), query("allowed.test"), timeout=20)
    assert a_records(r) == ["192.0.2.10"]
    assert app.upstream.failures[closed] == 1


async def test_pool_closed_on_stop(node, upstream):
    app = await node(upstream={"ports": 4})
    for i in range(6):  # the pool fills one socket per query
        assert (await udp(port_of(app), query(f"fill{i}.test"))).rcode() == RCODE.NXDOMAIN
    pool = app.upstream.pools[next(iter(app.upstream.pools))]
    socks = [p.sock for p in pool.order]
    assert len(socks) == 4
    app.stop()
    await wait_until(lambda: all(s.fileno() == -1 for s in socks), timeout=10, what="the pool's sockets to close")


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6_upstream(node):
    """A server at an IPv6 address gets an AF_INET6 pool (connected to [::1]:port)."""
    fake = FakeDns(host="::1")
    fake.add("v6.test", "A", "192.0.2.6")
    try:
        await fake.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        app = await node(upstreams=[f"[::1]:{fake.port}"])
        assert a_records(await udp(port_of(app), query("v6.test"))) == ["192.0.2.6"]
        pool = app.upstream.pools[("::1", fake.port)]
        assert pool.family == socket.AF_INET6 and fake.udp_queries == 1
    finally:
        await fake.stop()
