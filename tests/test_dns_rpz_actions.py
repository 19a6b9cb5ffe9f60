"""RPZ per-rule actions and match scopes over real sockets: drop (no answer), tcp-only (TC=1
over UDP, resolved over TCP), local data with several addresses, exact and below triggers, and
the lookup route's scope and rule."""

from __future__ import annotations

from pathlib import Path

import dns.exception
import dns.flags
import dns.rcode
import pytest

from tests.conftest import port_of
from tests.dnsutil import a_records, query, tcp, udp

ZONE = """$ORIGIN rpz.test.
@ SOA ns hostmaster 1 3600 600 86400 300
drop.test CNAME rpz-drop.
tcp.test CNAME rpz-tcp-only.
two.test A 192.0.2.1
two.test A 192.0.2.2
two.test AAAA 2001:db8::2
exact.test CNAME .
*.below.test CNAME *.
"""


@pytest.fixture
async def app(node, upstream, tmp_path: Path):
    for name in ("tcp.test", "www.exact.test", "below.test"):
        upstream.add(name, "A", "198.51.100.1")
    (tmp_path / "zone.rpz").write_text(ZONE)
    return await node(
        lists={"zone": []},
        agencies=[{"id": "zone", "sources": [{"kind": "file", "path": str(tmp_path / "zone.rpz"), "format": "rpz"}]}],
    )


async def test_rpz_actions_and_scopes(app, upstream) -> None:
    port = port_of(app)
    with pytest.raises(dns.exception.Timeout):
        await udp(port, query("drop.test"), timeout=0.5)
    with pytest.raises((dns.exception.Timeout, EOFError, ConnectionError)):
        await tcp(port, query("drop.test"), timeout=0.5)
    assert (await udp(port, query("www.drop.test"))).rcode() == dns.rcode.NXDOMAIN  # exact: upstream says
    r = await udp(port, query("tcp.test", edns=True))
    assert r.flags & dns.flags.TC and r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert ("tcp.test", "A", False) not in [(n, t, d) for n, t, d in upstream.seen]
    r = await tcp(port, query("tcp.test"))
    assert not r.flags & dns.flags.TC and a_records(r) == ["198.51.100.1"]
    r = await udp(port, query("two.test"))
    assert a_records(r) == ["192.0.2.1", "192.0.2.2"] and r.flags & dns.flags.RA
    r = await udp(port, query("two.test", "AAAA"))
    assert [rr.address for rrset in r.answer for rr in rrset] == ["2001:db8::2"]
    assert (await udp(port, query("exact.test"))).rcode() == dns.rcode.NXDOMAIN
    assert a_records(await udp(port, query("www.exact.test"))) == ["198.51.100.1"]
    assert a_records(await udp(port, query("below.test"))) == ["198.51.100.1"]
    r = await udp(port, query("x.below.test"))
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    why = await app.lookup("x.below.test")  # the lookup service (/v1/lookup/{name})
    assert why["blocked"] and why["winner"]["scope"] == "below" and why["winner"]["listed"] == "below.test"
    assert why["winner"]["action"] == "nodata"
    decided = why["resolver"]["decided_by"]
    assert decided["scope"] == "below" and decided["listed"] == "below.test"
    assert decided["rule"] == app.pipeline.policy.snapshot.match(b"\x01x\x05below\x04test\x00").rule.id
    # Every RPZ action is a blocked answer with its hit, drop and tcp-only included.
    assert app.pipeline.counters.snapshot()["blocked"] == 7
    await app.recorder.flush()
    assert app.recorder.recorded == 7 and app.recorder.store_errors == 0
    why = await app.lookup("www.exact.test")
    assert not why["blocked"] and why["resolver"]["policy_version"] == app.pipeline.policy.version
    assert not why["resolver"]["blocked"]
    assert {k: why["resolver"]["decided_by"][k] for k in ("listed", "position", "scope")} == {
        "listed": "exact.test", "position": "below", "scope": "exact",  # the closest entry does not cover it
    }
