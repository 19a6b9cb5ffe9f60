"""Response rate limiting: the limiter's accounts (table-driven, a settable clock) and a node
flooded over real UDP sockets from one /24 while another /24 is answered."""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest

from config.settings import RrlSettings
from resolver.rrl import ANSWER, DROP, SLIP, RateLimiter
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import FakeClock


def limiter(clock: FakeClock | None = None, **kw: object) -> RateLimiter:
    settings = RrlSettings(**{"exempt": [], **kw})  # type: ignore[arg-type]
    return RateLimiter(settings, clock or FakeClock())


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("192.0.2.1", "192.0.2.254", True),  # one /24
        ("192.0.2.1", "192.0.3.1", False),
        ("2001:db8:0:1::1", "2001:db8:0:ff:ffff::9", True),  # one /56
        ("2001:db8:0:100::1", "2001:db8:0:1::1", False),
        ("::ffff:192.0.2.7", "192.0.2.1", True),  # IPv4-mapped from a dual-stack socket
        ("0.0.0.1", "::1", False),  # IPv4 and IPv6 keys never collide
    ],
)
def test_clients_share_an_account_per_prefix(a: str, b: str, same: bool) -> None:
    rrl = limiter()
    assert (rrl.key_of(a) == rrl.key_of(b)) is same


def test_exempt_networks_and_non_addresses_are_never_limited() -> None:
    rrl = limiter(responses_per_second=1, exempt=["10.0.0.0/8", "2001:db8::/32"])
    for client in ("10.1.2.3", "2001:db8::1", "not-an-address", ""):
        assert [rrl.check(client) for _ in range(5)] == [ANSWER] * 5
    assert rrl.table == {} and rrl.limited == 0


def test_rate_slip_window_and_recovery() -> None:
    clock = FakeClock(1000.0)
    rrl = limiter(clock, responses_per_second=3, window=2, slip=2)
    ask = lambda n: [rrl.check("192.0.2.1") for _ in range(n)]  # noqa: E731
    assert ask(3) == [ANSWER] * 3
    assert ask(5) == [DROP, SLIP, DROP, SLIP, DROP]  # every 2nd limited answer slips
    assert rrl.check("192.0.3.1") == ANSWER  # another prefix has its own account
    assert (rrl.limited, rrl.slipped, rrl.dropped) == (5, 2, 3)
    # The account owes at most window x rate = 6; one quiet second credits 3: still owing.
    ask(20)
    assert rrl.table[rrl.key_of("192.0.2.1")][0] == -6
    clock.advance(1)
    rrl.tick()
    assert ask(1) == [SLIP]  # -6 + 3 - 1 < 0: still limited
    clock.advance(1)
    rrl.tick()
    assert ask(1) == [DROP]  # -4 + 3 - 1 < 0
    # Quiet for longer than the window: a fresh account.
    clock.advance(3)
    rrl.tick()
    assert ask(3) == [ANSWER] * 3


def test_slip_zero_drops_everything_and_slip_one_slips_everything() -> None:
    for slip, verdict in ((0, DROP), (1, SLIP)):
        rrl = limiter(responses_per_second=1, slip=slip)
        assert [rrl.check("198.51.100.1") for _ in range(4)] == [ANSWER] + [verdict] * 3


def test_the_table_is_bounded_under_spoofed_sources() -> None:
    clock = FakeClock()
    rrl = limiter(clock, responses_per_second=5, table_size=1000)
    for i in range(50_000):  # 50,000 distinct /24s, as a spoofed flood sends
        rrl.check(f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1")
    assert len(rrl.table) <= 1000 and len(rrl.accounts) <= 1000
    assert rrl.evicted >= 49_000
    # A prefix seen just now is still limited after the churn.
    for _ in range(5):
        rrl.check("203.0.113.1")
    assert rrl.check("203.0.113.1") != ANSWER


# -- a node over real sockets ------------------------------------------------------------------


def _query(qid: int, name: bytes = b"\x06casino\x04test\x00") -> bytes:
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"


def _flood(port: int, source: str, n: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    for qid in range(n):
        sock.sendto(_query(qid), ("127.0.0.1", port))
    return sock


def _drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


async def test_a_flood_from_one_prefix_is_limited_while_another_is_answered(node: NodeFactory) -> None:
    app = await node(rrl={"responses_per_second": 5, "slip": 2, "exempt": []})
    port = port_of(app)
    assert app.rrl is not None
    clock = FakeClock()
    app.rrl.clock = clock  # frozen: no account is credited while the test runs
    app.rrl.tick()
    flooder = await asyncio.to_thread(_flood, port, "127.0.1.1", 20)
    try:
        # Another /24 asks after the whole flood was sent: the server reads its socket in order,
        # so by the time this is answered every flood packet was dealt with.
        other = dns.message.make_query("www.casino.test", "A")
        r = await dns.asyncquery.udp(other, "127.0.0.1", port=port, source="127.0.2.1", timeout=3)
        assert r.rcode() == dns.rcode.NXDOMAIN
        replies = await asyncio.to_thread(_drain, flooder)
    finally:
        flooder.close()
    full = [d for d in replies if not d[2] & 0x02]
    slipped = [d for d in replies if d[2] & 0x02]
    assert len(full) == 5  # the rate
    assert len(slipped) == 7  # 15 limited, every 2nd slipped
    for d in slipped:
        msg = dns.message.from_wire(d)
        assert msg.flags & dns.flags.TC and msg.rcode() == dns.rcode.NOERROR and not msg.answer
        assert msg.question[0].name.to_text() == "casino.test."
    assert app.rrl.stats() | {"evicted": 0} == {"limited": 15, "slipped": 7, "dropped": 8, "prefixes": 2, "evicted": 0}

    # TCP from the limited prefix is answered (a real client retries there after TC).
    q = dns.message.make_query("casino.test", "A")
    r = await dns.asyncquery.tcp(q, "127.0.0.1", port=port, source="127.0.1.1", timeout=3)
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.TC
    assert app.rrl.limited == 15

    # Quiet for longer than the window: answered again over UDP.
    clock.advance(app.settings.rrl.window + 1)
    app.rrl.tick()
    r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, source="127.0.1.1", timeout=3)
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.TC

    from tests.test_metrics import _scrape

    m = await _scrape(app)
    assert m[("betblock_rrl_limited_total", ())] == 15
    assert m[("betblock_rrl_slipped_total", ())] == 7
    assert m[("betblock_rrl_dropped_total", ())] == 8
    assert m[("betblock_rrl_prefixes", ())] == 2


async def test_loopback_is_exempt_by_default(node: NodeFactory) -> None:
    app = await node(rrl={"responses_per_second": 1})
    port = port_of(app)
    flooder = await asyncio.to_thread(_flood, port, "127.0.0.1", 10)
    try:
        r = await dns.asyncquery.udp(dns.message.make_query("casino.test", "A"), "127.0.0.1", port=port, timeout=3)
        assert r.rcode() == dns.rcode.NXDOMAIN
        replies = await asyncio.to_thread(_drain, flooder)
    finally:
        flooder.close()
    assert len(replies) == 10 and app.rrl.limited == 0  # type: ignore[union-attr]
