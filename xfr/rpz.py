"""The RPZ form of a policy snapshot: which records a listed name becomes, and in which zone.

Owns the one mapping from betblock's actions and entry scopes to RPZ records
(draft-vixie-dnsop-dns-rpz, as Unbound, BIND and PowerDNS read it):

- nxdomain -> ``CNAME .``; nodata -> ``CNAME *.``; redirect -> local data (the A and AAAA
  addresses; other types get NODATA, as betblock answers them); allowlist and an agency's own
  exceptions -> ``CNAME rpz-passthru.``; refused has no RPZ form and is exported as nxdomain
  (the follower still blocks the name);
- scope ``subtree`` (every entry of today's snapshot: the name and all below it) -> both
  ``name`` and ``*.name``; ``exact`` -> ``name``; ``below`` -> ``*.name``.

Also owns the zone *views* (which snapshot entries a zone holds: all of them for the combined
zone, one agency's for an agency zone) and the records of a view and of the difference between
two views. Records travel as uncompressed wire bytes (owner, type, class, TTL, rdata): a zone of
a million entries is two million records, and these have a fixed shape, so they are encoded
here in a line each rather than built as dnspython objects (dnspython renders ~36k records/s on
this machine: a minute for one AXFR). dnspython does the rest of the protocol (see xfr.server).

Must not import the resolver, aiohttp or SQL.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from config.settings import AgencySettings
from feeds.snapshot import ALLOW, PolicySnapshot, Rule

A, CNAME, AAAA, SOA = 1, 5, 28, 6
IN = 1

# (action, ipv4, ipv6, ttl, scope): what one entry of a zone says, before it becomes records.
Policy = tuple[str, tuple[str, ...], tuple[str, ...], int, str]

_TARGET = {
    "nxdomain": b"\x00",  # CNAME .
    "refused": b"\x00",  # no RPZ form; blocked as nxdomain
    "nodata": b"\x01*\x00",  # CNAME *.
    "passthru": b"\x0crpz-passthru\x00",  # CNAME rpz-passthru.
}


def _rr_tail(rtype: int, ttl: int, rdata: bytes) -> bytes:
    return struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def rpz_records(policy: Policy) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The one mapping: (owner prefixes, record tails) for an entry with ``policy``.

    An owner is the prefix (wire labels) put before the listed name: ``b""`` for the name
    itself, ``b"\\x01*"`` for its subtree. A tail is type, class, TTL and rdata in wire form.
    """
    action, ipv4, ipv6, ttl, scope = policy
    if action == "redirect":
        tails = tuple(_rr_tail(A, ttl, ipaddress.IPv4Address(ip).packed) for ip in ipv4) + tuple(
            _rr_tail(AAAA, ttl, ipaddress.IPv6Address(ip).packed) for ip in ipv6
        )
        if not tails:  # a redirect without addresses answers NODATA
            tails = (_rr_tail(CNAME, ttl, _TARGET["nodata"]),)
    else:
        tails = (_rr_tail(CNAME, ttl, _TARGET[action]),)
    owners = {"subtree": (b"", b"\x01*"), "exact": (b"",), "below": (b"\x01*",)}[scope]
    return owners, tails


@dataclass(frozen=True)
class View:
    """The entries of ``snapshot`` one zone holds: ``forms[rule id]`` is their records' shape
    (owner prefixes and tails) or None when the zone leaves that rule's names out."""

    snapshot: PolicySnapshot
    forms: dict[int, tuple[tuple[bytes, ...], tuple[bytes, ...]] | None]

    def count(self) -> int:
        forms = self.forms
        return sum(1 for rid in self.snapshot.table.values() if forms.get(rid) is not None)


def combined_view(snapshot: PolicySnapshot) -> View:
    """Every entry in force, with the winner's answer; allowlisted names as passthru."""
    forms: dict[int, tuple[tuple[bytes, ...], tuple[bytes, ...]] | None] = {ALLOW: _form(_passthru(snapshot))}
    for rule in snapshot.rules:
        if rule is not None:
            forms[rule.id] = _form(_policy(rule.action, rule.ipv4, rule.ipv6, rule.ttl))
    return View(snapshot, forms)


def agency_view(snapshot: PolicySnapshot, agency: AgencySettings) -> View:
    """The entries ``agency`` lists, answered as it asks (its per-entry action where it won the
    name, its configured action otherwise); allowlisted names as passthru."""
    forms: dict[int, tuple[tuple[bytes, ...], tuple[bytes, ...]] | None] = {ALLOW: _form(_passthru(snapshot))}
    own = _policy(
        agency.action,
        tuple(str(ip) for ip in agency.redirect_ipv4),
        tuple(str(ip) for ip in agency.redirect_ipv6),
        _ttl(snapshot),
    )
    for rule in snapshot.rules:
        if rule is None:
            continue
        if agency.id not in rule.agencies:
            forms[rule.id] = None
        elif rule.agencies[0] == agency.id:
            forms[rule.id] = _form(_policy(rule.action, rule.ipv4, rule.ipv6, rule.ttl))
        else:
            forms[rule.id] = _form(own)
    return View(snapshot, forms)


def _policy(action: str, ipv4: tuple[str, ...], ipv6: tuple[str, ...], ttl: int) -> Policy:
    # Every entry of today's snapshot blocks the name and its subtree.
    return (action, ipv4, ipv6, ttl, "subtree")


def _ttl(snapshot: PolicySnapshot) -> int:
    rule: Rule | None = next((r for r in snapshot.rules if r is not None), None)
    return rule.ttl if rule is not None else 300


def _passthru(snapshot: PolicySnapshot) -> Policy:
    return _policy("passthru", (), (), _ttl(snapshot))


_forms: dict[Policy, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}


def _form(policy: Policy) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    # Interned, so that two views compare a name's form by identity in the common case.
    form = _forms.get(policy)
    if form is None:
        form = _forms[policy] = rpz_records(policy)
    return form


def records(view: View, origin: bytes) -> Iterator[bytes]:
    """Every record of the zone but its SOA and NS, in wire form under ``origin`` (wire name)."""
    forms = view.forms
    for name, rid in view.snapshot.table.items():
        form = forms.get(rid)
        if form is None:
            continue
        stem = name[:-1] + origin
        owners, tails = form
        for prefix in owners:
            owner = prefix + stem
            for tail in tails:
                yield owner + tail


def diff(old: View, new: View, origin: bytes) -> tuple[list[bytes], list[bytes]]:
    """(records deleted, records added) from ``old`` to ``new``: what one IXFR step carries."""
    deleted: list[bytes] = []
    added: list[bytes] = []
    old_table, new_table = old.snapshot.table, new.snapshot.table
    old_forms, new_forms = old.forms, new.forms
    for name, rid in new_table.items():
        was_rid = old_table.get(name)
        form = new_forms.get(rid)
        was = old_forms.get(was_rid) if was_rid is not None else None
        if form is was:
            continue
        if was is not None:
            deleted.extend(_name_records(name, was, origin))
        if form is not None:
            added.extend(_name_records(name, form, origin))
    for name, rid in old_table.items():
        if name not in new_table:
            was = old_forms.get(rid)
            if was is not None:
                deleted.extend(_name_records(name, was, origin))
    return deleted, added


def _name_records(name: bytes, form: tuple[tuple[bytes, ...], tuple[bytes, ...]], origin: bytes) -> list[bytes]:
    stem = name[:-1] + origin
    owners, tails = form
    return [prefix + stem + tail for prefix in owners for tail in tails]
