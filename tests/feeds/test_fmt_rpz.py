"""RPZ zone files: the shared sample, origins, record sets and what is refused."""

from __future__ import annotations

from pathlib import Path

from feeds.entry import ACTIONS, Entry, Reject
from feeds.formats import rpz

SAMPLES = Path(__file__).parent / "samples"


def test_sample() -> None:
    result = rpz.parse((SAMPLES / "rpz.zone").read_bytes())
    assert result.entries == [
        Entry("casino-royal-bet.example", 6, False, "redirect", ("145.237.235.240",)),
        Entry("casino-royal-bet.example", 7, True, "redirect", ("145.237.235.240",)),
        Entry("spin-win-777.test", 9, False, "redirect", ("217.175.53.72",)),
        Entry("bet-mirror-41.example", 12, False, "nxdomain"),
        Entry("bet-mirror-41.example", 13, True, "nxdomain"),
        Entry("xn--zakady-online-yhc.test", 15, False, "nxdomain"),
        Entry("legit-lottery.example", 17, False, "passthru", allow=True),
    ]
    # A CNAME to a warning host is not an answer the resolver can give as Unbound would.
    assert [(r.line, r.reason.split(" (")[0]) for r in result.rejects] == [(10, "unsupported action")]
    assert {e.action for e in result.entries} <= ACTIONS
    assert result.meta["serial"] == 2025091501  # from the SOA spread over parentheses


ZONE = b"""\
$TTL 300
$ORIGIN rpz.isp.example.
@ SOA ns.isp.example. hostmaster.isp.example. (
      7 ; serial
      3600 600 604800 300 )
@ NS ns.isp.example.
nodata.example 300 IN CNAME *.
both.example A 192.0.2.1
both.example AAAA 2001:db8::1
both.example A 192.0.2.1
  IN A 192.0.2.2
abs.example.rpz.isp.example. CNAME .
outside.example. CNAME .
32.1.2.0.192.rpz-ip CNAME .
ns.example.rpz-nsdname CNAME .
drop.example CNAME rpz-drop.
text.example TXT "blocked; by order"
cname.example CNAME .
cname.example A 192.0.2.3
bad.example A 2001:db8::2
com CNAME .
$INCLUDE /etc/passwd
rewrite.example CNAME *.garden.example.
@ A 192.0.2.9
"""


def test_origin_record_sets_and_refusals() -> None:
    result = rpz.parse(ZONE)
    assert result.meta["origin"] == "rpz.isp.example"
    assert result.meta["serial"] == 7
    assert result.entries == [
        Entry("nodata.example", 7, False, "nodata"),
        Entry("both.example", 8, False, "redirect", ("192.0.2.1", "2001:db8::1", "192.0.2.2")),
        Entry("abs.example", 12, False, "nxdomain"),
        Entry("drop.example", 16, False, "drop"),
        Entry("cname.example", 18, False, "nxdomain"),
    ]
    assert [(r.line, r.reason) for r in result.rejects] == [
        (10, "duplicate"),
        (13, "owner outside the zone"),
        (14, "unsupported trigger (rpz-ip)"),
        (15, "unsupported trigger (rpz-nsdname)"),
        (17, "unsupported record type TXT"),
        (19, "conflicts with line 18"),
        (20, "A record with an IPv6 address"),
        (21, "single-label name"),
        (22, "$INCLUDE not supported"),
        (23, "unsupported action (wildcard CNAME rewrite)"),
        (24, "A record at the zone apex"),
    ]


def test_every_rpz_action_and_a_host_cname_refused() -> None:
    data = (
        b"$ORIGIN rpz.test.\n@ SOA ns hm 1 2 3 4 5\n"
        b"nx.example CNAME .\nnd.example CNAME *.\npass.example CNAME rpz-passthru.\n"
        b"drop.example CNAME rpz-drop.\ntcp.example CNAME rpz-tcp-only.\n"
        b"ip.example A 192.0.2.1\nip.example A 192.0.2.2\nip.example AAAA 2001:db8::1\n"
        b"host.example CNAME warning.isp.example.\nrel.example CNAME warning\nother.example CNAME rpz-other.\n"
    )
    result = rpz.parse(data)
    assert [(e.name, e.action, e.redirect, e.allow) for e in result.entries] == [
        ("nx.example", "nxdomain", (), False),
        ("nd.example", "nodata", (), False),
        ("pass.example", "passthru", (), True),
        ("drop.example", "drop", (), False),
        ("tcp.example", "tcp-only", (), False),
        ("ip.example", "redirect", ("192.0.2.1", "192.0.2.2", "2001:db8::1"), False),
    ]
    assert [(r.line, r.reason.split(" (")[0]) for r in result.rejects] == [
        (11, "unsupported action"),
        (12, "unsupported action"),
        (13, "unsupported action rpz-other."),
    ]


def test_origin_as_bind_reads_it() -> None:
    # No leading $ORIGIN: the apex is the configured origin, or the SOA's owner; a later
    # $ORIGIN naming a sub-origin only changes what relative names are relative to.
    body = b"a.example CNAME .\n$ORIGIN sub.rpz.test.\nb.example CNAME .\nbogus.example.other.test. CNAME .\n"
    configured = rpz.parse(body, origin="rpz.test.")
    assert [e.name for e in configured.entries] == ["a.example", "b.example.sub"]
    assert [(r.line, r.reason) for r in configured.rejects] == [(4, "owner outside the zone")]
    assert configured.meta["origin"] == "rpz.test"
    by_soa = rpz.parse(b"rpz.test. SOA ns hm 1 2 3 4 5\n$ORIGIN rpz.test.\n" + body)
    assert [e.name for e in by_soa.entries] == ["a.example", "b.example.sub"]
    assert by_soa.meta["origin"] == "rpz.test" and by_soa.meta["serial"] == 1
    # $ORIGIN before the SOA names the apex through "@".
    leading = rpz.parse(b"$ORIGIN rpz.test.\n@ SOA ns hm 9 2 3 4 5\nx.example CNAME .\n$ORIGIN deep.rpz.test.\ny CNAME .\n")
    assert [e.name for e in leading.entries] == ["x.example", "y.deep"] and leading.meta["serial"] == 9


def test_broken_syntax_is_rejected_per_record() -> None:
    data = b'a.example TXT "unterminated\nb.example CNAME . )\nc.example CNAME ( .\n'
    result = rpz.parse(data)
    assert result.entries == []
    assert result.rejects == [
        Reject(1, 'a.example TXT "unterminated', "unterminated quoted string"),
        Reject(2, "b.example CNAME . )", "unbalanced parentheses"),
        Reject(3, "c.example CNAME ( .", "unbalanced parentheses"),
    ]
