"""Why a name is or is not blocked: ``betblock lookup NAME`` and ``GET /v1/lookup/{name}``.

Owns the explanation: every entry of every agency at the name or above it (since when, until
when, under which legal reference, from which source and version), which of them decides by
the compile's rules (the most specific listed name, then the highest precedence), which
exception or allowlist entry overrides them, and, when a snapshot is at hand, what the resolver
answers now. Reads the store and the configuration only; works with the server stopped.

Must not import aiohttp or resolver code.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from config.settings import Settings
from feeds.lists import to_wire
from feeds.normalize import InvalidName, normalize_detail
from feeds.snapshot import PolicySnapshot
from feeds.store import FeedStore, iso


def candidates(name: str) -> list[str]:
    """``a.b.c.test`` -> ``[a.b.c.test, b.c.test, c.test, test]``: the names that can block it."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def explain(
    raw: str,
    settings: Settings,
    store: FeedStore | None,
    *,
    snapshot: PolicySnapshot | None = None,
    allow: Iterable[bytes] = (),
    admin_allow: Iterable[str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The explanation as a JSON-ready dict; ``allow`` is the configured allowlist (wire)."""
    now = time.time() if now is None else now
    text = raw.strip().lower().rstrip(".")
    try:
        name, _wild, _path = normalize_detail(text)
    except InvalidName as exc:
        if exc.reason != "public suffix":
            return {"name": raw, "valid": False, "reason": exc.reason, "blocked": False}
        name = text  # a public suffix: explain it anyway (nothing may list it)
    names = candidates(name)
    configured = {(a.id, s.key) for a in settings.agencies for s in a.all_sources()}
    precedence = {a.id: (a.precedence, -i) for i, a in enumerate(settings.agencies)}
    rows = store.entries_named(names) if store is not None else []

    matches: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for r in rows:
        item = {
            "agency": r["agency"],
            "source": r["source"],
            "listed": r["name"],
            "wildcard": bool(r["wildcard"]),
            "exception": bool(r["allow"]),
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
        matches.append(item)

    # The operator's allowlist overrides every agency, at the name or above it.
    allow_set = set(allow)
    allowlisted = [{"name": n, "by": "config"} for n in names if to_wire(n.encode("ascii")) in allow_set]
    allowlisted += [{"name": n, "by": "admin"} for n in names if admin_allow is not None and n in admin_allow]

    # An agency's own exception lifts its listings for this name.
    excepted = {m["agency"] for m in matches if m["state"] == "exception"}
    deciding: list[dict[str, Any]] = []
    for cand in names:  # most specific first
        here = [m for m in matches if m["listed"] == cand and m["state"] == "active" and m["agency"] not in excepted]
        if here:
            here.sort(key=lambda m: precedence.get(m["agency"], (0, 0)), reverse=True)
            deciding = here
            break
    decision: dict[str, Any] = {"blocked": bool(deciding) and not allowlisted}
    if deciding:
        win = deciding[0]
        agency = next(a for a in settings.agencies if a.id == win["agency"])
        decision["winner"] = {
            "agency": agency.id,
            "name": agency.display_name,
            "listed": win["listed"],
            "action": agency.action,
            "redirect": [str(ip) for ip in (*agency.redirect_ipv4, *agency.redirect_ipv6)],
            "precedence": agency.precedence,
        }
        decision["also_listed_by"] = [m["agency"] for m in deciding[1:]]
        if allowlisted:
            decision["overridden_by"] = allowlisted[0]
    for m in matches:
        if m["agency"] in excepted and m["state"] == "active":
            m["state"] = "lifted by the agency's exception"
    out: dict[str, Any] = {
        "name": name,
        "valid": True,
        **decision,
        "matches": matches,
        "allowlisted": allowlisted,
        "history": history[-20:],
    }
    if snapshot is not None:
        m = snapshot.match(to_wire(name.encode("ascii")))
        out["resolver"] = {
            "policy_version": snapshot.version,
            "blocked": m is not None,
            "agencies": list(m.rule.agencies) if m else [],
            "action": m.rule.action if m else None,
        }
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
        lines.append(f"{name}: BLOCKED by {w['name']} ({w['agency']}, precedence {w['precedence']}): {how}")
        lines.append(f"  because {w['listed']} is listed" + (f"; also listed by {', '.join(info['also_listed_by'])}" if info["also_listed_by"] else ""))
    elif info.get("winner"):
        o = info["overridden_by"]
        lines.append(f"{name}: not blocked: allowlisted ({o['name']}, {o['by']}) over {info['winner']['agency']}'s listing")
    else:
        lines.append(f"{name}: not blocked: no agency lists it or a parent")
    for m in info["matches"]:
        extra = [f"since {m['since']}"]
        if m["listed_at"]:
            extra.append(f"listed {m['listed_at']}")
        if m["removed_at"]:
            extra.append(f"removal {m['removed_at']}")
        if m["legal_ref"]:
            extra.append(f"ref {m['legal_ref']}")
        lines.append(f"  - {m['agency']} lists {m['listed']} [{m['state']}] ({', '.join(extra)}; source {m['source']} v{m['version']})")
    for h in info["history"]:
        lines.append(f"  - history: {h['agency']} listed {h['listed']} from {h['since']} to {h['dropped']}")
    if "resolver" in info:
        r = info["resolver"]
        state = f"blocked ({', '.join(r['agencies'])}, {r['action']})" if r["blocked"] else "not blocked"
        lines.append(f"  resolver (policy {r['policy_version']}): {state}")
    return "\n".join(lines)
