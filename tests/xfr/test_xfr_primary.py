"""betblock as an RPZ primary, read by dnspython's transfer client over real TCP: the combined
and per-agency zones (actions and scopes as RPZ defines them), AXFR and IXFR signed with TSIG,
unsigned and badly signed requests refused, the serial growing with each policy version and
surviving a restart, transfers counted in /metrics."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.xfr
import dns.zone

from tests.xfr.primary import KEY_NAME, KEY_SECRET, ZONE, Primary, primary, until

T = TypeVar("T")
KEYRING = dns.tsigkeyring.from_text({KEY_NAME: ("hmac-sha256", KEY_SECRET)})
KEY = dns.name.from_text(KEY_NAME)


def axfr(p: Primary, zone: str = ZONE) -> dns.zone.Zone:
    z = dns.zone.Zone(zone)
    query, _ = dns.xfr.make_query(z, serial=None, keyring=KEYRING, keyname=KEY)
    dns.query.inbound_xfr("127.0.0.1", z, query, port=p.xfr_port, timeout=10, lifetime=20)
    return z


def rpz(z: dns.zone.Zone) -> dict[str, str]:
    """owner (relative) -> its records as text, SOA and NS left out."""
    out: dict[str, str] = {}
    for name, node in z.nodes.items():
        for rds in node.rdatasets:
            if rds.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
                continue
            out[str(name)] = " ".join(sorted(f"{dns.rdatatype.to_text(rds.rdtype)} {rd}" for rd in rds))
    return out


def patiently(ask: Callable[[], T], seconds: float = 60.0) -> T:
    """``ask()`` (one UDP question, 5 s to answer), asked again while it times out, within
    ``seconds``: one unanswered datagram is a timed assertion on a loaded machine."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return ask()
        except (dns.exception.Timeout, TimeoutError):
            if time.monotonic() > deadline:
                raise


def soa_serial(p: Primary, zone: str = ZONE) -> dns.message.Message:
    q = dns.message.make_query(zone, "SOA")
    q.use_tsig(KEYRING, KEY)
    return patiently(lambda: dns.query.udp(q, "127.0.0.1", port=p.xfr_port, timeout=5))


async def test_zones_axfr_ixfr_tsig_serial_and_metrics(tmp_path: Path) -> None:
    p = await primary(tmp_path)
    await p.start()
    try:
        await p.put(["casino.test", "poker.test", "slots.test"])  # applied and installed when it answers
        # The combined zone: pl-mf (precedence 20) wins slots.test; allowlisted ok.casino.test
        # is passthru; it-adm's own zone answers slots.test as it asks (nxdomain).
        z = axfr(p)

        async def pushed() -> bool:
            nonlocal z
            z = axfr(p)
            return "poker.test" in rpz(z)

        await until(pushed, "the pushed list in the combined zone")  # zones follow the install
        got = rpz(z)
        assert got == {
            "casino.test": "A 198.51.100.99",
            "*.casino.test": "A 198.51.100.99",
            "poker.test": "A 198.51.100.99",
            "*.poker.test": "A 198.51.100.99",
            "slots.test": "A 198.51.100.99",
            "*.slots.test": "A 198.51.100.99",
            "ok.casino.test": "CNAME rpz-passthru.",
            "*.ok.casino.test": "CNAME rpz-passthru.",
        }
        it = rpz(axfr(p, "it-adm.rpz"))
        assert it["slots.test"] == "CNAME ." and it["*.slots.test"] == "CNAME ."
        assert "casino.test" not in it and it["ok.casino.test"] == "CNAME rpz-passthru."
        serial1 = z.get_soa().serial

        # A change: IXFR from serial1 carries only the difference.
        await p.put(["casino.test", "poker.test", "slots.test", "roulette.test"])

        async def moved() -> bool:
            r = soa_serial(p)
            return r.answer[0][0].serial != serial1

        await until(moved, "a new serial")
        r = soa_serial(p)
        assert r.had_tsig and r.answer[0][0].serial == serial1 + 1
        q, _ = dns.xfr.make_query(z, keyring=KEYRING, keyname=KEY)  # IXFR from z's serial
        with socket.create_connection(("127.0.0.1", p.xfr_port), timeout=10) as s:
            dns.query.send_tcp(s, q)
            first, _ = dns.query.receive_tcp(s, keyring=KEYRING, request_mac=q.mac, one_rr_per_rrset=True)
        types = [(str(rr.name), dns.rdatatype.to_text(rr.rdtype)) for rr in first.answer]
        # SOA new, SOA old (no deletions), SOA new, the two added records, SOA new.
        assert types[0][1] == "SOA" and types[-1][1] == "SOA" and len(types) == 6
        assert {n for n, t in types if t == "A"} == {"roulette.test.betblock.rpz.", "*.roulette.test.betblock.rpz."}

        # dnspython's IXFR client applies it to its copy, which then equals a fresh AXFR.
        dns.query.inbound_xfr(
            "127.0.0.1", z, query=dns.xfr.make_query(z, keyring=KEYRING, keyname=KEY)[0],
            port=p.xfr_port, timeout=10, lifetime=20,
        )
        assert rpz(z) == rpz(axfr(p)) and "roulette.test" in rpz(z)

        # Unsigned and badly signed requests are refused.
        sent = 0  # unsigned requests (asked again while unanswered), each counted in /metrics

        def ask_unsigned() -> dns.message.Message:
            nonlocal sent
            sent += 1
            return dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=p.xfr_port, timeout=5)

        unsigned = patiently(ask_unsigned)
        assert unsigned.rcode() == dns.rcode.REFUSED and not unsigned.answer
        bad = dns.message.make_query(ZONE, "SOA")
        bad.use_tsig(dns.tsigkeyring.from_text({KEY_NAME: ("hmac-sha256", base64.b64encode(b"x" * 32).decode())}), KEY)
        # (read without a keyring: the answer to a request we cannot verify is not signed)
        def ask_badly_signed() -> dns.message.Message:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(bad.to_wire(), ("127.0.0.1", p.xfr_port))
                return dns.message.from_wire(s.recv(65535))

        reply = patiently(ask_badly_signed)
        assert reply.rcode() == dns.rcode.NOTAUTH

        text = await p.metrics()
        assert 'betblock_xfr_requests_total{kind="axfr",result="axfr"}' in text
        assert 'betblock_xfr_requests_total{kind="ixfr",result="ixfr"}' in text
        assert f'betblock_xfr_requests_total{{kind="request",result="not signed (TSIG required)"}} {float(sent)}' in text
    finally:
        stopped = await p.stop()
    # Logged once per client and reason.
    assert stopped is not None and stopped.log().count("not signed (TSIG required)") == 1
    # The serial survives a restart (same policy, same serial).
    await p.start()
    try:
        assert soa_serial(p).answer[0][0].serial == serial1 + 1
    finally:
        await p.stop()
        await p.upstream.stop()
