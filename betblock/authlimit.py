"""Brute-force control for the HTTP API: failed authentications counted per client address.

Owns the count of failed authentications (a 401 to a request that presented a credential: a
bearer token, a session cookie or the login form) per client (an IPv4 address, an IPv6 /64),
the lockout that follows (after ``max_failures`` failures within ``window`` seconds the client
gets 429 with Retry-After for 1 s, then 2, 4, ... up to ``window``, doubling with each further
failure), one log line per locked-out client per window, and the counters for /metrics.
Memory is bounded: at most ``max_clients`` addresses are tracked.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("betblock.http")


@dataclass(slots=True)
class _Client:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0
    logged_at: float = float("-inf")


class FailureLimiter:
    """Counts failed authentications per client and says how long a client must wait."""

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 900.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 65536,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self.clients: dict[str, _Client] = {}
        self.failures = 0  # failed authentications since start
        self.lockouts = 0  # times a client was locked out
        self.refused = 0  # requests answered 429

    @staticmethod
    def key(address: str | None) -> str:
        """The client a request counts for: its IPv4 address, or its IPv6 /64 (one subscriber's
        prefix: an attacker has a whole /64 to rotate through)."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return address or "?"
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def retry_after(self, key: str) -> float:
        """Seconds ``key`` must still wait; 0 when it may try."""
        c = self.clients.get(key)
        if c is None:
            return 0.0
        wait = c.locked_until - self.clock()
        return wait if wait > 0 else 0.0

    def refuse(self) -> None:
        self.refused += 1

    def failed(self, key: str, what: str = "") -> float:
        """Count a failed authentication of ``key``; the lockout it now has, seconds (0: none)."""
        now = self.clock()
        self.failures += 1
        c = self.clients.get(key)
        if c is None:
            if len(self.clients) >= self.max_clients:
                self._prune(now)
            c = self.clients[key] = _Client()
        elif now - c.last_failure > self.window:
            c.failures = 0  # a quiet window forgives
        c.failures += 1
        c.last_failure = now
        over = c.failures - self.max_failures
        if over < 0:
            return 0.0
        lockout = min(self.window, 2.0 ** min(over, 64))
        c.locked_until = now + lockout
        self.lockouts += 1
        if now - c.logged_at >= self.window:
            c.logged_at = now
            log.warning(
                "authentication failures: client locked out",
                client=key, failures=c.failures, retry_after=round(lockout, 1), last=what,
            )
        return lockout

    def locked(self) -> int:
        now = self.clock()
        return sum(1 for c in self.clients.values() if c.locked_until > now)

    def _prune(self, now: float) -> None:
        for k in [k for k, c in self.clients.items() if c.locked_until <= now and now - c.last_failure > self.window]:
            del self.clients[k]
        while len(self.clients) >= self.max_clients:  # still full: forget the oldest
            del self.clients[next(iter(self.clients))]
