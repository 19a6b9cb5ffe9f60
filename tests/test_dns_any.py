"""QTYPE=ANY (RFC 8482): answered with one synthesized HINFO, never forwarded upstream (a
forwarded ANY is a reflection amplifier); a listed name still gets its sinkhole."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype

from tests.conftest import NodeFactory, port_of
from tests.dnsutil import query, tcp, udp


def _hinfo(msg: dns.message.Message) -> tuple[bytes, bytes, int]:
    assert msg.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in msg.answer] == [dns.rdatatype.HINFO]
    rr = msg.answer[0][0]
    return rr.cpu, rr.os, msg.answer[0].ttl


async def test_any_gets_one_hinfo_and_never_reaches_the_upstream(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app = await node()
    port = port_of(app)
    for q in (query("allowed.test", "ANY"), query("allowed.test", "ANY", edns=True), query("Nowhere.Test", "ANY")):
        for send in (udp, tcp):
            r = await send(port, q)
            assert _hinfo(r) == (b"RFC8482", b"", 3789)
            assert r.question[0].name == q.question[0].name  # the client's letter case
            assert (r.edns >= 0) == (q.edns >= 0)  # OPT echoed only when asked with EDNS
            assert r.answer[0].name == q.question[0].name
    assert upstream.udp_queries == 0 and upstream.tcp_queries == 0
    assert not any(qtype == "ANY" for _name, qtype, _do in upstream.seen)
    # The other types of the same name are still forwarded.
    r = await udp(port, query("allowed.test", "A"))
    assert r.answer[0][0].address == "192.0.2.10"
    assert [qtype for _name, qtype, _do in upstream.seen] == ["A"]
    assert app.pipeline.counters.snapshot()["minimal_any"] == 6


async def test_any_for_a_listed_name_gets_the_sinkhole(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app = await node(lists={"pl-mf": ["casino.test"]})
    r = await dns.asyncquery.udp(dns.message.make_query("www.casino.test", "ANY"), "127.0.0.1", port=port_of(app), timeout=3)
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
    assert upstream.udp_queries == 0
    counts = app.pipeline.counters.snapshot()
    assert counts["blocked"] == 1 and counts["minimal_any"] == 0
