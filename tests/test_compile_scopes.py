"""Match scopes (exact, subtree, below), the closest-encloser rule and allowlist scopes, as a
table of policy -> query -> deciding agency (or None), the way Unbound and BIND read RPZ."""

from __future__ import annotations

import pytest

from config.settings import AgencySettings
from feeds.compile import AgencyList, Timed, compile_lists, to_wire
from feeds.formats import scope_of
from feeds.snapshot import CompiledEntry

NOW = 1_700_000_000.0


def agency(id_: str, precedence: int = 0, action: str = "nxdomain") -> AgencySettings:
    return AgencySettings(id=id_, name=id_.upper(), precedence=precedence, action=action)  # type: ignore[arg-type]


def w(name: str) -> bytes:
    return to_wire(name.encode())


A, B = agency("a", 20), agency("b", 10, "nodata")

# (lists, allow, query, agencies of the deciding rule or None)
CASES = [
    # exact: the name only
    ([AgencyList(A, [w("x.test")], scope="exact")], [], "x.test", ("a",)),
    ([AgencyList(A, [w("x.test")], scope="exact")], [], "www.x.test", None),
    # below: only the names under it
    ([AgencyList(A, [w("x.test")], scope="below")], [], "x.test", None),
    ([AgencyList(A, [w("x.test")], scope="below")], [], "a.b.x.test", ("a",)),
    # subtree: both (today's default)
    ([AgencyList(A, [w("x.test")])], [], "x.test", ("a",)),
    ([AgencyList(A, [w("x.test")])], [], "deep.er.x.test", ("a",)),
    # exact and below of one name from two agencies: each position its own
    ([AgencyList(A, [w("x.test")], scope="exact"), AgencyList(B, [w("x.test")], scope="below")], [], "x.test", ("a",)),
    ([AgencyList(A, [w("x.test")], scope="exact"), AgencyList(B, [w("x.test")], scope="below")], [], "y.x.test", ("b",)),
    # an exact listing under the same agency's subtree listing shields what is below it
    # (closest encloser, as an RPZ "name" record under a "*.parent" wildcard)
    ([AgencyList(A, [w("p.test")]), AgencyList(A, [w("c.p.test")], scope="exact")], [], "c.p.test", ("a",)),
    ([AgencyList(A, [w("p.test")]), AgencyList(A, [w("c.p.test")], scope="exact")], [], "x.c.p.test", None),
    ([AgencyList(A, [w("p.test")]), AgencyList(A, [w("c.p.test")], scope="exact")], [], "x.p.test", ("a",)),
    # ... but not another agency's listing of the parent
    ([AgencyList(B, [w("p.test")]), AgencyList(A, [w("c.p.test")], scope="exact")], [], "x.c.p.test", ("b",)),
    # an RPZ passthru for one name under a blocked parent: that name, and (closest encloser)
    # the names below it, are not blocked by the agency; a subtree exception lifts all of it
    ([AgencyList(A, [w("p.test")], [Timed(w("ok.p.test"), allow=True, scope="exact")])], [], "ok.p.test", None),
    ([AgencyList(A, [w("p.test")], [Timed(w("ok.p.test"), allow=True, scope="exact")])], [], "x.ok.p.test", None),
    ([AgencyList(A, [w("p.test")], [Timed(w("ok.p.test"), allow=True, scope="below")])], [], "ok.p.test", None),
    ([AgencyList(A, [w("p.test")], [Timed(w("ok.p.test"), allow=True, scope="below")])], [], "x.ok.p.test", None),
    ([AgencyList(A, [w("p.test")], [Timed(w("ok.p.test"), allow=True, scope="exact"), Timed(w("ok.p.test"), scope="below")])], [], "x.ok.p.test", ("a",)),
    # the operator's allowlist with scopes
    ([AgencyList(A, [w("p.test")])], [(w("ok.p.test"), "exact")], "ok.p.test", None),
    ([AgencyList(A, [w("p.test")])], [(w("ok.p.test"), "exact")], "x.ok.p.test", ("a",)),
    ([AgencyList(A, [w("p.test")])], [(w("ok.p.test"), "below")], "ok.p.test", ("a",)),
    ([AgencyList(A, [w("p.test")])], [(w("ok.p.test"), "below")], "x.ok.p.test", None),
    ([AgencyList(A, [w("p.test")])], [w("ok.p.test")], "y.x.ok.p.test", None),
    ([AgencyList(A, [w("p.test"), w("x.ok.p.test")])], [(w("ok.p.test"), "exact")], "x.ok.p.test", ("a",)),
    ([AgencyList(A, [w("p.test"), w("x.ok.p.test")])], [w("ok.p.test")], "y.x.ok.p.test", None),
]


@pytest.mark.parametrize(("lists", "allow", "query", "expect"), CASES)
def test_scope_table(lists: list[AgencyList], allow: list, query: str, expect: tuple[str, ...] | None) -> None:
    snap = compile_lists(lists, allow, 300, now=NOW).snapshot
    m = snap.match(w(query))
    assert (m.rule.agencies if m else None) == expect


def test_formats_say_their_scope_and_others_take_the_agency_s() -> None:
    assert scope_of("rpz", False, "subtree") == "exact" and scope_of("rpz", True, "subtree") == "below"
    assert scope_of("hosts", False, "subtree") == "exact"
    assert scope_of("adblock", False, "exact") == "subtree" and scope_of("adblock", True, "exact") == "below"
    assert scope_of("plain", False, "exact") == "exact" and scope_of("plain", False, "subtree") == "subtree"
    assert scope_of("csv", True, "exact") == "subtree"  # "*.name" in a plain list: the name and below


def test_compiled_entries_are_typed() -> None:
    lists = [AgencyList(A, [w("e.test")], scope="exact"), AgencyList(A, [w("s.test")]), AgencyList(A, [w("b.test")], scope="below")]
    snap = compile_lists(lists, [w("ok.s.test")], 300, now=NOW).snapshot
    got = {e.name: e for e in snap.entries()}
    assert got[w("e.test")].scope == "exact" and got[w("s.test")].scope == "subtree" and got[w("b.test")].scope == "below"
    assert got[w("ok.s.test")] == CompiledEntry(w("ok.s.test"), None, None)


def test_rpz_actions_reach_the_rules() -> None:
    timed = [Timed(w("d.test"), action="drop", scope="exact"), Timed(w("t.test"), action="tcp-only", scope="below")]
    snap = compile_lists([AgencyList(A, [], timed)], [], 300, now=NOW).snapshot
    assert snap.match(w("d.test")).rule.action == "drop"  # type: ignore[union-attr]
    assert snap.match(w("x.t.test")).rule.action == "tcp-only"  # type: ignore[union-attr]
    assert snap.match(w("t.test")) is None and snap.match(w("x.d.test")) is None


def test_self_test_asks_below_entries_by_a_name_below_them() -> None:
    from betblock.compliance import active_names
    from feeds.entry import Entry
    from feeds.lists import SourceList

    rpz = SourceList.build([], [Entry("x.test", 1, True, "nxdomain"), Entry("y.test", 2, False, "nxdomain")])
    plain = SourceList.build([w("z.test")], [Entry("v.test", 3, True)])
    names = active_names([rpz, plain], NOW, [("rpz", "subtree"), ("plain", "below")])
    assert names == ["self-test.x.test", "self-test.z.test", "v.test", "y.test"]
