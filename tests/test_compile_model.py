"""The compiled table against a direct reading of the policy (property test).

The reference reads every agency's entries as one RPZ zone and the allowlist as one more,
read first: in each zone the closest listed name at or above the query decides, if its entry
covers the query (the name itself or below it); a subtree exception lifts the agency's own
listings at and below it. Of the agencies that block, those with the closest listed name decide,
the highest precedence first. The compiled snapshot must answer every query the same way.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import AgencySettings
from feeds.compile import AgencyList, Timed, compile_lists, to_wire

NAMES = ["a.test", "b.a.test", "c.b.a.test", "d.a.test", "e.test", "x.e.test", "y.x.e.test"]
QUERIES = NAMES + [f"q.{n}" for n in NAMES] + ["test", "z.test", "p.q.c.b.a.test"]
SCOPES = ("exact", "subtree", "below")

entry = st.tuples(st.sampled_from(NAMES), st.sampled_from(SCOPES), st.sampled_from(("list", "list", "list", "pass", "lift")))


def covers(scope: str, itself: bool) -> bool:
    return scope == "subtree" or (scope == "exact") == itself


def ancestors(name: str) -> list[str]:
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def reference(agencies: list[list[tuple[str, str, str]]], allow: list[tuple[str, str]], q: str) -> tuple[str, ...] | None:
    cands = ancestors(q)
    allow_at = {}
    for name, scope in allow:
        allow_at.setdefault(name, set()).add(scope)
    for c in cands:
        if c in allow_at:
            if any(covers(s, c == q) for s in allow_at[c]):
                return None
            break
    found = []  # (depth rank, agency index)
    for i, entries in enumerate(agencies):
        lifts = [n for n, _s, k in entries if k == "lift"]
        nodes = {n for n, _s, _k in entries}
        closest = next((c for c in cands if c in nodes), None)
        if closest is None:
            continue
        itself = closest == q
        here = [(s, k) for n, s, k in entries if n == closest]
        lifted = any(closest == l or closest.endswith("." + l) for l in lifts)
        blocks = any(k == "list" and covers(s, itself) for s, k in here) and not lifted
        passes = any(k == "pass" and covers(s, itself) for s, k in here)
        if blocks and not passes:
            found.append((cands.index(closest), i))
    if not found:
        return None
    best = min(r for r, _ in found)
    return tuple(f"a{i}" for r, i in sorted(found, key=lambda x: x[1]) if r == best)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(entry, max_size=6), min_size=1, max_size=3),
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(SCOPES)), max_size=2),
)
def test_compiled_table_answers_as_the_zones_do(agencies: list[list[tuple[str, str, str]]], allow: list[tuple[str, str]]) -> None:
    # One entry per (agency, name, kind): a zone holds one policy per name and position.
    agencies = [list({(n, k): (n, s, k) for n, s, k in entries}.values()) for entries in agencies]
    allow = list({n: (n, s) for n, s in allow}.values())
    lists = []
    for i, entries in enumerate(agencies):
        ag = AgencySettings(id=f"a{i}", precedence=10 - i)
        timed = []
        for n, s, k in entries:
            # An RPZ passthru of a whole subtree is two records (name, *.name): two point
            # exceptions; a subtree exception proper (adblock @@) lifts deeper listings too.
            scopes = ("exact", "below") if k == "pass" and s == "subtree" else ("subtree",) if k == "lift" else (s,)
            timed += [Timed(to_wire(n.encode()), allow=k != "list", scope=sc) for sc in scopes]  # type: ignore[arg-type]
        lists.append(AgencyList(ag, [], timed))
    snap = compile_lists(lists, [(to_wire(n.encode()), s) for n, s in allow], 300, now=0).snapshot
    for q in QUERIES:
        m = snap.match(to_wire(q.encode()))
        assert (m.rule.agencies if m else None) == reference(agencies, allow, q), q
