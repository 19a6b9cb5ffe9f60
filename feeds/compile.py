"""Compile agencies' lists and the allowlist into one immutable ``PolicySnapshot``.

Owns the merge: names listed by several agencies get one rule naming all of them (the winner by
precedence first); a rule is shared by every name with the same agencies and the same per-entry
action, so a million names make a handful of rules. Dated entries count only between their
listing and removal dates, and the compile reports when the next such date falls so that the
caller can recompile then. A feed's own exceptions (adblock ``@@``, RPZ ``rpz-passthru.``) lift
that agency's listings at and below the name, never another agency's. Allowlisted names and
everything below them are removed; allowlist entries are kept in the table so that they punch
holes under a blocked parent. Also owns the fast reader for plain one-name-per-line files,
which is what a 1M-name list costs at start-up.

Runs off the event loop (the caller uses a thread). Must not import the resolver or aiohttp.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import AgencySettings, PolicySettings, Settings
from feeds.entry import Entry
from feeds.guard import Protected
from feeds.lists import to_wire
from feeds.normalize import InvalidName, needs_full_check, normalize_detail
from feeds.snapshot import ALLOW, PolicySnapshot, Rule

__all__ = [
    "AgencyList",
    "Compiled",
    "PlainList",
    "Timed",
    "compile_lists",
    "compile_snapshot",
    "patch_snapshot",
    "read_plain",
    "to_wire",
]

# A name that needs no further normalisation: lower-case LDH labels, at least two of them.
# The top-level label starts with a letter, so that an IPv4 literal never takes this path.
_CLEAN = re.compile(rb"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


@dataclass
class PlainList:
    """Names read from a plain list, and the lines that could not be used."""

    names: list[bytes] = field(default_factory=list)  # lower-case wire format
    rejects: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, reason)
    wild: list[tuple[int, int]] = field(default_factory=list)  # (index in names, line) of "*." lines
    lines: int = 0


def read_plain(data: bytes, protected: Protected | None = None) -> PlainList:
    """Parse a plain list: one name per line, ``#`` comments, blank lines ignored.

    Accepts what ``feeds.formats.plain`` accepts (URLs, ``*.`` wildcards, IDN), refuses public
    suffixes and, when given, protected names, but builds wire names directly instead of one
    ``Entry`` per line: a third of the memory for a million-line list. Duplicates are not
    reported (the caller keeps a set).
    """
    out = PlainList()
    clean = _CLEAN.fullmatch
    maybe_public = needs_full_check
    refuses = protected.refuses_bytes if protected else None
    names = out.names
    lineno = 0
    for lineno, raw in enumerate(data.splitlines(), 1):
        line = raw.strip().lower()
        if not line or line[0] == 0x23:  # "#"
            continue
        if b"#" in line:
            line = line[: line.index(b"#")].rstrip()
        wild = False
        if line.startswith(b"*."):
            line = line[2:]
            wild = True
        if line.endswith(b"."):
            line = line[:-1]
        if not (clean(line) and len(line) <= 253 and b"xn--" not in line and not maybe_public(line.decode("ascii"))):
            name, reason, was_wild = _slow_normalise(raw)
            if name is None:
                out.rejects.append((lineno, raw.decode("utf-8", "replace"), reason))
                continue
            line, wild = name, was_wild
        if refuses is not None:
            hit = refuses(line)
            if hit is not None:
                out.rejects.append((lineno, raw.decode("utf-8", "replace"), f"protected name ({hit.decode()})"))
                continue
        if wild:
            out.wild.append((len(names), lineno))
        names.append(to_wire(line))
    out.lines = lineno
    return out


def _slow_normalise(raw: bytes) -> tuple[bytes | None, str, bool]:
    """Names that are not plain lower-case ASCII: URLs, IDN, or a reason to reject."""
    try:
        text = raw.decode("utf-8").split("#", 1)[0]
    except UnicodeDecodeError:
        return None, "undecodable bytes (not utf-8)", False
    try:
        name, wildcard, _had_path = normalize_detail(text)
    except InvalidName as exc:
        return None, exc.reason, False
    return name.encode("ascii"), "", wildcard


@dataclass(frozen=True, slots=True)
class Timed:
    """A listing that is not a bare name: dated, with its own action, or an exception."""

    wire: bytes
    start: float | None = None  # listed_at; before it the entry does not block
    end: float | None = None  # removed_at; from it the entry does not block
    action: str | None = None  # per-entry action (RPZ); None is the agency's
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    allow: bool = False  # the agency's own exception: its listings at and below do not block

    @classmethod
    def of(cls, e: Entry) -> Timed:
        ipv4: list[str] = []
        ipv6: list[str] = []
        action = e.action
        if action == "passthru":
            action = None
        elif action == "redirect":
            for target in e.redirect:
                try:
                    ip = ipaddress.ip_address(target)
                except ValueError:
                    continue
                (ipv4 if ip.version == 4 else ipv6).append(str(ip))
            if not (ipv4 or ipv6):
                # A redirect to a warning *host* (CNAME) cannot be answered from the
                # snapshot; the agency's own configured action applies instead.
                action = None
        return cls(
            wire=to_wire(e.name.encode("ascii")),
            start=e.listed_at.timestamp() if e.listed_at else None,
            end=e.removed_at.timestamp() if e.removed_at else None,
            action=action,
            ipv4=tuple(ipv4),
            ipv6=tuple(ipv6),
            allow=e.allow or e.action == "passthru",
        )


@dataclass(frozen=True)
class AgencyList:
    """Names one agency lists (one source of it: several lists of one agency merge)."""

    agency: AgencySettings
    names: Collection[bytes]  # lower-case wire format; block from now on
    timed: Sequence[Timed] = ()


@dataclass(frozen=True)
class Compiled:
    snapshot: PolicySnapshot
    next_change: float | None  # the next listing or removal date after ``now``; recompile then


def compile_snapshot(
    lists: Iterable[AgencyList],
    allow: Iterable[bytes],
    sinkhole_ttl: int,
    version: int | None = None,
) -> PolicySnapshot:
    """Merge the agencies' names into one table; see the module docstring for the rules."""
    return compile_lists(lists, allow, sinkhole_ttl, version=version).snapshot


def compile_lists(
    lists: Iterable[AgencyList],
    allow: Iterable[bytes],
    sinkhole_ttl: int,
    *,
    version: int | None = None,
    now: float | None = None,
) -> Compiled:
    """The snapshot in force at ``now`` (default: the wall clock) and when it next changes."""
    now = time.time() if now is None else now
    # One bit per agency, the highest precedence first (stable: config order breaks ties).
    ordered = sorted(lists, key=lambda al: -al.agency.precedence)
    bits: dict[str, int] = {}
    agencies: list[AgencySettings] = []
    for al in ordered:
        if al.agency.id not in bits:
            bits[al.agency.id] = len(agencies)
            agencies.append(al.agency)

    masks: dict[bytes, int] = {}
    overrides: dict[bytes, dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}
    exceptions: dict[int, set[bytes]] = {}
    next_change: float | None = None
    for al in ordered:
        bit = bits[al.agency.id]
        flag = 1 << bit
        get = masks.get
        if not masks:
            masks = dict.fromkeys(al.names, flag)
        else:
            for name in al.names:
                masks[name] = get(name, 0) | flag
        for t in al.timed:
            if t.start is not None and t.start > now:
                next_change = t.start if next_change is None else min(next_change, t.start)
                continue
            if t.end is not None:
                if t.end <= now:
                    continue
                next_change = t.end if next_change is None else min(next_change, t.end)
            if t.allow:
                exceptions.setdefault(bit, set()).add(t.wire)
                continue
            masks[t.wire] = masks.get(t.wire, 0) | flag
            if t.action is not None:
                overrides.setdefault(t.wire, {})[bit] = (t.action, t.ipv4, t.ipv6)

    if exceptions:
        _apply_exceptions(masks, exceptions)

    # One rule per distinct (agencies, winner's per-entry action): a handful, however long
    # the lists. A mask of 0 is an agency exception that nobody else overrides: ALLOW.
    rules: list[Rule | None] = [None]
    rule_of: dict[tuple[int, tuple[str, tuple[str, ...], tuple[str, ...]] | None], int] = {}

    def rule_id(mask: int, override: tuple[str, tuple[str, ...], tuple[str, ...]] | None) -> int:
        rid = rule_of.get((mask, override))
        if rid is not None:
            return rid
        if mask == 0:
            rule_of[(mask, override)] = ALLOW
            return ALLOW
        members = [a for bit, a in enumerate(agencies) if mask >> bit & 1]
        winner = members[0]
        if override is None:
            action, ipv4, ipv6 = (
                winner.action,
                tuple(str(ip) for ip in winner.redirect_ipv4),
                tuple(str(ip) for ip in winner.redirect_ipv6),
            )
        else:
            action, ipv4, ipv6 = override
        rule = Rule(
            id=len(rules),
            agencies=tuple(a.id for a in members),
            agency_name=winner.display_name,
            action=action,  # type: ignore[arg-type]
            ipv4=ipv4,
            ipv6=ipv6,
            ttl=sinkhole_ttl,
        )
        rules.append(rule)
        rule_of[(mask, override)] = rule.id
        return rule.id

    plain_rule = {m: rule_id(m, None) for m in set(masks.values())}
    # The mask table becomes the rule table in place: values replaced, no second dict of a
    # million keys (that copy was a third of the peak memory of a compile).
    table = masks
    if overrides:
        for name, m in table.items():
            over = overrides.get(name)
            if over is not None and m:
                winner_bit = (m & -m).bit_length() - 1
                table[name] = rule_id(m, over.get(winner_bit))
            else:
                table[name] = plain_rule[m]
    elif len(plain_rule) == 1:
        # One agency, or every name listed by the same agencies: no per-name lookup needed.
        table = dict.fromkeys(masks, next(iter(plain_rule.values())))
    else:
        for name, m in table.items():
            table[name] = plain_rule[m]
    del masks

    allow_set = set(allow)
    removed = 0
    if allow_set:
        # An allowlisted name unblocks itself and everything below it, whoever listed it.
        for name in list(table):
            off = 0
            while name[off]:
                if name[off:] in allow_set:
                    del table[name]
                    removed += 1
                    break
                off += name[off] + 1
        for name in allow_set:
            table[name] = ALLOW

    exempt = sum(1 for rid in table.values() if rid == ALLOW) if exceptions else len(allow_set)
    snapshot = PolicySnapshot(
        version=version if version is not None else time.time_ns() // 1_000_000,
        table=table,
        rules=tuple(rules),
        stats={
            "entries": len(table) - exempt,
            "allowlisted": len(allow_set),
            "unblocked": removed,
            "rules": len(rules) - 1,
        },
    )
    return Compiled(snapshot, next_change)


def patch_snapshot(
    prev: PolicySnapshot,
    lists: Sequence[AgencyList],
    allow: Collection[bytes],
    dirty: Iterable[bytes],
    sinkhole_ttl: int,
    *,
    version: int,
) -> PolicySnapshot | None:
    """What ``compile_lists`` would give, built from ``prev`` by recomputing only the ``dirty``
    names (those whose listing changed since ``prev``; every other input must be unchanged).

    The shortcut for an update of a few names under a big policy: a dict copy instead of a
    full merge. It answers None, and the caller compiles everything, when it would not be exact:
    an agency has exceptions, or a dirty name is dated or carries its own action.
    """
    ordered = sorted(lists, key=lambda al: -al.agency.precedence)
    agencies: list[AgencySettings] = []
    sets: dict[str, list[Collection[bytes]]] = {}
    for al in ordered:
        if al.agency.id not in sets:
            agencies.append(al.agency)
            sets[al.agency.id] = []
        sets[al.agency.id].append(al.names)
        for t in al.timed:
            if t.allow:
                return None
    dirty = set(dirty)
    if any(t.wire in dirty for al in ordered for t in al.timed):
        return None

    rules = list(prev.rules)
    rule_of: dict[tuple[object, ...], int] = {}
    for r in prev.rules:
        if r is not None:
            rule_of.setdefault((r.agencies, r.action, r.ipv4, r.ipv6, r.ttl), r.id)
    allow_set = allow if isinstance(allow, (set, frozenset)) else set(allow)
    table = dict(prev.table)
    entries = prev.stats.get("entries", 0)
    for name in dirty:
        if table.get(name) == ALLOW:
            continue
        off = 0
        allowed = False
        while name[off]:
            if name[off:] in allow_set:
                allowed = True
                break
            off += name[off] + 1
        if allowed:
            continue
        members = [a for a in agencies if any(name in names for names in sets[a.id])]
        was = name in table
        if not members:
            if was:
                del table[name]
                entries -= 1
            continue
        winner = members[0]
        key = (
            tuple(a.id for a in members),
            winner.action,
            tuple(str(ip) for ip in winner.redirect_ipv4),
            tuple(str(ip) for ip in winner.redirect_ipv6),
            sinkhole_ttl,
        )
        rid = rule_of.get(key)
        if rid is None:
            rule = Rule(
                id=len(rules), agencies=key[0], agency_name=winner.display_name, action=winner.action,
                ipv4=key[2], ipv6=key[3], ttl=sinkhole_ttl,
            )
            rules.append(rule)
            rid = rule_of[key] = rule.id
        table[name] = rid
        if not was:
            entries += 1
    stats = dict(prev.stats)
    stats["entries"] = entries
    stats["rules"] = len(rules) - 1
    return PolicySnapshot(version=version, table=table, rules=tuple(rules), stats=stats)


def _apply_exceptions(masks: dict[bytes, int], exceptions: dict[int, set[bytes]]) -> None:
    """Lift each agency's listings at and below its own exceptions; keep other agencies'."""
    excepting: dict[bytes, int] = {}  # name -> bits of the agencies with an exception there
    for bit, names in exceptions.items():
        for name in names:
            excepting[name] = excepting.get(name, 0) | (1 << bit)
    # Listings at or below an exception lose the excepting agency's bit.
    emptied: list[bytes] = []
    for bit, names in exceptions.items():
        flag = 1 << bit
        for name in [n for n, m in masks.items() if m & flag]:
            off = 0
            while name[off]:
                if name[off:] in names:
                    masks[name] &= ~flag
                    if not masks[name]:
                        emptied.append(name)
                    break
                off += name[off] + 1
    # A name left without agencies, or an exception under a listed parent, gets the parent's
    # agencies minus those excepting on the way up: otherwise its table entry would hide the
    # parent's block from every name below it. With nobody left it is an allow entry (it
    # stops the lookup) when a parent blocks, and nothing otherwise.
    for name in emptied + [n for n in excepting if n not in masks]:
        cleared = 0
        off = 0
        inherited = 0
        while name[off]:
            cleared |= excepting.get(name[off:], 0)
            if off:
                parent = masks.get(name[off:])
                if parent:
                    inherited = parent & ~cleared
                    break
            off += name[off] + 1
        else:
            parent = None
        if parent:
            masks[name] = inherited
        else:
            masks.pop(name, None)


def load_from_settings(settings: Settings, version: int | None = None) -> tuple[PolicySnapshot, dict[str, PlainList]]:
    """Read every agency's plain list files and the allowlist, and compile them (no store, no
    history: what ``betblock`` did before the feeds control plane, kept for tools).

    Returns the snapshot and, per file, what was read (for reject reporting).
    """
    reports: dict[str, PlainList] = {}
    lists: list[AgencyList] = []
    for agency in settings.agencies:
        names: list[bytes] = []
        for path in agency.lists:
            full = settings.resolve_path(path)
            parsed = read_plain(Path(full).read_bytes())
            reports[str(full)] = parsed
            names.extend(parsed.names)
        lists.append(AgencyList(agency, names))
    allow = allow_names(settings.policy, settings, reports)
    return compile_snapshot(lists, allow, settings.policy.sinkhole_ttl, version), reports


def allow_names(policy: PolicySettings, settings: Settings, reports: dict[str, PlainList]) -> list[bytes]:
    """The configured allowlist (inline and files) as wire names; bad lines go to ``reports``."""
    text = "\n".join(policy.allowlist).encode()
    parsed = _read_allow(text)
    if parsed.rejects:
        reports["policy.allowlist"] = parsed
    names = list(parsed.names)
    for path in policy.allowlist_files:
        full = settings.resolve_path(path)
        got = _read_allow(Path(full).read_bytes())
        reports[str(full)] = got
        names.extend(got.names)
    return names


def _read_allow(data: bytes) -> PlainList:
    # An allowlist entry may be anything an operator wants left alone, public suffixes too
    # ("never block anything under gov.pl" is a fine wish): read leniently.
    out = PlainList()
    for lineno, raw in enumerate(data.splitlines(), 1):
        text = raw.split(b"#", 1)[0].strip()
        if not text:
            continue
        line = text.lower().rstrip(b".")
        if line.startswith(b"*."):
            line = line[2:]
        if _CLEAN.fullmatch(line) and len(line) <= 253:
            out.names.append(to_wire(line))
            continue
        name, reason, _wild = _slow_normalise(text)
        if name is None:
            out.rejects.append((lineno, raw.decode("utf-8", "replace"), reason))
        else:
            out.names.append(to_wire(name))
    return out
