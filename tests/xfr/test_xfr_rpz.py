"""The one mapping from snapshot entries to RPZ records, as a table: actions, scopes, pairs
(a name deciding differently for itself and below it), allowlist, per-agency views, and the
difference between two versions that an IXFR step carries."""

from __future__ import annotations

import dns.message
import dns.name
import pytest

from config.settings import AgencySettings
from feeds.compile import to_wire
from feeds.snapshot import ALLOW, PolicySnapshot, Rule, pair
from xfr import rpz

ORIGIN = dns.name.from_text("z.rpz").to_wire()


def _text(records: list[bytes]) -> list[str]:
    out = []
    for rr in records:
        rr = rr[1 : 1 + rr[0]] + ORIGIN + rr[1 + rr[0] :]  # the owner under the zone origin
        wire = b"\0\0\x81\x80\0\0\0\x01\0\0\0\0" + rr  # one answer record
        msg = dns.message.from_wire(wire)
        rrset = msg.answer[0]
        out.append(f"{rrset.name.relativize(dns.name.from_text('z.rpz'))} {rrset.to_text().split(' ', 3)[3]}")
    return sorted(out)


def _snap(table: dict[str, int], rules: list[Rule]) -> PolicySnapshot:
    return PolicySnapshot(1, {to_wire(k.encode()): v for k, v in table.items()}, (None, *rules))


NX = Rule(1, ("a",), "A", "nxdomain")
REDIR = Rule(2, ("a", "b"), "A", "redirect", ("192.0.2.1",), ("2001:db8::1",))
NODATA = Rule(3, ("b",), "B", "nodata")
DROP = Rule(4, ("a",), "A", "drop")
TCP = Rule(5, ("a",), "A", "tcp-only")
REFUSED = Rule(6, ("a",), "A", "refused")
RULES = [NX, REDIR, NODATA, DROP, TCP, REFUSED]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NX.id, ["*.x.test CNAME .", "x.test CNAME ."]),
        (NODATA.id, ["*.x.test CNAME *.", "x.test CNAME *."]),
        (DROP.id, ["*.x.test CNAME rpz-drop.", "x.test CNAME rpz-drop."]),
        (TCP.id, ["*.x.test CNAME rpz-tcp-only.", "x.test CNAME rpz-tcp-only."]),
        (REFUSED.id, ["*.x.test CNAME .", "x.test CNAME ."]),
        (REDIR.id, ["*.x.test A 192.0.2.1", "*.x.test AAAA 2001:db8::1",
                    "x.test A 192.0.2.1", "x.test AAAA 2001:db8::1"]),
        (ALLOW, ["*.x.test CNAME rpz-passthru.", "x.test CNAME rpz-passthru."]),
        (pair(NX.id, ALLOW), ["x.test CNAME ."]),  # exact
        (pair(ALLOW, NX.id), ["*.x.test CNAME ."]),  # below
        (pair(NX.id, NODATA.id), ["*.x.test CNAME *.", "x.test CNAME ."]),
    ],
)
def test_combined_zone_records(value: int, expected: list[str]) -> None:
    view = rpz.combined_view(_snap({"x.test": value}, RULES))
    assert _text(list(rpz.records(view))) == expected


def test_agency_view_answers_as_the_agency_asks() -> None:
    snap = _snap({"both.test": REDIR.id, "a.test": NX.id, "b.test": NODATA.id, "ok.test": ALLOW}, RULES)
    b = AgencySettings(id="b", action="nxdomain")
    got = _text(list(rpz.records(rpz.agency_view(snap, b))))
    # b lists both.test (a won it: b's own action), b.test (its rule), not a.test; allowlist passthru.
    assert got == sorted([
        "both.test CNAME .", "*.both.test CNAME .",
        "b.test CNAME *.", "*.b.test CNAME *.",
        "ok.test CNAME rpz-passthru.", "*.ok.test CNAME rpz-passthru.",
    ])


def test_diff_carries_only_what_changed() -> None:
    old = rpz.combined_view(_snap({"keep.test": NX.id, "gone.test": NX.id, "moved.test": NX.id}, RULES))
    new = rpz.combined_view(_snap({"keep.test": NX.id, "new.test": NX.id, "moved.test": pair(NX.id, ALLOW)}, RULES))
    deleted, added = rpz.diff(old, new)
    assert _text(deleted) == ["*.gone.test CNAME .", "*.moved.test CNAME .",
                              "gone.test CNAME .", "moved.test CNAME ."]
    assert _text(added) == ["*.new.test CNAME .", "moved.test CNAME .", "new.test CNAME ."]


def test_messages_compress_owners_and_parse_back_in_every_message() -> None:
    from xfr.zones import MAX_MESSAGE, messages

    table = {f"n{i}.x.test": (REDIR.id if i % 3 else pair(NX.id, ALLOW)) for i in range(3000)}
    view = rpz.combined_view(_snap(table, RULES))
    recs = list(rpz.records(view))
    question = ORIGIN + b"\x00\xfc\x00\x01"  # AXFR IN
    wires = list(messages(7, ORIGIN, question, recs, None))
    assert len(wires) > 3 and all(len(w) <= MAX_MESSAGE + 64 for w in wires)
    got = []
    for w in wires:
        msg = dns.message.from_wire(w, one_rr_per_rrset=True)
        got += [f"{rr.name.relativize(dns.name.from_text('z.rpz'))} {rr.to_text().split(' ', 3)[3]}" for rr in msg.answer]
    assert sorted(got) == _text(recs)
    # Compressed: well under the bytes of the records written out in full.
    assert sum(len(w) for w in wires) < 0.75 * sum(len(r) - 1 + len(ORIGIN) for r in recs)


def test_diff_when_rule_ids_change_meaning() -> None:
    # A full recompile may number rules differently: the same table value, another answer.
    old = rpz.combined_view(_snap({"a.test": 1, "b.test": 2}, [NX, REDIR]))
    new = rpz.combined_view(_snap({"a.test": 1, "b.test": 2}, [Rule(1, ("a",), "A", "nxdomain"), Rule(2, ("b",), "B", "nodata")]))
    deleted, added = rpz.diff(old, new)
    assert _text(deleted) == ["*.b.test A 192.0.2.1", "*.b.test AAAA 2001:db8::1", "b.test A 192.0.2.1", "b.test AAAA 2001:db8::1"]
    assert _text(added) == ["*.b.test CNAME *.", "b.test CNAME *."]


def test_diff_applied_to_the_old_zone_gives_the_new_one() -> None:
    import random

    rng = random.Random(7)
    values = [NX.id, REDIR.id, NODATA.id, ALLOW, pair(NX.id, ALLOW), pair(ALLOW, NODATA.id)]
    a = {f"n{i}.test": rng.choice(values) for i in range(2000)}
    b = dict(a)
    for i in rng.sample(range(3000), 600):
        if rng.random() < 0.3:
            b.pop(f"n{i}.test", None)
        else:
            b[f"n{i}.test"] = rng.choice(values)
    old, new = rpz.combined_view(_snap(a, RULES)), rpz.combined_view(_snap(b, RULES))
    fast = rpz.diff(old, new)  # (deleted, added)
    full_old, full_new = set(rpz.records(old)), set(rpz.records(new))
    deleted, added = set(fast[0]), set(fast[1])
    # Applied as IXFR applies a step (deletions first), the old zone becomes the new one.
    assert deleted <= full_old and added <= full_new and (full_old - deleted) | added == full_new
    assert len(fast[0]) == len(deleted) and len(fast[1]) == len(added)
