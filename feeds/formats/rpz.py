"""RPZ zone files (draft-vixie-dnsop-dns-rpz) as PL/IT/CZ consumers generate them: QNAME
triggers only (``name``: that name only; ``*.name``: only the names below it), with the
actions ``CNAME .`` (NXDOMAIN), ``CNAME *.`` (NODATA), ``CNAME rpz-passthru.`` (exception),
``CNAME rpz-drop.`` (no answer), ``CNAME rpz-tcp-only.`` (TC=1 over UDP) and ``A``/``AAAA``
local data (redirect to those addresses, several per trigger). Anything else (a CNAME to a
host, other local data types, other triggers) is rejected with a reason: the resolver could
not answer it as Unbound and BIND would.

Owns reading master-file syntax far enough for RPZ: comments, parentheses, quoted strings,
``$ORIGIN``/``$TTL``, owner inheritance, optional TTL and class. ``$INCLUDE`` is refused (a
feed must never make us read local files). The zone apex is found as BIND does: the ``origin``
option (the zone's name in a configuration), else the owner of the SOA record that opens the
zone; ``$ORIGIN`` only changes what relative names are relative to, and the origin starts as
the apex. A file with neither is read with its first ``$ORIGIN`` as the apex when that comes
before every record, else with owners taken as written. Every record of one trigger folds into
one Entry whose line is the trigger's first record. Must not import aiohttp, SQL or resolver
code; dnslib's zone parser is not used because rejects need line numbers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from feeds.entry import Entry, ParseResult
from feeds.formats._common import Collector, decode_lines, gc_paused, has_undecodable
from feeds.normalize import InvalidName, normalize

# A quoted string, a lone quote (an unterminated string), a parenthesis, a comment, a word.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|"|[()]|;.*|(?:\\.|[^\s;()"\\])+')
_TTL = re.compile(r"(?:\d+[smhdw]?)+", re.ASCII | re.IGNORECASE).fullmatch
_CLASSES = frozenset({"IN", "CH", "HS", "CS"})
# Triggers this resolver cannot evaluate: it matches query names only.
_OTHER_TRIGGERS = frozenset({"rpz-ip", "rpz-nsdname", "rpz-nsip", "rpz-client-ip"})
_SPECIAL_TARGETS = {
    ".": "nxdomain",
    "*.": "nodata",
    "rpz-passthru.": "passthru",
    "rpz-drop.": "drop",
    "rpz-tcp-only.": "tcp-only",
}


@dataclass
class _Policy:
    line: int
    text: str
    name: str
    wildcard: bool
    action: str
    redirect: list[str] = field(default_factory=list)


def parse(data: bytes, *, origin: str | None = None) -> ParseResult:
    """Entries with ``action``/``redirect``/``allow`` set per trigger; ``meta["serial"]`` is
    the SOA serial and ``meta["origin"]`` the zone origin used (None if never stated)."""
    with gc_paused():
        return _parse(data, origin)


def _parse(data: bytes, origin: str | None) -> ParseResult:
    lines, _ = decode_lines(data)
    out = Collector()
    zone = _absolute(origin, None) if origin is not None else _apex(lines)
    current = zone
    meta: dict[str, object] = {"serial": None, "origin": zone}
    policies: dict[tuple[str, bool], _Policy] = {}
    owner: str | None = None  # absolute, or relative when no origin is known yet
    seen_record = False

    for number, text, indented, tokens in _records(lines, out):
        if tokens[0].startswith("$"):
            directive = tokens[0].upper()
            if directive == "$ORIGIN" and len(tokens) == 2:
                current = _absolute(tokens[1], current)
                if zone is None and not seen_record:
                    zone = current  # no SOA, no configured origin: the leading $ORIGIN
                    meta["origin"] = zone
            elif directive == "$TTL" and len(tokens) == 2:
                pass
            elif directive == "$INCLUDE":
                out.reject(number, text, "$INCLUDE not supported")
            else:
                out.reject(number, text, f"unsupported directive {tokens[0]}")
            continue
        seen_record = True
        if not indented:
            owner, tokens = _absolute(tokens[0], current), tokens[1:]
        if owner is None:
            out.reject(number, text, "record without an owner name")
            continue
        while tokens and (_TTL(tokens[0]) or tokens[0].upper() in _CLASSES):
            tokens = tokens[1:]
        if not tokens:
            out.reject(number, text, "record without a type")
            continue
        rtype, rdata = tokens[0].upper(), tokens[1:]
        trigger = _trigger(owner, zone)
        if trigger is None:
            out.reject(number, text, "owner outside the zone")
            continue
        if trigger == "":
            if rtype == "SOA":
                if len(rdata) >= 3 and rdata[2].isascii() and rdata[2].isdigit():
                    meta["serial"] = int(rdata[2])
            elif rtype != "NS":
                out.reject(number, text, f"{rtype} record at the zone apex")
            continue
        _record(number, text, trigger, rtype, rdata, current, policies, out)

    for p in policies.values():
        redirect = tuple(p.redirect)
        allow = p.action == "passthru"
        out.keep(Entry(p.name, p.line, p.wildcard, p.action, redirect, allow=allow), p.text)
    return out.result(meta)


def _record(
    number: int,
    text: str,
    trigger: str,
    rtype: str,
    rdata: list[str],
    origin: str | None,
    policies: dict[tuple[str, bool], _Policy],
    out: Collector,
) -> None:
    last = trigger.rsplit(".", 1)[-1]
    if last in _OTHER_TRIGGERS:
        out.reject(number, text, f"unsupported trigger ({last})")
        return
    try:
        name, wildcard = normalize(trigger)
    except InvalidName as exc:
        out.reject(number, text, exc.reason)
        return
    if rtype not in ("CNAME", "A", "AAAA"):
        out.reject(number, text, f"unsupported record type {rtype}")
        return
    if len(rdata) != 1:
        out.reject(number, text, f"{rtype} record needs exactly one value")
        return
    value = rdata[0]
    if rtype == "CNAME":
        target = value.lower()
        action = _SPECIAL_TARGETS.get(target)
        if action is None:
            if target.startswith("rpz-"):
                out.reject(number, text, f"unsupported action {target}")
                return
            if target.startswith("*."):
                out.reject(number, text, "unsupported action (wildcard CNAME rewrite)")
                return
            out.reject(number, text, "unsupported action (CNAME to a host: only ., *., rpz-passthru., rpz-drop., rpz-tcp-only. and A/AAAA)")
            return
        else:
            values = []
    else:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            out.reject(number, text, f"{rtype} record with an invalid address")
            return
        if address.version != (4 if rtype == "A" else 6):
            out.reject(number, text, f"{rtype} record with an IPv{address.version} address")
            return
        action, values = "redirect", [str(address)]

    key = (name, wildcard)
    policy = policies.get(key)
    if policy is None:
        policies[key] = _Policy(number, text, name, wildcard, action, values)
        return
    # More records for a trigger are only an address set: A and AAAA together. A CNAME
    # cannot sit beside other data, so a second policy for one name is a conflict.
    by_address = rtype in ("A", "AAAA")
    if not (by_address and policy.action == "redirect" and _is_address(policy.redirect[0])):
        if policy.action == action and policy.redirect == values:
            out.reject(number, text, "duplicate")
        else:
            out.reject(number, text, f"conflicts with line {policy.line}")
        return
    if values[0] in policy.redirect:
        out.reject(number, text, "duplicate")
        return
    policy.redirect.extend(values)


def _apex(lines: list[str]) -> str | None:
    """The owner of the SOA record when the zone's first record is one (BIND's zone apex when
    no zone name is configured); None otherwise."""
    current: str | None = None
    for _number, _text, indented, tokens in _records(lines, Collector()):
        if tokens[0].startswith("$"):
            if tokens[0].upper() == "$ORIGIN" and len(tokens) == 2:
                current = _absolute(tokens[1], current)
            continue
        if indented:
            return None
        owner, rest = _absolute(tokens[0], current), tokens[1:]
        while rest and (_TTL(rest[0]) or rest[0].upper() in _CLASSES):
            rest = rest[1:]
        return owner if rest and rest[0].upper() == "SOA" and (current is not None or tokens[0].endswith(".")) else None
    return None


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _records(lines: list[str], out: Collector):
    """(line number, shown text, starts indented, tokens) per logical record; joins
    parenthesised continuation lines and drops comments."""
    start = 0
    indented = False
    tokens: list[str] = []
    depth = 0
    for number, line in enumerate(lines, 1):
        if has_undecodable(line):
            out.reject(number, line, "undecodable bytes (not utf-8)")
            continue
        if depth == 0:
            start, indented, tokens = number, line[:1] in (" ", "\t"), []
        unterminated = False
        for token in _TOKEN.findall(line):
            if token[0] == ";":
                break
            if token == '"':
                unterminated = True
                break
            if token == "(":
                depth += 1
            elif token == ")":
                depth -= 1
                if depth < 0:
                    break
            else:
                tokens.append(token)
        if depth < 0:
            out.reject(start, lines[start - 1], "unbalanced parentheses")
            depth = 0
            continue
        if unterminated:
            out.reject(start, lines[start - 1], "unterminated quoted string")
            depth = 0
            continue
        if depth == 0 and tokens:
            yield start, lines[start - 1], indented, tokens
    if depth > 0:
        out.reject(start, lines[start - 1], "unbalanced parentheses")


def _absolute(name: str, origin: str | None) -> str:
    """``name`` made absolute (lower case, no trailing dot, "" for the root); a relative name
    with no known origin stays as written."""
    name = name.lower()
    if name == "@":
        return origin or ""
    if name.endswith("."):
        return name[:-1]
    if origin is None:
        return name
    return f"{name}.{origin}" if origin else name


def _trigger(owner: str, zone: str | None) -> str | None:
    """The trigger name of ``owner`` (absolute) inside ``zone``: "" at the apex, None when the
    owner lies outside the zone."""
    if zone is None:
        return owner
    if owner == zone:
        return ""
    if not zone:
        return owner
    if owner.endswith("." + zone):
        return owner[: -len(zone) - 1]
    return None
