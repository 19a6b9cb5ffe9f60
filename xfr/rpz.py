"""The RPZ form of a policy snapshot: which records a listed name becomes, and in which zone.

Owns the one mapping from betblock's actions and entry scopes to RPZ records
(draft-vixie-dnsop-dns-rpz, as Unbound, BIND and PowerDNS read it):

- nxdomain -> ``CNAME .``; nodata -> ``CNAME *.``; redirect -> local data (the A and AAAA
  addresses; other types get NODATA, as betblock answers them); allowlist and an agency's own
  exceptions -> ``CNAME rpz-passthru.``; drop -> ``CNAME rpz-drop.``; tcp-only ->
  ``CNAME rpz-tcp-only.``; refused has no RPZ form and is exported as nxdomain (the follower
  still blocks the name);
- scope ``subtree`` (the name and all below it) -> both ``name`` and ``*.name``; ``exact`` ->
  ``name``; ``below`` -> ``*.name``; a name that decides differently for itself and below it
  gets each position's records (see ``View.form``).

Also owns the zone *views* (which snapshot entries a zone holds: all of them for the combined
zone, one agency's for an agency zone) and the records of a view and of the difference between
two views. Records travel as bytes (the owner below the origin, type, class, TTL, rdata; see
``relative``): a zone of a million entries is two million records, and these have a fixed
shape, so they are encoded here in a line each rather than built as dnspython objects (dnspython renders ~36k records/s on
this machine: a minute for one AXFR). dnspython does the rest of the protocol (see xfr.server).

Must not import the resolver, aiohttp or SQL.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from config.settings import AgencySettings
from feeds.snapshot import ALLOW, PolicySnapshot, Rule, split

A, CNAME, AAAA, SOA = 1, 5, 28, 6
IN = 1

# (action, ipv4, ipv6, ttl, scope): what one entry of a zone says, before it becomes records.
Policy = tuple[str, tuple[str, ...], tuple[str, ...], int, str]

_TARGET = {
    "nxdomain": b"\x00",  # CNAME .
    "refused": b"\x00",  # no RPZ form; blocked as nxdomain
    "nodata": b"\x01*\x00",  # CNAME *.
    "passthru": b"\x0crpz-passthru\x00",  # CNAME rpz-passthru.
    "drop": b"\x08rpz-drop\x00",  # CNAME rpz-drop.
    "tcp-only": b"\x0crpz-tcp-only\x00",  # CNAME rpz-tcp-only.
}
_OWNERS = {"subtree": (b"", b"\x01*"), "exact": (b"",), "below": (b"\x01*",)}

# The records of one table name: (owner prefix, record tail) pairs. An owner prefix is the wire
# labels put before the listed name: b"" for the name, b"\x01*" for its subtree; a tail is
# type, class, TTL and rdata in wire form.
Form = tuple[tuple[bytes, bytes], ...]


def _rr_tail(rtype: int, ttl: int, rdata: bytes) -> bytes:
    return struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def rpz_records(policy: Policy) -> Form:
    """The one mapping from an entry (action, addresses, TTL, scope) to its RPZ records."""
    action, ipv4, ipv6, ttl, scope = policy
    if action == "redirect":
        tails = tuple(_rr_tail(A, ttl, ipaddress.IPv4Address(ip).packed) for ip in ipv4) + tuple(
            _rr_tail(AAAA, ttl, ipaddress.IPv6Address(ip).packed) for ip in ipv6
        )
        if not tails:  # a redirect without addresses answers NODATA
            tails = (_rr_tail(CNAME, ttl, _TARGET["nodata"]),)
    else:
        tails = (_rr_tail(CNAME, ttl, _TARGET[action]),)
    return tuple((prefix, tail) for prefix in _OWNERS[scope] for tail in tails)


# What a zone answers for one rule id: (action, ipv4, ipv6, ttl), or None to leave it out.
Answer = tuple[str, tuple[str, ...], tuple[str, ...], int] | None


@dataclass(frozen=True)
class View:
    """The entries of ``snapshot`` one zone holds, and how: ``answer(rule id)``. Table values
    map to their records' ``Form`` through a memo (a snapshot has a handful of values)."""

    snapshot: PolicySnapshot
    answers: dict[int, Answer]
    memo: dict[int, Form | None] = field(default_factory=dict)

    def form(self, value: int) -> Form | None:
        """The records of a table name whose value is ``value`` (None: the zone leaves it out).

        Scope subtree (one rule for the name and below it) gives ``name`` and ``*.name``; a
        name that decides differently for itself and below gives each position its own records,
        and nothing for a position that does not block (as betblock, RPZ resolvers stop at the
        closest encloser, so nothing there is already "not blocked" without shadowing other
        zones the way a passthru would)."""
        try:
            return self.memo[value]
        except KeyError:
            pass
        self_rid, below_rid = split(value)
        if self_rid == below_rid:
            ans = self.answers.get(self_rid)
            form = None if ans is None else _form((*ans, "subtree"))
        else:
            parts: list[tuple[bytes, bytes]] = []
            for rid, scope in ((self_rid, "exact"), (below_rid, "below")):
                ans = self.answers.get(rid) if rid != ALLOW else None
                if ans is not None:
                    parts.extend(_form((*ans, scope)))
            form = _intern(tuple(parts)) if parts else None
        self.memo[value] = form
        return form

    def count(self) -> int:
        form = self.form
        return sum(1 for value in self.snapshot.table.values() if form(value) is not None)


def combined_view(snapshot: PolicySnapshot) -> View:
    """Every entry in force, with the winner's answer; allowlisted names as passthru. Names
    only observing agencies list are left out: a follower would enforce whatever it is sent."""
    answers: dict[int, Answer] = {ALLOW: ("passthru", (), (), _ttl(snapshot))}
    for rule in snapshot.rules:
        if rule is not None and not rule.observe:
            answers[rule.id] = (rule.action, rule.ipv4, rule.ipv6, rule.ttl)
    return View(snapshot, answers)


def agency_view(snapshot: PolicySnapshot, agency: AgencySettings) -> View:
    """The entries ``agency`` lists, answered as it asks (its per-entry action where it won the
    name, its configured action otherwise); allowlisted names as passthru."""
    ttl = _ttl(snapshot)
    answers: dict[int, Answer] = {ALLOW: ("passthru", (), (), ttl)}
    own: Answer = (
        agency.action,
        tuple(str(ip) for ip in agency.redirect_ipv4),
        tuple(str(ip) for ip in agency.redirect_ipv6),
        ttl,
    )
    for rule in snapshot.rules:
        if rule is None:
            continue
        if agency.id not in rule.agencies or agency.id in snapshot.observing:
            # an agency in observe mode serves an empty zone: followers would enforce it
            answers[rule.id] = None
        elif rule.agencies[0] == agency.id:
            answers[rule.id] = (rule.action, rule.ipv4, rule.ipv6, rule.ttl)
        else:
            answers[rule.id] = own
    return View(snapshot, answers)


def _ttl(snapshot: PolicySnapshot) -> int:
    rule: Rule | None = next((r for r in snapshot.rules if r is not None), None)
    return rule.ttl if rule is not None else 300


_forms: dict[object, Form] = {}


def _form(policy: Policy) -> Form:
    # Interned, so that two views compare a name's form by identity in the common case.
    form = _forms.get(policy)
    if form is None:
        form = _forms[policy] = _intern(rpz_records(policy))
    return form


def _intern(form: Form) -> Form:
    return _forms.setdefault(form, form)


def records(view: View) -> Iterator[bytes]:
    """Every record of the zone but its SOA and NS, as relative records (see ``relative``)."""
    form_of = view.form
    for name, value in view.snapshot.table.items():
        form = form_of(value)
        if form is None:
            continue
        stem = name[:-1]
        for prefix, tail in form:
            rel = prefix + stem
            yield bytes((len(rel),)) + rel + tail


def relative(rel: bytes, tail: bytes) -> bytes:
    """A record as this package keeps and sends it: one byte giving the length of the owner's
    labels below the zone origin, those labels (wire form, no terminating root), then type,
    class, TTL and rdata. The transfer code adds the origin, compressed (``xfr.zones``)."""
    return bytes((len(rel),)) + rel + tail


def diff(old: View, new: View) -> tuple[list[bytes], list[bytes]]:
    """(records deleted, records added) from ``old`` to ``new``: what one IXFR step carries."""
    deleted: list[bytes] = []
    added: list[bytes] = []
    old_table, new_table = old.snapshot.table, new.snapshot.table
    old_form, new_form = old.form, new.form
    for name, value in new_table.items():
        was_value = old_table.get(name)
        form = new_form(value)
        was = old_form(was_value) if was_value is not None else None
        if form is was:
            continue
        if was is not None:
            deleted.extend(_name_records(name, was))
        if form is not None:
            added.extend(_name_records(name, form))
    for name, value in old_table.items():
        if name not in new_table:
            was = old_form(value)
            if was is not None:
                deleted.extend(_name_records(name, was))
    return deleted, added


def _name_records(name: bytes, form: Form) -> list[bytes]:
    stem = name[:-1]
    return [bytes((len(prefix) + len(stem),)) + prefix + stem + tail for prefix, tail in form]
