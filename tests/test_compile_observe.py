"""Observe mode in the compile: a name only observing agencies list gets an observed rule; an
enforcing agency that blocks a name wins wherever observers also list it (at the name, or by a
listed parent), and the observers are still named; allowlist and exceptions apply as usual."""

from __future__ import annotations

from typing import Any

import pytest

from config.settings import AgencySettings
from feeds.compile import AgencyList, Timed, compile_lists, compile_snapshot, patch_snapshot, to_wire
from feeds.snapshot import PolicySnapshot


def agency(id_: str, precedence: int = 0, mode: str = "enforce", action: str = "nxdomain", **kw: Any) -> AgencySettings:
    return AgencySettings(id=id_, precedence=precedence, mode=mode, action=action, **kw)  # type: ignore[arg-type]


def w(name: str) -> bytes:
    return to_wire(name.encode())


def outcome(snap: PolicySnapshot, name: str) -> tuple[tuple[str, ...], str, bool] | None:
    m = snap.match(w(name))
    return None if m is None else (m.rule.agencies, m.rule.action, m.rule.observe)


ENF = agency("enf", 1)
OBS = agency("obs", 99, "observe", "redirect", redirect_ipv4=["192.0.2.9"])  # precedence never beats enforce


def test_config_mode_defaults_to_enforce_and_is_validated() -> None:
    assert AgencySettings(id="a").mode == "enforce"
    with pytest.raises(ValueError, match="mode"):
        AgencySettings(id="a", mode="log-only")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "enf_names, obs_names, query, want",
    [
        # listed only by the observer: observed, with the action enforcing would take
        ([], ["obs.test"], "www.obs.test", (("obs",), "redirect", True)),
        # listed by both at the same name: the enforcing agency wins whatever the precedence
        (["both.test"], ["both.test"], "both.test", (("enf", "obs"), "nxdomain", False)),
        # the observer lists a name below the enforcer's: still enforced (observers never weaken)
        (["casino.test"], ["www.casino.test"], "a.www.casino.test", (("enf", "obs"), "nxdomain", False)),
        (["casino.test"], ["www.casino.test"], "www.casino.test", (("enf", "obs"), "nxdomain", False)),
        # the observer lists the parent: the enforcer's name is enforced, the rest observed
        (["www.casino.test"], ["casino.test"], "www.casino.test", (("enf",), "nxdomain", False)),
        (["www.casino.test"], ["casino.test"], "mail.casino.test", (("obs",), "redirect", True)),
        # nobody lists it
        (["a.test"], ["b.test"], "c.test", None),
    ],
)
def test_enforcing_agency_wins(enf_names, obs_names, query, want) -> None:
    lists = [AgencyList(ENF, [w(n) for n in enf_names]), AgencyList(OBS, [w(n) for n in obs_names])]
    assert outcome(compile_snapshot(lists, [], 300), query) == want


def test_observer_below_an_enforced_exact_name() -> None:
    # The enforcer lists the name only (exact): below it, the observer's listing of the parent
    # decides, observed.
    snap = compile_lists(
        [AgencyList(ENF, [], [Timed(w("www.casino.test"), scope="exact")]), AgencyList(OBS, [w("casino.test")])], [], 300
    ).snapshot
    assert outcome(snap, "www.casino.test") == (("enf",), "nxdomain", False)
    assert outcome(snap, "a.www.casino.test") == (("obs",), "redirect", True)


def test_allowlist_and_exceptions_apply_to_observed_names() -> None:
    lists = [
        AgencyList(OBS, [w("casino.test")], [Timed(w("help.casino.test"), allow=True)]),
        AgencyList(ENF, [w("x.test")]),
    ]
    snap = compile_snapshot(lists, [w("ok.casino.test")], 300)
    assert outcome(snap, "www.casino.test") == (("obs",), "redirect", True)
    assert outcome(snap, "ok.casino.test") is None
    assert outcome(snap, "a.help.casino.test") is None


def test_only_observers_and_one_rule_per_mode() -> None:
    both_obs = [AgencyList(OBS, [w("a.test"), w("b.test")]), AgencyList(agency("obs2", 5, "observe"), [w("b.test")])]
    snap = compile_snapshot(both_obs, [], 300)
    assert outcome(snap, "a.test") == (("obs",), "redirect", True)
    assert outcome(snap, "b.test") == (("obs", "obs2"), "redirect", True)


def test_patch_declines_with_an_observer() -> None:
    lists = [AgencyList(ENF, [w("a.test")]), AgencyList(OBS, [w("www.b.test")])]
    prev = compile_snapshot(lists, [], 300, version=1)
    lists2 = [AgencyList(ENF, [w("a.test"), w("b.test")]), AgencyList(OBS, [w("www.b.test")])]
    # the new enforced b.test must turn the observed www.b.test into an enforced one: only a
    # full compile sees that
    assert patch_snapshot(prev, lists2, [], [w("b.test")], 300, version=2) is None
    assert outcome(compile_snapshot(lists2, [], 300), "www.b.test") == (("enf", "obs"), "nxdomain", False)


def test_observed_names_stay_out_of_rpz_exports() -> None:
    from xfr.rpz import agency_view, combined_view

    snap = compile_snapshot([AgencyList(ENF, [w("a.test"), w("both.test")]), AgencyList(OBS, [w("b.test"), w("both.test")])], [], 300)
    assert snap.observing == ("obs",)
    assert combined_view(snap).count() == 2  # a.test and both.test: enforced
    assert agency_view(snap, ENF).count() == 2
    assert agency_view(snap, OBS).count() == 0  # followers would enforce what they are sent


def test_saved_snapshot_keeps_the_mode(tmp_path) -> None:
    from feeds import persist

    snap = compile_snapshot([AgencyList(ENF, [w("a.test")]), AgencyList(OBS, [w("b.test")])], [], 300, version=7)
    path = tmp_path / "snapshot.marshal"
    persist.save(path, snap, "fp", None)
    back = persist.load(path, "fp", 0.0)
    assert back is not None and back.observing == ("obs",)
    assert outcome(back, "b.test") == (("obs",), "redirect", True)
    assert outcome(back, "a.test") == (("enf",), "nxdomain", False)
