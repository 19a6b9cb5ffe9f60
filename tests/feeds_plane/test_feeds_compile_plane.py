"""Compile rules the control plane adds (dates, per-entry actions, agency exceptions, several
sources per agency), the guardrails' pure parts, SourceList diffs, and the fast plain reader
agreeing with the plain format parser."""

from __future__ import annotations

import typing
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import AgencySettings, FormatName
from feeds.compile import AgencyList, Timed, compile_lists, read_plain, to_wire
from feeds.entry import Entry
from feeds.formats import FORMATS
from feeds.formats import plain as plain_format
from feeds.guard import Change, Protected, quarantine_reason
from feeds.lists import SourceList, diff, from_wire
from feeds.snapshot import ALLOW

NOW = 1_750_000_000.0


def w(name: str) -> bytes:
    return to_wire(name.encode())


def agency(id_: str, precedence: int = 0, action: str = "nxdomain", **kw: object) -> AgencySettings:
    return AgencySettings(id=id_, precedence=precedence, action=action, **kw)  # type: ignore[arg-type]


def who(snap: object, name: str) -> tuple[str, ...] | None:
    m = snap.match(w(name))  # type: ignore[attr-defined]
    return None if m is None else m.rule.agencies


def test_format_names_in_config_match_the_registry() -> None:
    assert set(typing.get_args(FormatName)) == set(FORMATS)


def test_dates_decide_and_next_change_is_the_nearest() -> None:
    a = agency("a")
    timed = [
        Timed(w("future.test"), start=NOW + 100),
        Timed(w("past.test"), start=NOW - 100),
        Timed(w("ending.test"), end=NOW + 50),
        Timed(w("ended.test"), end=NOW),  # removal at exactly now: no longer blocks
        Timed(w("window.test"), start=NOW - 10, end=NOW + 10),
    ]
    c = compile_lists([AgencyList(a, [], timed)], [], 300, now=NOW)
    assert [who(c.snapshot, n) for n in ("future.test", "past.test", "ending.test", "ended.test", "window.test")] == [
        None, ("a",), ("a",), None, ("a",),
    ]
    assert c.next_change == NOW + 10
    later = compile_lists([AgencyList(a, [], timed)], [], 300, now=NOW + 100)
    assert who(later.snapshot, "future.test") == ("a",) and later.next_change is None


def test_per_entry_actions_share_rules_by_winner() -> None:
    pl = agency("pl", 30, "redirect", redirect_ipv4=["145.237.235.240"])
    rpz = agency("rpz", 10)
    entries = [
        Entry("nx.test", 1, action="nxdomain"),
        Entry("nodata.test", 2, action="nodata"),
        Entry("addr.test", 3, action="redirect", redirect=("192.0.2.7", "2001:db8::7")),
        Entry("host.test", 4, action="redirect", redirect=("warning.example",)),  # a CNAME target
        Entry("also.test", 5, action="nodata"),
    ]
    c = compile_lists(
        [AgencyList(rpz, [w("plain.test")], [Timed.of(e) for e in entries]), AgencyList(pl, [w("also.test")])], [], 60, now=NOW
    )
    s = c.snapshot

    def rule(name: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        m = s.match(w(name))
        assert m is not None
        return m.rule.action, m.rule.ipv4, m.rule.ipv6

    assert rule("nx.test") == ("nxdomain", (), ())
    assert rule("nodata.test") == ("nodata", (), ())
    assert rule("addr.test") == ("redirect", ("192.0.2.7",), ("2001:db8::7",))
    assert rule("host.test") == ("nxdomain", (), ())  # the agency's own action
    assert rule("plain.test") == ("nxdomain", (), ())
    # pl wins "also.test" by precedence: rpz's per-entry action is not the winner's.
    assert rule("also.test") == ("redirect", ("145.237.235.240",), ())
    assert s.match(w("plain.test")).rule is s.match(w("host.test")).rule  # type: ignore[union-attr]


def test_an_agency_exception_lifts_only_its_own_listings() -> None:
    a, b = agency("a", 20), agency("b", 10)
    c = compile_lists(
        [
            AgencyList(a, [w("casino.test"), w("deep.help.casino.test"), w("solo.test")], [Timed(w("help.casino.test"), allow=True), Timed(w("solo.test"), allow=True)]),
            AgencyList(b, [w("casino.test")]),
        ],
        [],
        300,
        now=NOW,
    ).snapshot
    assert who(c, "www.casino.test") == ("a", "b")
    assert who(c, "x.help.casino.test") == ("b",)  # a's exception; b still blocks via the parent
    assert who(c, "deep.help.casino.test") == ("b",)  # a's own deeper listing is lifted too
    assert who(c, "solo.test") is None  # a listed and excepted it; nobody else lists it
    only_a = compile_lists([AgencyList(a, [w("casino.test")], [Timed(w("help.casino.test"), allow=True)])], [], 300, now=NOW).snapshot
    assert who(only_a, "x.help.casino.test") is None and only_a.table[w("help.casino.test")] == ALLOW
    assert who(only_a, "casino.test") == ("a",)


def test_several_sources_of_one_agency_are_one_agency() -> None:
    a = agency("a", 5)
    s = compile_lists([AgencyList(a, [w("x.test")]), AgencyList(a, [w("x.test"), w("y.test")])], [], 300, now=NOW).snapshot
    assert who(s, "x.test") == ("a",) and who(s, "y.test") == ("a",) and len(s.rules) == 2


def test_protected_matching() -> None:
    p, bad = Protected.parse(["google.com", "# comment", "drive.usercontent.example.org", "cloudfront.net", "", "bad name"])
    assert [(line, reason) for line, _t, reason in bad] == [(6, "invalid character ' '")]
    assert p.refuses("d111111abcdef8.cloudfront.net") == "cloudfront.net"  # a public suffix protects all below
    assert p.refuses("google.com") == "google.com"
    assert p.refuses("mail.google.com") == "google.com"
    assert p.refuses("notgoogle.com") is None
    assert p.refuses("usercontent.example.org") == "drive.usercontent.example.org"
    assert p.refuses("example.org") == "drive.usercontent.example.org"
    assert p.refuses("other.example.org") is None
    assert p.refuses_bytes(b"x.google.com") == b"google.com" and p.refuses_bytes(b"x.test") is None


@pytest.mark.parametrize(
    ("before", "after", "added", "removed", "expect"),
    [
        (0, 0, 0, 0, None),  # an empty first list blocks nothing either way
        (0, 500, 500, 0, None),
        (100, 0, 0, 100, "empties"),
        (100, 104, 4, 0, None),  # under the churn floor
        (1000, 1040, 40, 0, None),  # 4 %
        (1000, 1060, 60, 0, "churn"),  # 6 %
        (1000, 940, 0, 60, "churn"),
    ],
)
def test_quarantine_reasons(before: int, after: int, added: int, removed: int, expect: str | None) -> None:
    reason = quarantine_reason(agency("a"), Change(before, after, added, removed, 0))
    assert (reason is None) if expect is None else (expect in (reason or ""))


def test_min_entries_guards_first_lists_too() -> None:
    a = agency("a", min_entries=1000)
    assert "min_entries" in (quarantine_reason(a, Change(0, 3, 3, 0, 0)) or "")
    assert "min_entries" in (quarantine_reason(a, Change(2000, 900, 0, 1100, 0)) or "")


def test_diff_counts_changes_once_and_lists_round_trip() -> None:
    when = datetime(2025, 5, 6, 8, 0, tzinfo=timezone.utc)
    old = SourceList.build([w("a.test"), w("b.test")], [Entry("c.test", 1, legal_ref="X/1")])
    new = SourceList.build([w("a.test"), w("d.test")], [Entry("c.test", 7, legal_ref="X/2"), Entry("b.test", 2, removed_at=when)])
    d = diff(old, new)
    assert (d.n_added, d.n_removed, d.changed) == (1, 0, 2)  # d added; b and c changed
    assert d.summary() == {"added": ["d.test"], "removed": [], "changed": ["b.test", "c.test"]}
    assert diff(new, new).empty
    back = SourceList.loads(new.dumps())
    assert back == new and diff(back, new).empty
    patched = new.patched([Entry("e.test", 0)], [("a.test", False, False), ("b.test", False, False)])
    assert {from_wire(x) for x in patched.plain} == {"d.test", "e.test"} and set(patched.rich) == {("c.test", False, False)}


SAMPLE = b"""# list
Kasyno.Test.
  *.wild.test
https://www.bet.test/path?x=1
b\xc3\xbccher.test
192.0.2.1
co.uk
github.io
localhost
foo bar
xn--bcher-kva.test
a..test
"""


def _reader_view(data: bytes) -> tuple[set[str], set[int]]:
    got = read_plain(data)
    return {from_wire(n) for n in got.names}, {line for line, _t, _r in got.rejects}


def _parser_view(data: bytes) -> tuple[set[str], set[int]]:
    res = plain_format.parse(data)
    return {e.name for e in res.entries}, {r.line for r in res.rejects if r.reason != "duplicate"}


def test_fast_reader_agrees_with_the_plain_format() -> None:
    assert _reader_view(SAMPLE) == _parser_view(SAMPLE)
    names, _ = _reader_view(SAMPLE)
    assert "co.uk" not in names and "github.io" not in names and "wild.test" in names


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet="abcxyz019-._*/:é#\t ", max_size=30), max_size=12))
def test_fast_reader_agrees_on_generated_lines(lines: list[str]) -> None:
    data = "\n".join(lines).encode()
    assert _reader_view(data) == _parser_view(data)


def test_saved_snapshot_round_trips_and_refuses_what_it_should(tmp_path: typing.Any) -> None:
    from feeds import persist

    names = [w(f"n{i}.test") for i in range(persist.SLICE * 2 + 5)]
    snap = compile_lists([AgencyList(agency("a", action="redirect", redirect_ipv4=["192.0.2.1"]), names)], [w("ok.n1.test")], 120, version=42, now=NOW).snapshot
    path = tmp_path / "s.marshal"
    persist.save(path, snap, "fp", NOW + 10)
    back = persist.load(path, "fp", NOW)
    assert back is not None and back.table == snap.table and back.rules == snap.rules and back.version == 42
    assert persist.load(path, "other", NOW) is None  # another configuration
    assert persist.load(path, "fp", NOW + 10) is None  # a date has passed since
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert persist.load(path, "fp", NOW) is None  # truncated
    assert persist.load(tmp_path / "missing", "fp", NOW) is None


UNIVERSE = ["a.test", "x.a.test", "y.x.a.test", "b.test", "c.b.test", "d.test", "e.test", "f.e.test"]


def _meaning(snap: typing.Any) -> dict[str, object]:
    out: dict[str, object] = {}
    for n in UNIVERSE + ["q." + n for n in UNIVERSE]:
        m = snap.match(w(n))
        out[n] = None if m is None else (m.rule.agencies, m.rule.action, m.rule.ipv4, m.listed)
    return out


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.sets(st.sampled_from(UNIVERSE)), min_size=3, max_size=3),
    st.sets(st.sampled_from(UNIVERSE + ["q.a.test"]), max_size=2),
    st.lists(st.tuples(st.integers(0, 2), st.sets(st.sampled_from(UNIVERSE))), min_size=1, max_size=6),
    st.permutations([0, 10, 20]),
)
def test_patching_a_snapshot_equals_compiling_it(
    initial: list[set[str]], allow: set[str], steps: list[tuple[int, set[str]]], prec: list[int]
) -> None:
    ags = [
        agency("a0", prec[0], "nxdomain"),
        agency("a1", prec[1], "redirect", redirect_ipv4=["192.0.2.1"]),
        agency("a2", prec[2], "nodata"),
    ]
    current = [frozenset(w(n) for n in names) for names in initial]
    allow_w = frozenset(w(n) for n in allow)
    snap = compile_lists([AgencyList(a, c) for a, c in zip(ags, current)], allow_w, 300, now=NOW).snapshot
    for i, names in steps:
        new = frozenset(w(n) for n in names)
        dirty = current[i] ^ new
        current[i] = new
        lists = [AgencyList(a, c) for a, c in zip(ags, current)]
        patched = compile_patch(snap, lists, allow_w, dirty)
        full = compile_lists(lists, allow_w, 300, now=NOW).snapshot
        assert _meaning(patched) == _meaning(full)
        assert patched.stats["entries"] == full.stats["entries"]
        snap = patched


def compile_patch(prev: typing.Any, lists: list[AgencyList], allow: frozenset[bytes], dirty: set[bytes]) -> typing.Any:
    from feeds.compile import patch_snapshot

    out = patch_snapshot(prev, lists, allow, dirty, 300, version=prev.version + 1)
    assert out is not None
    return out


def test_patching_declines_what_it_cannot_do_exactly() -> None:
    from feeds.compile import patch_snapshot

    a = agency("a")
    base = compile_lists([AgencyList(a, [w("x.test")])], [], 300, now=NOW).snapshot
    dated = [AgencyList(a, [w("x.test")], [Timed(w("y.test"), end=NOW + 5)])]
    assert patch_snapshot(base, dated, frozenset(), {w("y.test")}, 300, version=2) is None
    excepted = [AgencyList(a, [w("x.test")], [Timed(w("z.test"), allow=True)])]
    assert patch_snapshot(base, excepted, frozenset(), {w("x.test")}, 300, version=2) is None
