"""The brute-force limiter's arithmetic, on a fake clock: lockout after N failures, doubling,
forgiveness after a quiet window, one address per IPv6 /64, bounded memory."""

from __future__ import annotations

import pytest

from betblock.authlimit import FailureLimiter
from tests.dnsutil import FakeClock


def test_lockout_doubles_and_a_quiet_window_forgives() -> None:
    clock = FakeClock(0.0)
    lim = FailureLimiter(3, window=100.0, clock=clock)
    assert [lim.failed("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    assert lim.retry_after("a") == 1.0 and lim.retry_after("b") == 0.0
    clock.advance(1.0)
    assert lim.retry_after("a") == 0.0
    assert lim.failed("a") == 2.0
    clock.advance(2.0)
    assert lim.failed("a") == 4.0
    assert [lim.failed("a") for _ in range(10)][-1] == 100.0  # capped at the window
    clock.advance(301.0)
    assert lim.failed("a") == 0.0  # forgiven after a quiet window
    assert (lim.failures, lim.lockouts) == (16, 13)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3::4", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (None, "?"),
    ],
)
def test_clients_are_addresses_and_ipv6_prefixes(address: str | None, key: str) -> None:
    assert FailureLimiter.key(address) == key


def test_memory_is_bounded() -> None:
    clock = FakeClock(0.0)
    lim = FailureLimiter(1, window=10.0, clock=clock, max_clients=100)
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lim.clients) <= 100
