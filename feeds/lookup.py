"""Why a name is or is not blocked: the one lookup service behind ``betblock lookup NAME``,
``GET /v1/lookup/{name}`` and the admin page's lookup.

Owns the explanation: every entry of every agency at the name or above it (since when, until
when, under which legal reference, from which source and version, with its match scope), which
of them decides by the compile's rules (per agency its closest listed name, which must cover
the name itself or the names below it; then the most specific, then the highest precedence),
which agencies a closer entry shields, which exception or allowlist entry overrides them, the
mode of each agency (an observing one only "would block", and an enforcing one wins over it), and,
when a snapshot is at hand, the rule the resolver applies now and the table name that decides;
and entries of updates waiting in quarantine. Reads the store and the configuration only; works with the server stopped.

Must not import aiohttp or resolver code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from config.settings import AgencySettings
from feeds.formats import scope_of
from feeds.lists import from_wire, to_wire
from feeds.normalize import InvalidName, normalize_detail
from feeds.snapshot import PolicySnapshot, split
from feeds.store import FeedStore, iso

if TYPE_CHECKING:
    from feeds.policyfiles import PolicyFiles
    from feeds.storegate import StoreGate


class LookupService:
    """``explain`` bound to a running node: its store, the snapshot in force, the configured and
    the admin allowlists. Calling it runs the store reads in a thread."""

    def __init__(
        self,
        agencies: list[AgencySettings],
        gate: StoreGate,
        files: PolicyFiles,
        snapshot: Callable[[], PolicySnapshot | None],
        clock: Callable[[], float],
    ) -> None:
        self.agencies, self.gate, self.clock = agencies, gate, clock
        self.files = files  # the configured allowlist (the admin's is read from the store)
        self.snapshot = snapshot  # the one in force, when there is one

    async def __call__(self, raw: str) -> dict[str, Any]:
        store = self.gate.require()
        admin = {row["name"] for row in await asyncio.to_thread(store.allowlist)}
        return await asyncio.to_thread(
            explain, raw, self.agencies, store,
            snapshot=self.snapshot(), allow=self.files.allow, admin_allow=admin, now=self.clock(),
        )


def covers(scope: str, itself: bool) -> bool:
    """Whether an entry of ``scope`` covers the listed name itself (``itself``) or a name below."""
    return scope == "subtree" or (scope == "exact") == itself


def candidates(name: str) -> list[str]:
    """``a.b.c.test`` -> ``[a.b.c.test, b.c.test, c.test, test]``: the names that can block it."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def explain(
    raw: str,
    agencies: list[AgencySettings],
    store: FeedStore | None,
    *,
    snapshot: PolicySnapshot | None = None,
    allow: Iterable[bytes | tuple[bytes, str]] = (),
    admin_allow: Iterable[str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The explanation as a JSON-ready dict; ``allow`` is the configured allowlist (wire)."""
    # One function on purpose (about 150 lines): it follows compile_lists' rules in the same
    # order (the allowlist zone, then per agency its closest listed name, then precedence) so
    # that the two can be read side by side; the rows it gathers first feed every step.
    now = time.time() if now is None else now
    text = raw.strip().lower().rstrip(".")
    try:
        name, _wild, _path = normalize_detail(text)
    except InvalidName as exc:
        if exc.reason != "public suffix":
            return {"name": raw, "valid": False, "reason": exc.reason, "blocked": False}
        name = text  # a public suffix: explain it anyway (nothing may list it)
    names = candidates(name)
    formats = {(a.id, s.key): s.format for a in agencies for s in a.all_sources()}
    configured = set(formats)
    agency_scope = {a.id: a.scope for a in agencies}
    precedence = {a.id: (a.precedence, -i) for i, a in enumerate(agencies)}
    # The mode each agency is compiled in: the configuration's, unless an admin switched it
    # (feeds.modes; the decision is in the store).
    modes = {a.id: a.mode for a in agencies}
    if store is not None:
        modes.update({a: d["mode"] for a, d in store.modes().items() if a in modes})
    rows = store.entries_named(names) if store is not None else []

    matches: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for r in rows:
        item = {
            "agency": r["agency"],
            "source": r["source"],
            "listed": r["name"],
            "wildcard": bool(r["wildcard"]),
            "scope": scope_of(formats.get((r["agency"], r["source"]), "plain"), bool(r["wildcard"]), agency_scope.get(r["agency"], "subtree")),
            "exception": bool(r["allow"]),
            "action": r["action"],
            "redirect": r["redirect"],
            "legal_ref": r["legal_ref"],
            "source_id": r["source_id"],
            "listed_at": iso(r["listed_at"]),
            "removed_at": iso(r["removed_at"]),
            "since": iso(r["added_at"]),
            "version": r["added_version"],
        }
        if r["dropped_version"] is not None or (r["agency"], r["source"]) not in configured:
            item["dropped"] = iso(r["dropped_at"])
            item["dropped_version"] = r["dropped_version"]
            history.append(item)
            continue
        if r["listed_at"] is not None and r["listed_at"] > now:
            item["state"] = "scheduled"
        elif r["removed_at"] is not None and r["removed_at"] <= now:
            item["state"] = "removed"
        else:
            item["state"] = "exception" if r["allow"] else "active"
        item["precedence"] = precedence.get(r["agency"], (0, 0))[0]
        item["mode"] = modes.get(r["agency"], "enforce")
        matches.append(item)

    # The operator's allowlist is a zone read first: its closest name at or above decides.
    allow_scope: dict[str, str] = {}
    for item in allow:
        wire, scope = (item, "subtree") if isinstance(item, bytes) else item
        allow_scope.setdefault(from_wire(wire), scope)
    for n in admin_allow or ():
        allow_scope.setdefault(n, "subtree")
    allowlisted: list[dict[str, Any]] = []
    for cand in names:
        if cand in allow_scope:
            if covers(allow_scope[cand], cand == name):
                by = "admin" if admin_allow is not None and cand in admin_allow else "config"
                allowlisted.append({"name": cand, "by": by, "scope": allow_scope[cand]})
            break

    # Per agency: a subtree exception lifts its listings at and below it; then the agency's
    # closest listed name decides, when its entry covers this name (else it shields it).
    rank = {cand: i for i, cand in enumerate(names)}  # 0 is the name itself
    deciding_by: dict[str, dict[str, Any]] = {}
    shielded: list[dict[str, Any]] = []
    live = [m for m in matches if m["state"] in ("active", "exception")]
    for agency_id in sorted({m["agency"] for m in live}):
        own = [m for m in live if m["agency"] == agency_id]
        lift_at = max((rank[m["listed"]] for m in own if m["exception"] and m["scope"] == "subtree"), default=-1)
        for m in own:
            if not m["exception"] and rank[m["listed"]] <= lift_at:
                m["state"] = "lifted by the agency's exception"
        closest = min(rank[m["listed"]] for m in own)
        itself = closest == 0
        here = [m for m in own if rank[m["listed"]] == closest]
        passes = any(m["exception"] and covers(m["scope"], itself) for m in here)
        blocking = [m for m in here if m["state"] == "active" and covers(m["scope"], itself)]
        if blocking and not passes:
            deciding_by[agency_id] = blocking[0]
        elif any(m["state"] == "active" and rank[m["listed"]] > closest for m in own):
            shielded.append({"agency": agency_id, "by": names[closest], "scope": here[0]["scope"]})
    # An enforcing agency that blocks the name wins over observing ones, wherever it lists it
    # (the compile's rule: observing never weakens enforcement); the observers are still named.
    enforcing = [m for m in deciding_by.values() if modes.get(m["agency"]) != "observe"]
    observing = [m for m in deciding_by.values() if modes.get(m["agency"]) == "observe"]
    order = lambda m: (rank[m["listed"]], [-x for x in precedence.get(m["agency"], (0, 0))])  # noqa: E731
    deciding: list[dict[str, Any]] = sorted(enforcing or observing, key=order)
    if deciding:
        deciding = [m for m in deciding if m["listed"] == deciding[0]["listed"]]
        if enforcing:
            deciding += sorted(observing, key=order)
    observed = bool(deciding) and not enforcing
    decision: dict[str, Any] = {"blocked": bool(deciding) and not allowlisted and not observed}
    if observed and not allowlisted:
        # observe mode: resolved as if unlisted, every hit recorded as "would block"
        decision["observed"] = True
    if deciding:
        win = deciding[0]
        agency = next(a for a in agencies if a.id == win["agency"])
        per_entry = win["action"] not in (None, "passthru") and not (win["action"] == "redirect" and not win["redirect"])
        decision["winner"] = {
            "agency": agency.id,
            "name": agency.display_name,
            "listed": win["listed"],
            "scope": win["scope"],
            "action": win["action"] if per_entry else agency.action,
            "redirect": (win["redirect"] or "").split(",") if per_entry and win["redirect"] else (
                [] if per_entry else [str(ip) for ip in (*agency.redirect_ipv4, *agency.redirect_ipv6)]
            ),
            "rule": "the entry's own (RPZ)" if per_entry else "the agency's",
            "precedence": agency.precedence,
            "mode": modes.get(agency.id, "enforce"),
        }
        decision["also_listed_by"] = [m["agency"] for m in deciding[1:]]
        if allowlisted:
            decision["overridden_by"] = allowlisted[0]
    if shielded:
        decision["shielded"] = shielded
    out: dict[str, Any] = {
        "name": name,
        "valid": True,
        **decision,
        "matches": matches,
        "allowlisted": allowlisted,
        "history": history[-20:],
        # Entries an admin has not yet approved: they block nothing until then, but "no agency
        # lists it" would hide an update on its way.
        "pending": store.pending_named(names) if store is not None else [],
    }
    if snapshot is not None:
        wire = to_wire(name.encode("ascii"))
        m = snapshot.match(wire)
        resolver: dict[str, Any] = {
            "policy_version": snapshot.version,
            "blocked": m is not None and not m.rule.observe,
            "observed": m is not None and m.rule.observe,  # would block: resolved, hit recorded
            "agencies": list(m.rule.agencies) if m else [],
            "action": m.rule.action if m else None,
        }
        found = snapshot.decider(wire)
        if found is not None:
            listed, off, rid = found
            self_rid, below_rid = split(snapshot.table[listed])
            scope = "subtree" if self_rid == below_rid else "exact" if not below_rid else "below" if not self_rid else "split"
            resolver["decided_by"] = {"listed": from_wire(listed), "position": "below" if off else "itself", "scope": scope, "rule": rid}
            if m is not None:
                resolver["rule"] = {"id": m.rule.id, "ipv4": list(m.rule.ipv4), "ipv6": list(m.rule.ipv6)}
        out["resolver"] = resolver
    return out


def render(info: dict[str, Any]) -> str:
    """The explanation for a terminal."""
    if not info.get("valid", True):
        return f"{info['name']}: not a name that can be listed ({info['reason']})"
    lines = []
    name = info["name"]
    if info["blocked"]:
        w = info["winner"]
        how = w["action"] + (f" to {', '.join(w['redirect'])}" if w["action"] == "redirect" else "")
        lines.append(f"{name}: BLOCKED by {w['name']} ({w['agency']}, precedence {w['precedence']}): {how} ({w['rule']} rule)")
        lines.append(f"  because {w['listed']} is listed ({w['scope']})" + (f"; also listed by {', '.join(info['also_listed_by'])}" if info["also_listed_by"] else ""))
    elif info.get("observed"):
        w = info["winner"]
        how = w["action"] + (f" to {', '.join(w['redirect'])}" if w["action"] == "redirect" else "")
        lines.append(f"{name}: OBSERVED, not blocked: {w['name']} ({w['agency']}) is in observe mode; it would answer {how}. "
                     "The name resolves normally and each query is recorded as a would-block hit")
        lines.append(f"  because {w['listed']} is listed ({w['scope']})" + (f"; also listed by {', '.join(info['also_listed_by'])}" if info["also_listed_by"] else ""))
    elif info.get("winner"):
        o = info["overridden_by"]
        lines.append(f"{name}: not blocked: allowlisted ({o['name']}, {o['by']}) over {info['winner']['agency']}'s listing")
    elif info.get("pending"):
        who = sorted({p["agency"] for p in info["pending"]})
        lines.append(f"{name}: not blocked yet: listed in an update waiting in quarantine ({', '.join(who)})")
    else:
        lines.append(f"{name}: not blocked: no agency lists it or a parent")
    for sh in info.get("shielded", []):
        lines.append(f"  {sh['agency']}'s listing of a parent does not reach it: its closest entry {sh['by']} is {sh['scope']}")
    for m in info["matches"]:
        extra = [f"{m['scope']}", f"since {m['since']}"]
        if m["listed_at"]:
            extra.append(f"listed {m['listed_at']}")
        if m["removed_at"]:
            extra.append(f"removal {m['removed_at']}")
        if m["legal_ref"]:
            extra.append(f"ref {m['legal_ref']}")
        mode = ", observe mode" if m.get("mode") == "observe" else ""
        lines.append(f"  - {m['agency']} lists {m['listed']} [{m['state']}{mode}] ({', '.join(extra)}; source {m['source']} v{m['version']})")
    for p in info.get("pending", []):
        kind = "an exception for" if p["exception"] else "lists"
        lines.append(f"  - pending: {p['agency']} v{p['version']} {kind} {p['listed']} (source {p['source']}, "
                     f"received {p['received']}, quarantined: {p['reason']}; applies once an admin approves it)")
    for h in info["history"]:
        lines.append(f"  - history: {h['agency']} listed {h['listed']} from {h['since']} to {h['dropped']}")
    if "resolver" in info:
        r = info["resolver"]
        state = (f"blocked ({', '.join(r['agencies'])}, {r['action']})" if r["blocked"]
                 else f"observed, would block ({', '.join(r['agencies'])}, {r['action']})" if r.get("observed") else "not blocked")
        d = r.get("decided_by")
        how = f"; decided by {d['listed']} ({d['scope']}, rule {d['rule']} for {d['position']})" if d else ""
        lines.append(f"  resolver (policy {r['policy_version']}): {state}{how}")
    return "\n".join(lines)
