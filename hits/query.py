"""Filters over the hit log and the SQL that serves them, shared by both stores.

Owns ``Filters`` (time range, name or suffix, agency, client, type, action), parsing them from
request or command-line parameters with a message naming the bad one (the API, the page and the
CLI parse through ``Filters.parse``, ``parse_limit`` and ``parse_cursor``, so one bad value gets one
message everywhere, checked before any work), keyset pagination (newest
first, the cursor is the last id seen, so pages are stable while hits arrive) and the text form
of a hit (JSON object, CSV row). SQL is written with ``?`` placeholders; the PostgreSQL store
renumbers them. Must not import the resolver.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.errors import BetblockError

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "SVCB": 64, "HTTPS": 65, "ANY": 255}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
# Every action a hit can be recorded with: feeds.snapshot.Action, written again because hits must
# not import feeds (tests/hits/test_hits_rpz_action_filter.py keeps the two alike). drop and
# tcp-only come from RPZ rules (rpz-drop., rpz-tcp-only.).
ACTIONS = ("redirect", "nxdomain", "nodata", "refused", "drop", "tcp-only")
# A hit in observe mode is stored with action "observe:<action>" (feeds.snapshot.Rule.hit_action):
# the filter "observe" takes every would-block hit, "observe:<action>" one kind of them.
OBSERVE = "observe"
FILTER_ACTIONS = (*ACTIONS, OBSERVE, *(f"{OBSERVE}:{a}" for a in ACTIONS))


def action_label(stored: str) -> str:
    """A stored action as people read it: ``would block (<action>)`` for a hit in observe mode."""
    if stored.startswith(OBSERVE + ":"):
        return f"would block ({stored[len(OBSERVE) + 1:]})"
    return stored


def action_matches(wanted: str, stored: str) -> bool:
    """Whether a hit stored with action ``stored`` passes the filter ``action=wanted``."""
    return wanted == stored or (wanted == OBSERVE and stored.startswith(OBSERVE + ":"))
MAX_LIMIT = 1000
DRIVE_MAX = 64  # up to this many dictionary ids, a filter drives the query through its index
INLINE_MAX = 500  # more ids than this are matched through a subquery instead of a list

# Times a filter may name: the years 1 to 9999 (what a datetime holds; nan, inf or 1e300 are not times).
TIME_MIN, TIME_MAX = -62135596800.0, 253402300799.0
INT64_MAX = (1 << 63) - 1  # the stores' integer columns: no cursor can be larger

HIT_FIELDS = ("id", "time", "node", "client", "name", "qtype", "listed", "agency", "agencies", "action", "policy_version", "count")


class FilterError(BetblockError, ValueError):
    """A filter parameter is invalid; the message names it and its value."""


def qtype_text(code: int) -> str:
    return QTYPE_NAMES.get(code) or f"TYPE{code}"


def parse_time(value: str, key: str) -> float:
    """Epoch seconds, or an ISO 8601 date/time (UTC unless it says otherwise), within the years
    1-9999: a finite instant the stores can turn into milliseconds."""
    v = value.strip()
    try:
        t = float(v)
    except ValueError:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(f"{key}: not a time (epoch seconds or ISO 8601): {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
    if not (math.isfinite(t) and TIME_MIN <= t <= TIME_MAX):
        raise FilterError(f"{key}: not a time between the years 1 and 9999: {value!r}")
    return t


def _qtype(raw: str) -> int:
    """A type by mnemonic (``AAAA``), number (``28``) or RFC 3597 form (``TYPE28``), 0-65535."""
    if raw in QTYPES:
        return QTYPES[raw]
    digits = raw[4:] if raw.startswith("TYPE") else raw
    # ASCII only: str.isdigit() also takes digits int() refuses ("²"), and a very long number
    # is refused by int() itself; neither may escape as anything but a FilterError.
    if not (digits.isascii() and digits.isdigit()):
        raise FilterError(f"qtype: unknown type {raw!r}")
    if len(digits) > 5 or int(digits) > 0xFFFF:
        raise FilterError(f"qtype: a type number is 0 to 65535, got {digits[:40]}")
    return int(digits)


_NAME = re.compile(r"^[a-z0-9_*](?:[a-z0-9_.-]*[a-z0-9_])?$")


@dataclass(frozen=True)
class Filters:
    """What a query selects; None means any."""

    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    name: str | None = None  # this name and its subdomains (or only it, with exact)
    exact: bool = False
    agency: str | None = None  # any agency whose entry matched
    client: str | None = None  # a stored client value or client network
    qtype: int | None = None
    action: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Filters:
        """Filters from request or command-line parameters; FilterError names the bad one. Every
        value is checked before any work: a time is a finite instant within the years 1-9999, a
        type fits in 16 bits."""
        out: dict[str, Any] = {}
        for key in ("since", "until"):
            if params.get(key):
                out[key] = parse_time(params[key], key)
        if params.get("name"):
            name = params["name"].strip().lower().rstrip(".")
            if name.startswith("*."):
                name = name[2:]
            if not _NAME.match(name):
                raise FilterError(f"name: not a domain name: {params['name']!r}")
            out["name"] = name
        if params.get("exact"):
            out["exact"] = params["exact"].lower() in ("1", "true", "yes", "on")
        if params.get("agency"):
            out["agency"] = params["agency"].strip()
        if params.get("client"):
            out["client"] = params["client"].strip()
        if params.get("qtype") or params.get("type"):
            raw = (params.get("qtype") or params.get("type") or "").strip().upper()
            out["qtype"] = _qtype(raw)
        if params.get("action"):
            action = params["action"].strip().lower()
            if action not in FILTER_ACTIONS:
                raise FilterError(f"action: one of {', '.join(FILTER_ACTIONS)}, got {action!r}")
            out["action"] = action
        return cls(**out)


def _integer(value: str) -> int | None:
    """``value`` as an integer; None when ``int`` refuses it (not a number, or thousands of digits)."""
    try:
        return int(value)
    except ValueError:
        return None


def parse_limit(value: str | None, default: int = 100) -> int:
    """A page size, 1 to ``MAX_LIMIT``."""
    if not value:
        return default
    n = _integer(value)
    if n is None:
        raise FilterError(f"limit: not a number: {value!r}")
    if not 1 <= n <= MAX_LIMIT:
        raise FilterError(f"limit: between 1 and {MAX_LIMIT}, got {n}")
    return n


def parse_cursor(value: str | None) -> int | None:
    """The ``next`` of a previous page: an id, no larger than a stored id can be."""
    if not value:
        return None
    n = _integer(value)
    if n is None or not 0 <= n <= INT64_MAX:
        raise FilterError(f"cursor: not a cursor from a previous page: {value!r}")
    return n


def name_rev(name: str) -> str:
    """Labels reversed ('www.bet.test' -> 'test.bet.www'): a suffix becomes a prefix, so that
    'bet.test and its subdomains' is one range of an index."""
    return ".".join(reversed(name.split(".")))


@dataclass(frozen=True)
class Resolved:
    """Filters turned into dictionary ids. ``ids`` None means no such filter; an empty tuple
    means nothing can match. ``subquery`` replaces a list too long to inline."""

    column: str
    ids: tuple[int, ...] | None
    subquery: tuple[str, tuple[Any, ...]] | None = None


POSTINGS = {"name": ("name_hits", "n")}  # column -> (table, key column); SQLite's clients: client_blocks (the store)
COLUMNS = "id, ts, client, name, qtype, listed, rule, policy, cnt"


def page_sql(
    resolved: Sequence[Resolved],
    f: Filters,
    id_lo: int | None,
    id_hi: int | None,
    before: int | None,
    limit: int,
    extra: tuple[Sequence[str], Sequence[Any]] = ((), ()),
    postings: bool = False,
) -> tuple[str, list[Any]]:
    """One page of hit rows (ids, newest first), with the dictionary texts joined in.

    The most selective filter with few ids drives the query: one ordered index scan per id,
    each stopped after ``limit`` rows, merged; the other filters are plain predicates. Names
    and clients have indexes; agency sets do not (the store narrows those to id blocks first).
    ``extra`` holds the time predicates (row times are relative to their batch, see the store).
    With ``postings`` a name drives through ``name_hits (n, hid)`` instead of an index on hits, with the id bounds repeated on ``hid``
    so that the scan starts at the cursor."""
    preds: list[str] = []
    params: list[Any] = []
    id_preds: list[str] = []
    id_params: list[Any] = []
    for op, value in ((">=", id_lo), ("<=", id_hi), ("<", before)):
        if value is not None:
            id_preds.append(f"hid {op} ?")
            id_params.append(value)
            preds.append(f"id {op} ?")
            params.append(value)
    preds.extend(extra[0])
    params.extend(extra[1])
    if f.qtype is not None:
        preds.append("qtype = ?")
        params.append(f.qtype)
    drive: Resolved | None = None
    for r in resolved:
        if r.ids is not None and 0 < len(r.ids) <= DRIVE_MAX and drive is None and r.column != "rule":
            drive = r
            continue
        if r.subquery is not None:
            preds.append(f"{r.column} IN ({r.subquery[0]})")
            params.extend(r.subquery[1])
        elif r.ids is not None:
            preds.append(f"{r.column} IN ({', '.join('?' * len(r.ids))})")
            params.extend(r.ids)
    where = " AND ".join(preds) or "1=1"
    hid_where = "".join(f" AND {p}" for p in id_preds)

    def one(column: str) -> str:
        if postings and column in POSTINGS:
            table, key = POSTINGS[column]
            return (f"SELECT {COLUMNS} FROM {table} CROSS JOIN hits ON hits.id = {table}.hid "
                    f"WHERE {table}.{key} = ?{hid_where} AND {where} ORDER BY {table}.hid DESC LIMIT ?")
        return f"SELECT {COLUMNS} FROM hits WHERE {column} = ? AND {where} ORDER BY id DESC LIMIT ?"

    extra_ids = id_params if postings and drive is not None and drive.column in POSTINGS else []
    if drive is None:
        inner = f"SELECT {COLUMNS} FROM hits WHERE {where} ORDER BY id DESC LIMIT ?"
        all_params = params + [limit]
    elif len(drive.ids or ()) == 1:
        inner = one(drive.column)
        all_params = [drive.ids[0]] + extra_ids + params + [limit]  # type: ignore[index]
    else:
        parts = []
        all_params = []
        for i, ident in enumerate(drive.ids or ()):
            parts.append(f"SELECT * FROM ({one(drive.column)}) AS u{i}")
            all_params += [ident] + extra_ids + params + [limit]
        inner = f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS u ORDER BY id DESC LIMIT ?"
        all_params.append(limit)
    sql = (
        # Each row's batch (its base time and node) by one seek per row, as scalar subqueries:
        # as a join, a planner may scan the batches instead.
        "SELECT h.id, h.ts + COALESCE((SELECT b.min_ts FROM batches b WHERE b.first_hit <= h.id ORDER BY b.first_hit DESC LIMIT 1), 0), "
        "(SELECT nd.node FROM nodes nd WHERE nd.id = (SELECT b.node FROM batches b WHERE b.first_hit <= h.id ORDER BY b.first_hit DESC LIMIT 1)), "
        "c.client, n.rev, h.qtype, h.listed, l.rev, r.agencies, r.action, p.version, h.cnt "
        f"FROM ({inner}) AS h "
        "JOIN clients c ON c.id = h.client JOIN names n ON n.id = h.name "
        "LEFT JOIN names l ON l.id = -h.listed JOIN rules r ON r.id = h.rule JOIN policies p ON p.id = h.policy "
        "ORDER BY h.id DESC"
    )
    return sql, all_params


def hit_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A joined row of ``page_sql`` as the API's JSON object."""
    ident, ts, node, client, rev, qtype, offset, listed_rev, agencies, action, version, count = row
    name = name_rev(rev)  # names are stored with their labels reversed
    listed = listed_text(name, offset) if listed_rev is None else name_rev(listed_rev)
    agencies_list = agencies.split(",") if agencies else []
    return {
        "id": ident,
        "time": datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "node": node,
        "client": client,
        "name": name,
        "qtype": qtype_text(qtype),
        "listed": listed,
        "agency": agencies_list[0] if agencies_list else "",
        "agencies": agencies_list,
        "action": action,
        "policy_version": int(version),
        "count": count,
    }


def listed_text(name: str, offset: int) -> str:
    """The matched entry from the queried name's text and the entry's byte offset in its wire
    form (escaped bytes are written \\DDD, four characters for one byte)."""
    if offset <= 0:
        return name
    labels = name.split(".")
    off = 0
    for i, label in enumerate(labels):
        if off == offset:
            return ".".join(labels[i:])
        off += 1 + len(label) - 3 * label.count("\\")
    return name


def ndjson_lines(hits: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(h, separators=(",", ":")).encode() + b"\n" for h in hits)


def csv_header() -> bytes:
    return (",".join(HIT_FIELDS) + "\r\n").encode()


def _cell(v: Any) -> Any:
    # A spreadsheet runs a cell that starts with one of these as a formula; a queried name
    # may start with '-'.
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def csv_rows(hits: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    for h in hits:
        w.writerow([_cell(" ".join(h[k]) if k == "agencies" else h[k]) for k in HIT_FIELDS])
    return buf.getvalue().encode()
