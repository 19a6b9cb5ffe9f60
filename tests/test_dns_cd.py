"""The CD bit (RFC 4035 3.2.2): forwarded upstream, echoed, and part of the cache key, since a
validating upstream answers a CD query differently."""

from __future__ import annotations

import dns.asyncquery
import dns.flags
import dns.message

from tests.conftest import NodeFactory, port_of


def _query(cd: bool) -> dns.message.Message:
    q = dns.message.make_query("allowed.test", "A", use_edns=0)
    if cd:
        q.flags |= dns.flags.CD
    return q


async def test_cd_is_forwarded_echoed_and_keyed(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app = await node()
    port = port_of(app)
    plain = await dns.asyncquery.udp(_query(False), "127.0.0.1", port=port, timeout=3)
    assert not plain.flags & dns.flags.CD
    assert upstream.checking_disabled == [False]
    cd = await dns.asyncquery.udp(_query(True), "127.0.0.1", port=port, timeout=3)
    assert cd.flags & dns.flags.CD and cd.answer[0][0].address == "192.0.2.10"
    assert upstream.checking_disabled == [False, True]  # not served from the non-CD entry
    again = await dns.asyncquery.udp(_query(True), "127.0.0.1", port=port, timeout=3)
    assert again.flags & dns.flags.CD
    assert upstream.checking_disabled == [False, True]  # now cached under its own key
