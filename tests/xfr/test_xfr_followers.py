"""Unbound, BIND 9 and PowerDNS Recursor from Debian follow betblock's combined RPZ zone on
loopback: each blocks what betblock lists (as betblock answers it: the redirect address), and
after a PUT on betblock's feeds API each blocks the new name and unblocks the removed one
(NOTIFY for Unbound and BIND; PowerDNS Recursor 4.8 takes no NOTIFY for RPZ and polls the SOA
every second). BIND and PowerDNS transfer with TSIG; Unbound, which cannot sign, from an
``allow_unsigned`` network."""

from __future__ import annotations

import time
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from tests.dnsutil import address_of
from tests.procutil import free_port
from tests.xfr import followers
from tests.xfr.primary import Primary, primary, until

SINKHOLE = "198.51.100.99"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["unbound", "bind", "pdns"])
async def test_resolver_follows_betblock(tmp_path: Path, kind: str) -> None:
    if not followers.available(kind):
        pytest.fail(f"{kind} is not installed (make test installs it)")
    p: Primary = await primary(tmp_path)
    p.upstream.add("roulette.test", "A", "192.0.2.7")
    p.upstream.add("poker.test", "A", "192.0.2.8")
    port = free_port()
    home = tmp_path / kind
    home.mkdir()
    make = {"unbound": followers.unbound, "bind": followers.bind, "pdns": followers.pdns}[kind]
    f = make(home, port, p.upstream.address, p.xfr_port)
    # PowerDNS Recursor 4.8 takes no NOTIFY for RPZ: it polls (refresh=1 in its config).
    extra = f'notify = ["127.0.0.1:{port}"]\n' if kind != "pdns" else ""
    if kind == "unbound":
        extra += 'allow_unsigned = ["127.0.0.1/32"]\n'
    log = ""
    try:
        await p.start(extra)
        await p.put(["casino.test", "poker.test"])
        await f.start()

        async def blocked(name: str) -> bool:
            return await address_of(port, name) == SINKHOLE

        await until(lambda: blocked("www.poker.test"), f"{kind} to block a listed name", 60)
        assert await blocked("casino.test")
        assert await address_of(port, "roulette.test") == "192.0.2.7"

        started = time.monotonic()
        await p.put(["casino.test", "roulette.test"])

        async def followed() -> bool:
            return await blocked("roulette.test") and await address_of(port, "poker.test") == "192.0.2.8"

        await until(followed, f"{kind} to follow the change", 60)
        print(f"{kind}: PUT -> enforced in {time.monotonic() - started:.2f} s")
        assert await blocked("sub.roulette.test")
        # The allowlist travels as passthru.
        assert await address_of(port, "ok.casino.test") != SINKHOLE
    finally:
        log = await f.stop()
        node = await p.stop()
        await p.upstream.stop()
        print(log[-3000:])
        print(node.log()[-3000:] if node is not None else "")
