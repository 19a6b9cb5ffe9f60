"""Integration: policy answers over real sockets: actions, subdomains, allowlist, precedence,
sinkhole TTL, Extended DNS Errors, CNAME inspection and hit events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dns.flags
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import port_of
from tests.dnsutil import a_records, ede, query, tcp, udp, wait_until

RCODE = dns.rcode

# Five agencies, one per action, plus two that list the same name (precedence).
AGENCY_LISTS = {
    "nx": ["casino.test"],
    "red": ["redirect.test"],
    "red4": ["redirect4.test"],
    "nd": ["nodata.test"],
    "ref": ["refused.test"],
    "hi": ["both.test"],
    "lo": ["both.test", "lo-only.test"],
}
AGENCY_CFG: list[dict[str, Any]] = [
    {"id": "nx", "name": "Nx Office", "action": "nxdomain"},
    {"id": "red", "action": "redirect", "redirect_ipv4": ["198.51.100.1", "198.51.100.2"], "redirect_ipv6": ["2001:db8::bad"]},
    {"id": "red4", "action": "redirect", "redirect_ipv4": ["198.51.100.4"]},
    {"id": "nd", "action": "nodata"},
    {"id": "ref", "action": "refused"},
    {"id": "hi", "action": "redirect", "redirect_ipv4": ["198.51.100.9"], "precedence": 50},
    {"id": "lo", "action": "nxdomain", "precedence": 1},
]
SINK_TTL = 123


def soa_of(msg: Any) -> tuple[str, int, int] | None:
    """(owner, TTL, MINIMUM) of the SOA in the authority section."""
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return rrset.name.to_text(omit_final_dot=True).lower(), rrset.ttl, rrset[0].minimum
    return None


@pytest.fixture
async def policy_node(node, upstream):
    upstream.add("notcasino.test", "A", "192.0.2.20")
    upstream.add("ok.casino.test", "A", "192.0.2.30")
    return await node(
        lists=AGENCY_LISTS,
        agencies=AGENCY_CFG,
        policy={"sinkhole_ttl": SINK_TTL, "allowlist": ["ok.casino.test"]},
    )


# (question, type, rcode, A/AAAA addresses in the answer, owner of the SOA or None)
POLICY_TABLE = [
    # nxdomain: the listed name and everything below it, whatever the letter case
    ("casino.test", "A", RCODE.NXDOMAIN, [], "casino.test"),
    ("www.casino.test", "A", RCODE.NXDOMAIN, [], "casino.test"),
    ("a.b.WWW.Casino.TEST", "AAAA", RCODE.NXDOMAIN, [], "casino.test"),
    ("casino.test", "TXT", RCODE.NXDOMAIN, [], "casino.test"),
    # redirect: A to the agency's IPv4s, AAAA to its IPv6s, other types NODATA
    ("redirect.test", "A", RCODE.NOERROR, ["198.51.100.1", "198.51.100.2"], None),
    ("www.redirect.test", "AAAA", RCODE.NOERROR, ["2001:db8::bad"], None),
    ("redirect.test", "MX", RCODE.NOERROR, [], "redirect.test"),
    ("m.redirect.test", "TXT", RCODE.NOERROR, [], "redirect.test"),
    # redirect without IPv6 addresses: AAAA is NODATA
    ("redirect4.test", "A", RCODE.NOERROR, ["198.51.100.4"], None),
    ("x.redirect4.test", "AAAA", RCODE.NOERROR, [], "redirect4.test"),
    # nodata
    ("nodata.test", "A", RCODE.NOERROR, [], "nodata.test"),
    ("sub.nodata.test", "AAAA", RCODE.NOERROR, [], "nodata.test"),
    # refused
    ("refused.test", "A", RCODE.REFUSED, [], None),
    ("www.refused.test", "AAAA", RCODE.REFUSED, [], None),
    # precedence: "hi" (redirect) beats "lo" (nxdomain) on the name both list
    ("both.test", "A", RCODE.NOERROR, ["198.51.100.9"], None),
    ("lo-only.test", "A", RCODE.NXDOMAIN, [], "lo-only.test"),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_policy_table(policy_node, upstream, transport):
    port = port_of(policy_node)
    send = udp if transport == "udp" else tcp
    for qname, rdtype, rcode, addrs, soa_owner in POLICY_TABLE:
        for edns in (False, True):
            r = await send(port, query(qname, rdtype, edns=edns))
            where = f"{qname} {rdtype} edns={edns}"
            assert r.rcode() == rcode, where
            got = sorted(rr.address for rrset in r.answer for rr in rrset)
            assert got == sorted(addrs), where
            for rrset in r.answer:
                assert rrset.ttl == SINK_TTL, where
                assert rrset.name == dns.name.from_text(qname), where
            soa = soa_of(r)
            if soa_owner is None:
                assert soa is None, where
            else:
                # RFC 2308: the SOA is owned by the listed name and its MINIMUM is the TTL
                # that resolvers below us cache the negative answer for.
                assert soa == (soa_owner, SINK_TTL, SINK_TTL), where
            assert (r.edns >= 0) == edns, f"{where}: OPT present iff the query had one"
            if edns:
                codes = ede(r)
                assert len(codes) == 1 and codes[0][0] == 16, where
            else:
                assert r.opt is None, where
    # Not one of these questions reached the upstream.
    assert upstream.udp_queries == 0 and upstream.tcp_queries == 0


async def test_ede_names_the_agency(policy_node):
    r = await udp(port_of(policy_node), query("www.casino.test", edns=True))
    [(code, text)] = ede(r)
    assert code == 16  # Censored
    assert "Nx Office" in text and "nx" in text
    r = await udp(port_of(policy_node), query("both.test", edns=True))
    [(code, text)] = ede(r)
    assert "hi" in text.split("(")[-1], "the winning agency is named"


@pytest.mark.parametrize(
    "qname, rcode, addrs",
    [
        ("ok.casino.test", RCODE.NOERROR, ["192.0.2.30"]),  # allowlisted under a listed parent
        ("notcasino.test", RCODE.NOERROR, ["192.0.2.20"]),  # label boundary: not a subdomain
        ("allowed.test", RCODE.NOERROR, ["192.0.2.10"]),
        ("deeper.ok.casino.test", RCODE.NXDOMAIN, []),  # allowlist covers subdomains: upstream's answer
    ],
)
async def test_not_blocked(policy_node, upstream, qname, rcode, addrs):
    r = await udp(port_of(policy_node), query(qname, edns=True))
    assert r.rcode() == rcode
    assert a_records(r) == addrs
    assert ede(r) == []
    assert upstream.seen[-1][0] == qname.lower()


async def test_allowlist_overrides_every_agency(node, upstream):
    app = await node(lists={"a": ["casino.test"], "b": ["www.casino.test"]}, policy={"allowlist": ["www.casino.test"]})
    port = port_of(app)
    r = await udp(port, query("www.casino.test"))
    assert r.rcode() == RCODE.NOERROR and a_records(r) == ["192.0.2.66"]
    r = await udp(port, query("casino.test"))
    assert r.rcode() == RCODE.NXDOMAIN and soa_of(r)[0] == "casino.test" and upstream.udp_queries == 1


@pytest.mark.parametrize(
    "precedence, rcode, addrs",
    [
        ({"a": 1, "b": 9}, RCODE.NXDOMAIN, []),  # b (nxdomain) outranks a (redirect)
        ({"a": 9, "b": 1}, RCODE.NOERROR, ["198.51.100.7"]),  # a outranks b
    ],
)
async def test_precedence(node, precedence, rcode, addrs):
    app = await node(
        lists={"a": ["shared.test"], "b": ["shared.test"]},
        agencies=[
            {"id": "a", "action": "redirect", "redirect_ipv4": ["198.51.100.7"], "precedence": precedence["a"]},
            {"id": "b", "action": "nxdomain", "precedence": precedence["b"]},
        ],
    )
    r = await udp(port_of(app), query("www.shared.test", edns=True))
    assert r.rcode() == rcode and a_records(r) == addrs
    winner = max(precedence, key=precedence.get)
    assert ede(r)[0][1].endswith(f"({winner})")


@pytest.mark.parametrize("ttl", [0, 30, 86400])
async def test_sinkhole_ttl(node, ttl):
    app = await node(
        lists={"red": ["casino.test"]},
        agencies=[{"id": "red", "action": "redirect", "redirect_ipv4": ["198.51.100.1"]}],
        policy={"sinkhole_ttl": ttl},
    )
    r = await udp(port_of(app), query("casino.test"))
    assert r.answer[0].ttl == ttl
    r = await udp(port_of(app), query("casino.test", "AAAA"))
    assert soa_of(r) == ("casino.test", ttl, ttl)


async def test_redirect_with_many_addresses_truncated_over_udp(node):
    ips = [f"198.51.100.{i}" for i in range(1, 61)]  # 60 A records: ~1000 bytes
    app = await node(lists={"red": ["casino.test"]}, agencies=[{"id": "red", "action": "redirect", "redirect_ipv4": ips}])
    port = port_of(app)
    r = await udp(port, query("casino.test"))
    assert r.flags & dns.flags.TC and r.answer == [] and r.rcode() == RCODE.NOERROR
    assert r.opt is None
    r = await udp(port, query("casino.test", edns=True))  # 1232 is enough
    assert not r.flags & dns.flags.TC and a_records(r) == sorted(ips)
    r = await tcp(port, query("www.casino.test"))
    assert not r.flags & dns.flags.TC and a_records(r) == sorted(ips)


# -- CNAME inspection ----------------------------------------------------------------------


async def test_cname_to_listed_name_is_sinkholed(node, upstream):
    app = await node()  # pl-mf lists casino.test, action nxdomain
    port = port_of(app)
    for attempt in ("upstream", "cache"):
        r = await udp(port, query("alias.test", edns=True))
        assert r.rcode() == RCODE.NXDOMAIN, attempt
        assert r.answer == [], attempt
        # The listed name is not in this message: the SOA is owned by the question name.
        assert soa_of(r) == ("alias.test", 300, 300), attempt
        assert ede(r)[0][0] == 16, attempt
        assert upstream.udp_queries == 1, attempt  # the second answer came from the cache
    r = await tcp(port, query("ALIAS.test"))
    assert r.rcode() == RCODE.NXDOMAIN and upstream.udp_queries == 1


async def test_cname_redirect_action(node, upstream):
    app = await node(
        lists={"red": ["casino.test"]},
        agencies=[{"id": "red", "action": "redirect", "redirect_ipv4": ["198.51.100.1"]}],
    )
    r = await udp(port_of(app), query("alias.test"))
    assert r.rcode() == RCODE.NOERROR
    assert a_records(r) == ["198.51.100.1"]
    assert all(rrset.rdtype == dns.rdatatype.A for rrset in r.answer), "no CNAME to the listed name leaks"


async def test_clean_alias_resolves(node, upstream):
    app = await node()
    for _ in range(2):  # from upstream, then from the cache
        r = await udp(port_of(app), query("clean-alias.test"))
        assert r.rcode() == RCODE.NOERROR
        assert a_records(r) == ["192.0.2.10"]
        assert [rrset.rdtype for rrset in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert upstream.udp_queries == 1


async def test_cached_cname_rechecked_after_reload(node, upstream, tmp_path):
    app = await node(lists={"pl-mf": ["other.test"]})
    r = await udp(port_of(app), query("alias.test"))
    assert a_records(r) == ["192.0.2.66"]  # not listed yet: cached as it came
    (tmp_path / "pl-mf.txt").write_text("casino.test\n")
    await app.reload()
    r = await udp(port_of(app), query("alias.test"))
    assert r.rcode() == RCODE.NXDOMAIN and r.answer == []
    assert upstream.udp_queries == 1, "the cached answer was re-checked, not fetched again"


async def test_cname_inspection_off(node, upstream):
    app = await node(policy={"cname_inspection": False})
    r = await udp(port_of(app), query("alias.test"))
    assert r.rcode() == RCODE.NOERROR and a_records(r) == ["192.0.2.66"]


# -- hit events ----------------------------------------------------------------------------


def read_hits(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_hits_written_per_blocked_answer(policy_node, upstream, tmp_path):
    port = port_of(policy_node)
    await udp(port, query("www.Casino.test", "AAAA"))
    await tcp(port, query("redirect.test", "A", edns=True))
    await udp(port, query("allowed.test"))  # forwarded: no hit
    await udp(port, query("ok.casino.test"))  # allowlisted: no hit
    await udp(port, query("alias.test", "A"))  # CNAME into casino.test: a hit
    path = tmp_path / "hits.jsonl"
    await wait_until(lambda: len(read_hits(path)) >= 3, what="3 hit lines flushed")
    hits = read_hits(path)
    got = [(h["client"], h["name"], h["qtype"], h["agency"], h["action"], h["listed"]) for h in hits]
    assert got == [
        ("127.0.0.1", "www.casino.test", "AAAA", "nx", "nxdomain", "casino.test"),
        ("127.0.0.1", "redirect.test", "A", "red", "redirect", "redirect.test"),
        ("127.0.0.1", "alias.test", "A", "nx", "nxdomain", "casino.test"),
    ]
    assert all(h["count"] == 1 and h["policy_version"] > 0 for h in hits)


async def test_hits_flushed_at_stop(node, tmp_path):
    app = await node(hits={"flush_interval": 3600})  # only the stop can write them
    port = port_of(app)
    for name in ("casino.test", "a.casino.test", "b.casino.test"):
        r = await udp(port, query(name))
        assert r.rcode() == RCODE.NXDOMAIN
    path = tmp_path / "hits.jsonl"
    assert read_hits(path) == []
    app.stop()
    await wait_until(lambda: len(read_hits(path)) == 3, what="hits flushed at stop")
    assert [h["name"] for h in read_hits(path)] == ["casino.test", "a.casino.test", "b.casino.test"]
