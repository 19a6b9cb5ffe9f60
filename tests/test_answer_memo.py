"""The per-snapshot memo of blocked UDP answers: same bytes after the ID, same answer, own ID;
emptied by a swap; never bypasses the ACL; every hit still recorded."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import dns.rcode

from feeds.compile import AgencyList, compile_snapshot, to_wire
from tests.conftest import NodeFactory, port_of


async def _ask(port: int, q: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3)


async def test_repeats_are_answered_from_the_memo_with_their_own_id(node: NodeFactory) -> None:
    app = await node(lists={"pl-mf": ["casino.test"]})
    port = port_of(app)
    first = dns.message.make_query("WWW.Casino.test", "A", use_edns=0)
    r1 = await _ask(port, first)
    assert r1.rcode() == dns.rcode.NXDOMAIN
    assert len(app.pipeline.policy.answers) == 1
    again = dns.message.make_query("WWW.Casino.test", "A", use_edns=0)
    again.id = (first.id + 1) % 65536
    r2 = await _ask(port, again)
    assert r2.id == again.id and r2.rcode() == dns.rcode.NXDOMAIN
    assert r2.to_wire()[2:] == r1.to_wire()[2:]  # the same answer, byte for byte, after the ID
    assert str(r2.question[0].name) == "WWW.Casino.test."
    assert app.pipeline.counters.snapshot()["blocked"] == 2
    await app.recorder.flush()
    assert app.recorder.recorded == 2  # the memo path records its hit too


async def test_a_swap_empties_the_memo(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app = await node(lists={"pl-mf": ["allowed.test"]})
    port = port_of(app)
    q = dns.message.make_query("allowed.test", "A")
    assert (await _ask(port, q)).rcode() == dns.rcode.NXDOMAIN
    agency = app.settings.agencies[0]
    app.pipeline.install(compile_snapshot([AgencyList(agency, [to_wire(b"other.test")])], [], 300))
    r = await _ask(port, q)  # the very same bytes
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.10"

