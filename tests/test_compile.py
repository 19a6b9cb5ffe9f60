"""Lists to snapshot: subdomains, precedence, allowlist, rejects; the plain reader."""

from __future__ import annotations

from config.settings import AgencySettings
from feeds.compile import AgencyList, compile_snapshot, read_plain, to_wire
from feeds.snapshot import ALLOW


def agency(id_: str, precedence: int, action: str = "nxdomain", **kw: object) -> AgencySettings:
    return AgencySettings(id=id_, name=id_.upper(), precedence=precedence, action=action, **kw)  # type: ignore[arg-type]


def names(*ns: str) -> list[bytes]:
    return [to_wire(n.encode()) for n in ns]


def test_listed_name_blocks_itself_and_subdomains_not_parents() -> None:
    snap = compile_snapshot([AgencyList(agency("a", 1), names("bad.test"))], [], 300)
    assert snap.match(to_wire(b"bad.test")).listed == to_wire(b"bad.test")  # type: ignore[union-attr]
    m = snap.match(to_wire(b"a.b.bad.test"))
    assert m is not None and m.offset == 4 and m.rule.agency == "a"
    assert snap.match(to_wire(b"test")) is None
    assert snap.match(to_wire(b"notbad.test")) is None


def test_higher_precedence_wins_and_every_agency_is_named() -> None:
    low = agency("low", 1, "nxdomain")
    high = agency("high", 9, "redirect", redirect_ipv4=["192.0.2.1"])
    snap = compile_snapshot([AgencyList(low, names("both.test", "low.test")), AgencyList(high, names("both.test"))], [], 60)
    both = snap.match(to_wire(b"both.test"))
    assert both is not None and both.rule.agencies == ("high", "low") and both.rule.action == "redirect"
    only = snap.match(to_wire(b"low.test"))
    assert only is not None and only.rule.agencies == ("low",) and only.rule.ttl == 60
    assert len(snap.rules) == 3  # allow slot + one rule per distinct set of agencies


def test_most_specific_entry_decides() -> None:
    snap = compile_snapshot(
        [AgencyList(agency("a", 1, "nxdomain"), names("bad.test")), AgencyList(agency("b", 0, "nodata"), names("x.bad.test"))],
        [],
        300,
    )
    assert snap.match(to_wire(b"y.x.bad.test")).rule.action == "nodata"  # type: ignore[union-attr]
    assert snap.match(to_wire(b"y.bad.test")).rule.action == "nxdomain"  # type: ignore[union-attr]


def test_allowlist_overrides_below_and_above() -> None:
    snap = compile_snapshot(
        [AgencyList(agency("a", 1), names("bad.test", "cdn.shared.test"))],
        names("help.bad.test", "shared.test"),
        300,
    )
    assert snap.match(to_wire(b"bad.test")) is not None
    assert snap.match(to_wire(b"help.bad.test")) is None
    assert snap.match(to_wire(b"x.help.bad.test")) is None
    # An allowlisted parent unblocks a listed child entry entirely.
    assert snap.match(to_wire(b"cdn.shared.test")) is None
    assert snap.table[to_wire(b"help.bad.test")] == ALLOW
    assert snap.stats["unblocked"] == 1


def test_read_plain_normalises_and_reports_rejects() -> None:
    data = "# comment\n\nBad.Test.\n  *.wild.test  \nbücher.test\n192.0.2.1\n" + "a" * 64 + ".test\nfoo bar\n"
    got = read_plain(data.encode())
    assert got.names[:3] == names("bad.test", "wild.test", "xn--bcher-kva.test")
    reasons = {line: reason for line, _text, reason in got.rejects}
    assert set(reasons) == {6, 7, 8}, got.rejects
    assert all(reasons.values())
