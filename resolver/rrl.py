"""Response rate limiting (RRL) for UDP answers, as BIND, NSD and Knot do it.

Owns ``RateLimiter``: one account per client prefix (/24 for IPv4, /56 for IPv6 by default),
credited ``responses_per_second`` each second up to that many and debited one per answer. An
answer that finds the account empty is limited: every ``slip``-th limited answer goes out as an
empty TC=1 answer, so a real client behind the prefix retries over TCP (which cannot be
spoofed), and the rest are dropped. An account can fall to ``-window x rate``, so a prefix that
keeps flooding stays limited until it has been quiet for up to ``window`` seconds (BIND's rule).
Only UDP is limited: a spoofed source cannot complete a TCP handshake.

Cost per packet: one dict lookup from the client address to its prefix's account (memoised)
and a few integer operations. Time is read once per second by ``run``
(a ticker in the node's TaskGroup), never per packet. The table is bounded by ``table_size``:
when full, accounts idle longer than the window go first (they are as good as new), then the
oldest quarter, so a spoofed flood from many prefixes costs bounded memory.

Must not import the pipeline, the server, feeds or hits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from itertools import islice

from config.sections import RrlSettings

ANSWER, SLIP, DROP = 0, 1, 2
# The memo's account for a client that is never limited (exempt, or not an address).
_FREE: list[int] = [0, 0, 0]


class RateLimiter:
    """Decides, per UDP answer, whether to send it, slip it (TC=1) or drop it."""

    def __init__(self, settings: RrlSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.rate = settings.responses_per_second
        self.window = settings.window
        self.floor = -settings.window * settings.responses_per_second
        self.slip = settings.slip
        self.size = settings.table_size
        self.shift4 = 32 - settings.ipv4_prefix
        self.shift6 = 128 - settings.ipv6_prefix
        self.exempt = settings.networks()
        self.clock = clock
        self.now = int(clock())
        # prefix key -> account [balance, second of the last credit, limited since the last slip]
        self.table: dict[int, list[int]] = {}
        # client address -> its prefix's account (or _FREE): one lookup per packet. Emptied
        # whenever an account leaves the table, so no client keeps a dead account.
        self.accounts: dict[str, list[int]] = {}
        self.limited = 0
        self.slipped = 0
        self.dropped = 0
        self.evicted = 0

    def tick(self) -> None:
        """Read the clock: accounts are credited in whole seconds of it."""
        self.now = int(self.clock())

    async def run(self) -> None:
        """Read the clock about once a second until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(1.0 - time.monotonic() % 1.0)

    def check(self, client: str) -> int:
        """ANSWER, SLIP or DROP for one UDP answer to ``client``. This is on the hot path."""
        acct = self.accounts.get(client)
        if acct is None:
            acct = self._account(client)
        if acct is _FREE:
            return ANSWER
        if acct[1] != self.now:
            self._credit(acct)
        balance = acct[0] - 1
        if balance >= 0:
            acct[0] = balance
            return ANSWER
        return self._limit(acct, balance)

    def _credit(self, acct: list[int]) -> None:
        """Credit the seconds since the last answer: ``rate`` each, up to ``rate``."""
        now = self.now
        age = now - acct[1]
        acct[1] = now
        balance = acct[0] + self.rate * age
        if balance >= self.rate or age > self.window or age < 0:
            balance = self.rate
            acct[2] = 0
        acct[0] = balance

    def _limit(self, acct: list[int], balance: int) -> int:
        acct[0] = balance if balance > self.floor else self.floor
        self.limited += 1
        if self.slip:
            n = acct[2] + 1
            if n >= self.slip:
                acct[2] = 0
                self.slipped += 1
                return SLIP
            acct[2] = n
        self.dropped += 1
        return DROP

    def key_of(self, client: str) -> int | None:
        """The account key of an address: its IPv4 prefix as a non-negative int, its IPv6
        prefix as a negative one; None for exempt networks and anything not an address."""
        try:
            if ":" in client:
                addr = ipaddress.ip_address(client)
                mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
                if mapped is None:
                    if any(addr in net for net in self.exempt):
                        return None
                    return -1 - (int(addr) >> self.shift6)
                client = str(mapped)  # ::ffff:a.b.c.d from a dual-stack socket: an IPv4 client
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, client), "big")
        except (OSError, ValueError):
            return None  # not an address (a test harness, a UNIX socket): nothing to limit
        if self.exempt and any(ipaddress.IPv4Address(value) in net for net in self.exempt):
            return None
        return value >> self.shift4

    def _account(self, client: str) -> list[int]:
        """The account of a client not in the memo: found or opened in the table, memoised."""
        key = self.key_of(client)
        if key is None:
            acct = _FREE
        else:
            table = self.table
            acct = table.get(key)  # type: ignore[assignment]
            if acct is None:
                if len(table) >= self.size:
                    self._evict()
                # Opened with a full balance, credited for this second.
                acct = table[key] = [self.rate, self.now, 0]
        accounts = self.accounts
        if len(accounts) >= self.size:
            accounts.clear()  # bounded under spoofed sources; refills with who asks now
        accounts[client] = acct
        return acct

    def _evict(self) -> None:
        """Make room: accounts idle for longer than the window first (they would start afresh
        anyway), then the oldest quarter by insertion. Amortised O(1) per new account."""
        table = self.table
        now, window = self.now, self.window
        gone = [k for k, acct in table.items() if now - acct[1] > window]
        if len(gone) < len(table) // 4:
            gone += islice(table, len(table) // 4)
        for k in gone:
            if table.pop(k, None) is not None:
                self.evicted += 1
        self.accounts.clear()  # memoised clients may hold evicted accounts

    def stats(self) -> dict[str, int]:
        return {
            "limited": self.limited,
            "slipped": self.slipped,
            "dropped": self.dropped,
            "prefixes": len(self.table),
            "evicted": self.evicted,
        }
