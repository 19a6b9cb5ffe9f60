"""The page's lookup sentence: the blocked and the observe-mode sentence name the winning entry,
its scope and every agency that lists it, with HTML escaped (one helper writes both)."""

from __future__ import annotations

from hits.page import lookup_section


def result(**extra: object) -> dict[str, object]:
    winner = {"listed": "casino.test", "scope": "subtree", "agency": "cz-mf", "action": "nxdomain"}
    return {"name": "www.casino.test", "winner": winner, "also_listed_by": ["pl-<mf>"], "matches": [], **extra}


def test_blocked_names_entry_rule_and_listers() -> None:
    out = lookup_section("www.casino.test", result(blocked=True, resolver={"decided_by": {"rule": "r7"}, "policy_version": 3}), "")
    assert "www.casino.test is blocked" in out
    assert "<code>casino.test</code> (subtree, rule r7), listed by cz-mf, pl-&lt;mf&gt;; answer: nxdomain" in out
    assert "(decided by cz-mf, policy version 3)" in out


def test_observed_names_entry_and_listers_without_rule() -> None:
    out = lookup_section("www.casino.test", result(observed=True, resolver={"decided_by": {"rule": "r7"}}), "")
    assert "www.casino.test would be blocked" in out
    assert "<code>casino.test</code> (subtree), listed by cz-mf, pl-&lt;mf&gt;; enforcing would answer nxdomain." in out
