"""Compile agencies' lists and the allowlist into one immutable ``PolicySnapshot``.

Owns the merge: names listed by several agencies get one rule naming all of them (the winner by
precedence first); allowlisted names and everything below them are removed; allowlist entries are
kept in the table so that they punch holes under a blocked parent. Also owns the fast reader for
plain one-name-per-line files, which is what a 1M-name list costs at start-up.

Runs off the event loop (the caller uses a thread). Must not import the resolver or aiohttp.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import AgencySettings, PolicySettings, Settings
from feeds.snapshot import ALLOW, PolicySnapshot, Rule

_LEN = [bytes((i,)) for i in range(256)]
# A name that needs no further normalisation: lower-case LDH labels, at least two of them.
# The top-level label starts with a letter, so that an IPv4 literal never takes this path.
_CLEAN = re.compile(rb"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


@dataclass
class PlainList:
    """Names read from a plain list, and the lines that could not be used."""

    names: list[bytes] = field(default_factory=list)  # lower-case wire format
    rejects: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, reason)


def to_wire(name: bytes) -> bytes:
    return b"".join([_LEN[len(p)] + p for p in name.split(b".")]) + b"\x00"


def read_plain(data: bytes) -> PlainList:
    """Parse a plain list: one name per line, ``#`` comments, blank lines ignored."""
    out = PlainList()
    clean = _CLEAN.fullmatch
    names = out.names
    for lineno, raw in enumerate(data.splitlines(), 1):
        line = raw.strip().lower()
        if not line or line.startswith(b"#"):
            continue
        if line.endswith(b"."):
            line = line.rstrip(b".")
        if line.startswith(b"*."):
            line = line[2:]  # a listed name blocks its subdomains anyway
        if clean(line) and len(line) <= 253:
            names.append(to_wire(line))
            continue
        name, reason = _slow_normalise(line)
        if name is None:
            out.rejects.append((lineno, raw.decode("utf-8", "replace"), reason))
        else:
            names.append(to_wire(name))
    return out


def _slow_normalise(line: bytes) -> tuple[bytes | None, str]:
    """Names that are not plain lower-case ASCII: IDN to A-labels, or a reason to reject."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    try:
        from feeds.normalize import InvalidName, normalize
    except ImportError:  # pragma: no cover - normalize ships with the feeds package
        return None, "invalid name"
    try:
        name, _wildcard = normalize(text)
    except InvalidName as exc:
        return None, str(exc)
    return name.encode("ascii"), ""


@dataclass(frozen=True)
class AgencyList:
    """One agency's settings and the names it lists now."""

    agency: AgencySettings
    names: Sequence[bytes]  # lower-case wire format


def compile_snapshot(
    lists: Iterable[AgencyList],
    allow: Iterable[bytes],
    sinkhole_ttl: int,
    version: int | None = None,
) -> PolicySnapshot:
    """Merge the agencies' names into one table; see the module docstring for the rules."""
    ordered = sorted(lists, key=lambda al: -al.agency.precedence)  # stable: config order breaks ties
    masks: dict[bytes, int] = {}
    for bit, al in enumerate(ordered):
        flag = 1 << bit
        get = masks.get
        for name in al.names:
            masks[name] = get(name, 0) | flag

    # One rule per distinct set of agencies: a handful, however long the lists.
    rule_of_mask: dict[int, int] = {}
    rules: list[Rule | None] = [None]
    for mask in set(masks.values()):
        members = [al.agency for bit, al in enumerate(ordered) if mask >> bit & 1]
        winner = members[0]
        rule = Rule(
            id=len(rules),
            agencies=tuple(a.id for a in members),
            agency_name=winner.display_name,
            action=winner.action,
            ipv4=tuple(str(ip) for ip in winner.redirect_ipv4),
            ipv6=tuple(str(ip) for ip in winner.redirect_ipv6),
            ttl=sinkhole_ttl,
        )
        rule_of_mask[mask] = rule.id
        rules.append(rule)
    table = {name: rule_of_mask[m] for name, m in masks.items()}
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

    return PolicySnapshot(
        version=version if version is not None else time.time_ns() // 1_000_000,
        table=table,
        rules=tuple(rules),
        stats={"entries": len(table) - len(allow_set), "allowlisted": len(allow_set), "unblocked": removed},
    )


def load_from_settings(settings: Settings, version: int | None = None) -> tuple[PolicySnapshot, dict[str, PlainList]]:
    """Read every agency's plain list files and the allowlist, and compile them.

    Returns the snapshot and, per file, what was read (for reject reporting at start-up).
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
    allow = _allow_names(settings.policy, settings, reports)
    return compile_snapshot(lists, allow, settings.policy.sinkhole_ttl, version), reports


def _allow_names(policy: PolicySettings, settings: Settings, reports: dict[str, PlainList]) -> list[bytes]:
    text = "\n".join(policy.allowlist).encode()
    parsed = read_plain(text)
    if parsed.rejects:
        reports["policy.allowlist"] = parsed
    names = list(parsed.names)
    for path in policy.allowlist_files:
        full = settings.resolve_path(path)
        got = read_plain(Path(full).read_bytes())
        reports[str(full)] = got
        names.extend(got.names)
    return names
