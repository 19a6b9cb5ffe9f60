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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import AgencySettings, PolicySettings
from feeds.entry import Entry
from feeds.formats.plain import scan
from feeds.guard import Protected
from feeds.lists import to_wire
from feeds.normalize import InvalidName, normalize_detail
from feeds.snapshot import ALLOW, SCOPES, PolicySnapshot, Rule, Scope, pair

# An allowlist entry: a wire name (scope subtree) or (wire name, scope).
AllowItem = bytes | tuple[bytes, Scope]

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
    """A plain list as wire names: the lines ``feeds.formats.plain.scan`` accepts (the one
    reading of the format), minus public suffixes and, when given, protected names, without an
    ``Entry`` per line (a third of the memory for a million-line list). Duplicates are not
    reported (the caller keeps a set)."""
    out = PlainList()
    rejects = out.rejects
    names = out.names
    refuses = protected.refuses_bytes if protected else None
    meta: dict[str, object] = {}
    for lineno, name, wild, text in scan(data, lambda n, t, r: rejects.append((n, t, r)), None, meta):
        line = name.encode("ascii")
        if refuses is not None:
            hit = refuses(line)
            if hit is not None:
                rejects.append((lineno, text, f"protected name ({hit.decode()})"))
                continue
        if wild:
            out.wild.append((len(names), lineno))
        names.append(to_wire(line))
    out.lines = meta["lines"]  # type: ignore[assignment]
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
    allow: bool = False  # the agency's own exception (see compile_lists for each scope)
    scope: Scope = "subtree"  # what the entry covers: the name, the names below, or both

    @classmethod
    def of(cls, e: Entry, scope: Scope = "subtree") -> Timed:
        """The compile's view of a rich entry; ``scope`` comes from the entry's format and the
        agency (``feeds.formats.scope_of``)."""
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
            scope=scope,
        )


@dataclass(frozen=True)
class AgencyList:
    """Names one agency lists (one source of it: several lists of one agency merge)."""

    agency: AgencySettings
    names: Collection[bytes]  # lower-case wire format; block from now on
    timed: Sequence[Timed] = ()
    scope: Scope = "subtree"  # what each of ``names`` covers


@dataclass(frozen=True)
class Compiled:
    snapshot: PolicySnapshot
    next_change: float | None  # the next listing or removal date after ``now``; recompile then


def compile_snapshot(
    lists: Iterable[AgencyList],
    allow: Iterable[AllowItem],
    sinkhole_ttl: int,
    version: int | None = None,
) -> PolicySnapshot:
    """Merge the agencies' names into one table; see the module docstring for the rules."""
    return compile_lists(lists, allow, sinkhole_ttl, version=version).snapshot


def compile_lists(
    lists: Iterable[AgencyList],
    allow: Iterable[AllowItem],
    sinkhole_ttl: int,
    *,
    version: int | None = None,
    now: float | None = None,
) -> Compiled:
    """The snapshot in force at ``now`` (default: the wall clock) and when it next changes.

    Every agency's list is read as one RPZ zone: for a query, the agency's closest listed name
    at or above it decides whether that agency blocks (a name listed ``exact`` shields the
    names below it from the agency's listing of a parent, as an RPZ ``name`` record does with a
    ``*.parent`` wildcard). The allowlist is one more such zone, read before every agency. Of
    the agencies that block, the one with the closest listed name decides, then precedence.
    The table holds, per listed name, the outcome for the name itself and for the names below
    it, so the resolver's walk stops at the first table name (``feeds.snapshot``).
    """
    # One function on purpose (about 220 lines): its loops run once per listed name (a million
    # in about half a second, README figures) on dicts bound to locals here, and every phase
    # reads the bit layout, masks and overrides the one before built.
    now = time.time() if now is None else now
    # One bit per agency, the highest precedence first (stable: config order breaks ties), and
    # every enforcing agency before every observing one: a mask's lowest bit is its winner, so
    # where an enforcing agency blocks it wins, and a rule observes only when all its agencies do.
    ordered = sorted(lists, key=_order)
    bits: dict[str, int] = {}
    agencies: list[AgencySettings] = []
    for al in ordered:
        if al.agency.id not in bits:
            bits[al.agency.id] = len(agencies)
            agencies.append(al.agency)
    n = len(agencies)
    low = (1 << n) - 1
    # Bits of the agencies in observe mode (0 when none: then nothing below costs anything).
    observed = sum(1 << bits[a.id] for a in agencies if a.mode == "observe")

    def cover(scope: str, flag: int) -> int:
        # Mask bits of one agency for a scope: bit i blocks the name itself, bit n+i below it.
        if scope == "exact":
            return flag
        if scope == "below":
            return flag << n
        return flag | flag << n

    masks: dict[bytes, int] = {}
    # Agencies with an entry at a name that blocks nothing there (an exception, or a listing an
    # exception lifted): they are "present", so their listings of parents do not reach below.
    present: dict[bytes, int] = {}
    overrides: dict[bytes, dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}
    exceptions: dict[int, set[bytes]] = {}
    point_exceptions: list[tuple[bytes, int, str]] = []
    next_change: float | None = None
    for al in ordered:
        bit = bits[al.agency.id]
        flag = 1 << bit
        pm = cover(al.scope, flag)
        get = masks.get
        if not masks:
            masks = dict.fromkeys(al.names, pm)
        else:
            for name in al.names:
                masks[name] = get(name, 0) | pm
        for t in al.timed:
            if t.start is not None and t.start > now:
                next_change = t.start if next_change is None else min(next_change, t.start)
                continue
            if t.end is not None:
                if t.end <= now:
                    continue
                next_change = t.end if next_change is None else min(next_change, t.end)
            if t.allow:
                if t.scope == "subtree":
                    exceptions.setdefault(bit, set()).add(t.wire)
                else:
                    point_exceptions.append((t.wire, bit, t.scope))
                continue
            tm = cover(t.scope, flag)
            masks[t.wire] = masks.get(t.wire, 0) | tm
            if t.action is not None:
                over = overrides.setdefault(t.wire, {})
                value = (t.action, t.ipv4, t.ipv6)
                if tm & flag:
                    over[bit] = value
                if tm >> n & flag:
                    over[bit + n] = value

    if exceptions:
        _lift(masks, present, exceptions, n)
    for wire, bit, scope in point_exceptions:
        # An RPZ passthru for the name (exact) or the names below it: that position of the
        # agency's own listing there is lifted, and the name is the agency's closest encloser.
        masks[wire] = masks.get(wire, 0) & ~cover(scope, 1 << bit)
        present[wire] = present.get(wire, 0) | 1 << bit

    allow_self: set[bytes] = set()
    allow_below: set[bytes] = set()
    for item in allow:
        wire, scope = (item, "subtree") if isinstance(item, bytes) else item
        if scope != "below":
            allow_self.add(wire)
        if scope != "exact":
            allow_below.add(wire)
    allow_nodes = allow_self | allow_below

    # One rule per distinct (agencies, winner's per-entry action): a handful, however long
    # the lists.
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
            observe=winner.mode == "observe",  # the winner observes only when every member does
        )
        rules.append(rule)
        rule_of[(mask, override)] = rule.id
        return rule.id

    def decide(name: bytes, mask: int, below: bool) -> int:
        """Rule id at one position of ``name`` whose own agencies' bits there are ``mask``."""
        own = None
        if mask:
            over = overrides.get(name)
            if over is not None:
                winner_bit = (mask & -mask).bit_length() - 1
                own = over.get(winner_bit + n if below else winner_bit)
            if not mask & observed or mask & ~observed:
                return rule_id(mask, own)
            # Only observing agencies list this name: an enforcing agency that blocks it by a
            # listed parent still wins (observing never weakens enforcement), so look above.
        # Nobody blocks here by an entry of this name (or only observers do): the agencies
        # without an entry here block by their closest listed parent that blocks what is below.
        found = mask  # observing agencies that block here, closest first
        resolved = (masks.get(name, 0) >> n | masks.get(name, 0)) & low | present.get(name, 0)
        if found:
            resolved |= observed  # from here on only an enforcing agency changes the answer
        off = name[0] + 1
        while name[off] and resolved != low:
            parent = name[off:]
            m = masks.get(parent)
            if m is not None or parent in present:
                m = m or 0
                inherited = m >> n & ~resolved
                if inherited:
                    over = overrides.get(parent)
                    winner_bit = (inherited & -inherited).bit_length() - 1
                    up = over.get(winner_bit + n) if over else None
                    if not inherited & observed or inherited & ~observed:
                        # An enforcing agency blocks: it decides; closer observers are named too.
                        return rule_id(inherited | found, up)
                    if not found:
                        found, own = inherited, up
                    resolved |= observed
                resolved |= (m | m >> n) & low | present.get(parent, 0)
            off += name[off] + 1
        return rule_id(found, own) if found else ALLOW

    for name in present:
        masks.setdefault(name, 0)
    doomed: list[bytes] = []
    table = masks  # the mask table becomes the rule table in place (no second big dict)
    distinct = set(masks.values())
    simple = not (overrides or present or allow_nodes)
    if simple and len(distinct) == 1 and next(iter(distinct)) >> n == next(iter(distinct)) & low:
        # One agency (or the same agencies everywhere), subtree: one rule, no per-name work.
        m = next(iter(distinct))
        table = dict.fromkeys(masks, rule_id(m & low, None))
    else:
        # Names whose outcome depends on more than their own mask are decided first, while
        # the table still holds every mask (their parents' included); then the rest in place.
        decided: dict[bytes, int] = {}
        for name, m in masks.items():
            ok_self = ok_below = False
            if allow_nodes:
                if name in allow_nodes:
                    ok_self, ok_below = name in allow_self, name in allow_below
                else:
                    off = name[0] + 1
                    while name[off]:
                        if name[off:] in allow_nodes:
                            ok_self = ok_below = name[off:] in allow_below
                            break
                        off += name[off] + 1
            if (
                ok_self
                or ok_below
                or not (m & low and m >> n)
                or (overrides and name in overrides)
                # a position only observers list: an enforcing parent may still win there
                or (observed and not (m & low & ~observed and m >> n & ~observed))
            ):
                if ok_self and ok_below and name not in allow_nodes:
                    doomed.append(name)  # an allowlisted parent covers it whole
                    continue
                decided[name] = pair(
                    ALLOW if ok_self else decide(name, m & low, False),
                    ALLOW if ok_below else decide(name, m >> n, True),
                )
        for name in allow_nodes - masks.keys():
            decided[name] = pair(
                ALLOW if name in allow_self else decide(name, 0, False),
                ALLOW if name in allow_below else decide(name, 0, True),
            )
        by_mask: dict[int, int] = {}
        skip = decided.keys() if decided else ()
        for name, m in table.items():
            if name in skip:
                continue
            value = by_mask.get(m)
            if value is None:
                value = by_mask[m] = pair(rule_id(m & low, None), rule_id(m >> n, None)) if m & low and m >> n else 0
            table[name] = value
        for name in doomed:
            del table[name]
        table.update(decided)
    del masks

    snapshot = PolicySnapshot(
        version=version if version is not None else time.time_ns() // 1_000_000,
        table=table,
        rules=tuple(rules),
        stats={
            "entries": sum(1 for v in table.values() if v) if not simple else len(table),
            "allowlisted": len(allow_nodes),
            "unblocked": len(doomed),
            "rules": len(rules) - 1,
        },
        observing=tuple(sorted(a.id for a in agencies if a.mode == "observe")),
    )
    return Compiled(snapshot, next_change)


def patch_snapshot(
    prev: PolicySnapshot,
    lists: Sequence[AgencyList],
    allow: Collection[AllowItem],
    dirty: Iterable[bytes],
    sinkhole_ttl: int,
    *,
    version: int,
) -> PolicySnapshot | None:
    """What ``compile_lists`` would give, built from ``prev`` by recomputing only the ``dirty``
    names (those whose listing changed since ``prev``; every other input must be unchanged).

    The shortcut for an update of a few names under a big policy: a dict copy instead of a
    full merge. It answers None, and the caller compiles everything, when it would not be exact:
    an agency has exceptions, a list or an allowlist entry has a scope other than subtree (a
    name then decides for the names below it by its parents), or a dirty name is dated or
    carries its own action.
    """
    if any(not isinstance(item, bytes) and item[1] != "subtree" for item in allow):
        return None
    if any(al.agency.mode == "observe" for al in lists):
        # An observed name's rule depends on enforcing listings of its parents (and an enforced
        # name decides for observed names below it), which this per-name patch does not read.
        return None
    allow = {item if isinstance(item, bytes) else item[0] for item in allow}
    ordered = sorted(lists, key=_order)
    agencies: list[AgencySettings] = []
    sets: dict[str, list[Collection[bytes]]] = {}
    for al in ordered:
        if al.agency.id not in sets:
            agencies.append(al.agency)
            sets[al.agency.id] = []
        sets[al.agency.id].append(al.names)
        if al.scope != "subtree":
            return None
        for t in al.timed:
            if t.allow or t.scope != "subtree":
                return None
    dirty = set(dirty)
    if any(t.wire in dirty for al in ordered for t in al.timed):
        return None

    rules = list(prev.rules)
    rule_of: dict[tuple[object, ...], int] = {}
    for r in prev.rules:
        if r is not None and not r.observe:
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


def _order(al: AgencyList) -> tuple[bool, int]:
    """Sort key of the merge: enforcing agencies first, then by precedence (stable)."""
    return al.agency.mode == "observe", -al.agency.precedence


def _lift(masks: dict[bytes, int], present: dict[bytes, int], exceptions: dict[int, set[bytes]], n: int) -> None:
    """Subtree exceptions (adblock ``@@``, a feed's exception for a name and everything below
    it) lift the excepting agency's own listings at and below the name, whatever their scope;
    the agency stays present there, so its listings of parents do not reach below either."""
    for bit, names in exceptions.items():
        flag = 1 << bit
        both = flag | flag << n
        for name in [k for k, m in masks.items() if m & both]:
            off = 0
            while name[off]:
                if name[off:] in names:
                    masks[name] &= ~both
                    present[name] = present.get(name, 0) | flag
                    break
                off += name[off] + 1
        for name in names:
            present[name] = present.get(name, 0) | flag


def allow_names(policy: PolicySettings, resolve: Callable[[Path], Path], reports: dict[str, PlainList]) -> list[AllowItem]:
    """The configured allowlist (inline and files): wire names (scope subtree) or (wire name,
    scope); bad lines go to ``reports``."""
    text = "\n".join(policy.allowlist).encode()
    parsed = _read_allow(text)
    if parsed.rejects:
        reports["policy.allowlist"] = parsed
    names: list[AllowItem] = list(parsed.names)
    for path in policy.allowlist_files:
        full = resolve(path)
        got = _read_allow(Path(full).read_bytes())
        reports[str(full)] = got
        names.extend(got.names)
    return names


def _read_allow(data: bytes) -> PlainList:
    # An allowlist entry may be anything an operator wants left alone, public suffixes too
    # ("never block anything under gov.pl" is a fine wish): read leniently. A line is a name
    # and, optionally, its scope (subtree when absent).
    out = PlainList()
    names: list[AllowItem] = out.names  # type: ignore[assignment]
    for lineno, raw in enumerate(data.splitlines(), 1):
        words = raw.split(b"#", 1)[0].split()
        if not words:
            continue
        scope = "subtree"
        if len(words) == 2 and words[1].decode("ascii", "replace") in SCOPES:
            scope = words[1].decode("ascii")
        elif len(words) != 1:
            out.rejects.append((lineno, raw.decode("utf-8", "replace"), "expected a name and optionally exact, subtree or below"))
            continue
        text = words[0]
        line = text.lower().rstrip(b".")
        if line.startswith(b"*."):
            line = line[2:]
        if not (_CLEAN.fullmatch(line) and len(line) <= 253):
            name, reason, _wild = _slow_normalise(text)
            if name is None:
                out.rejects.append((lineno, raw.decode("utf-8", "replace"), reason))
                continue
            line = name
        wire = to_wire(line)
        names.append(wire if scope == "subtree" else (wire, scope))  # type: ignore[arg-type]
    return out
