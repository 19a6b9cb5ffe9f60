"""The feeds commands of ``betblock``: ``lookup NAME``, ``token-hash``, ``feeds status``,
``feeds history AGENCY``, ``feeds diff AGENCY VERSION``, ``feeds approve|reject AGENCY VERSION
--reason ...``, ``feeds mode AGENCY enforce|observe --reason ...``, ``feeds audit`` and
``feeds recover``.

Owns their arguments and output. The reports read the feed store (read-only, so they work
beside a running server) and the saved snapshot. Decisions (approve, reject) go through the
admin API of the running node, as does a switch of an agency's mode (``--server``, default the configured ``http.listen``; the admin
token from ``BETBLOCK_ADMIN_TOKEN``, ``--token-file`` or ``http.admin_token``), which applies them
at once and writes the audit row: who (admin, and the operator's login name), when, why.
``feeds recover`` (run with the server stopped) is the one way to replace a store that is
missing, empty or damaged: it sets the file aside and starts an empty store, with an audit row
saying so. Must not import aiohttp or resolver code.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from config.auth import sha256_hex
from config.settings import DEFAULT_CONFIG, ConfigError, Settings, load_settings
from feeds import persist
from feeds.compile import allow_names
from feeds.lookup import explain, render
from feeds.manager import STORE_FILE
from feeds.store import FeedStore, StoreProblem, iso, read_marker, set_aside, write_marker


def token_hash(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``betblock token-hash [TOKEN|-]``: the SHA-256 to put in ``agencies[].token_sha256``.
    Without a token, makes a new random one and prints both."""
    p = argparse.ArgumentParser(prog="betblock token-hash", description="hash an agency push token")
    p.add_argument("token", nargs="?", help="the token ('-' reads it from standard input); omit to make one")
    args = p.parse_args(argv)
    if args.token is None:
        token = secrets.token_urlsafe(32)
        print(f"token:        {token}", file=out)
        print(f"token_sha256: {sha256_hex(token)}", file=out)
        print("Give the token to the agency over a secure channel; put only the hash in the config.", file=out)
        return 0
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    if not token:
        print("betblock token-hash: empty token", file=sys.stderr)
        return 2
    print(sha256_hex(token), file=out)
    return 0


def _settings(path: Path) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"betblock: {exc}", file=sys.stderr)
        return None


def _store(settings: Settings) -> FeedStore | None:
    path = settings.data_dir / STORE_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        store = FeedStore(path, readonly=True)
        problem = store.check()
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem is not None:
        print(f"betblock: the feed store {path} is damaged ({problem}); see 'betblock feeds recover'", file=sys.stderr)
        return None
    return store


def lookup(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``betblock lookup NAME``: why NAME is or is not blocked. Exit 0 when blocked, 1 when
    not, 2 on a usage or config error."""
    p = argparse.ArgumentParser(prog="betblock lookup", description="why is a name blocked (or not)")
    p.add_argument("name")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    settings = _settings(args.config)
    if settings is None:
        return 2
    store = _store(settings)
    now = time.time()
    snapshot = persist.load(settings.data_dir / persist.FILENAME, persist.fingerprint(settings), now)
    try:
        allow = allow_names(settings.policy, settings.resolve_path, {})
    except OSError:
        allow = []
    admin = {row["name"] for row in store.allowlist()} if store is not None else set()
    info = explain(args.name, settings.agencies, store, snapshot=snapshot, allow=allow, admin_allow=admin, now=now)
    if store is None:
        info["note"] = f"no feed store at {settings.data_dir / STORE_FILE}: has the server run?"
    if args.json:
        print(json.dumps(info, indent=2), file=out)
    else:
        print(render(info), file=out)
        if "note" in info:
            print(f"  ({info['note']})", file=out)
    if store is not None:
        store.close()
    return 0 if info.get("blocked") else 1


DECISIONS = ("approve", "reject")
SAMPLE = 20


def feeds(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``betblock feeds status|history AGENCY|diff AGENCY VERSION|approve|reject AGENCY VERSION|audit|recover``."""
    p = argparse.ArgumentParser(prog="betblock feeds", description="feed store reports and quarantine decisions")
    sub = p.add_subparsers(dest="what", required=True)
    for name, helptext in (("status", "every source's version in force and any quarantine"),
                           ("history", "an agency's versions"),
                           ("diff", "what a version adds and removes, and why it was quarantined"),
                           ("approve", "apply a quarantined version (through the running node's admin API)"),
                           ("reject", "refuse a quarantined version for good (through the running node's admin API)"),
                           ("mode", "switch an agency to enforce or observe (through the running node's admin API)"),
                           ("audit", "the audit trail"),
                           ("recover", "set a missing, empty or damaged store aside and start an empty one (server stopped)")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
        sp.add_argument("--json", action="store_true", help="print JSON")
        if name in ("history", "diff", "mode", *DECISIONS):
            sp.add_argument("agency")
        if name in ("diff", *DECISIONS):
            sp.add_argument("version", type=int)
        if name == "mode":
            sp.add_argument("mode", choices=("enforce", "observe"))
        if name in (*DECISIONS, "mode"):
            sp.add_argument("--reason", required=True, help="why (written into the audit trail)")
            sp.add_argument("--server", help="the node's admin API, e.g. http://127.0.0.1:8053 (default: http.listen)")
            sp.add_argument("--token-file", type=Path, help="file holding the admin token (else BETBLOCK_ADMIN_TOKEN or http.admin_token)")
        if name in ("history", "audit", "diff"):
            sp.add_argument("--limit", type=int, default=SAMPLE if name == "diff" else 50)
        if name == "audit":
            sp.add_argument("--agency")
    args = p.parse_args(argv)
    settings = _settings(args.config)
    if settings is None:
        return 2
    if args.what == "recover":
        return recover(settings, out, as_json=args.json)
    if args.what in (*DECISIONS, "mode"):
        return decide(settings, args, out)
    store = _store(settings)
    if store is None:
        print(f"betblock: no feed store at {settings.data_dir / STORE_FILE}", file=sys.stderr)
        return 1
    try:
        if args.what == "status":
            data: Any = _status(settings, store)
        elif args.what == "history":
            data = store.versions(args.agency, args.limit)
        elif args.what == "diff":
            data = _diff(store, args.agency, args.version, args.limit)
            if data is None:
                print(f"betblock: agency {args.agency!r} has no version {args.version}", file=sys.stderr)
                return 1
        else:
            data = store.audit_log(args.agency, args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(data, indent=2, default=str), file=out)
        return 0
    if args.what == "status":
        for row in data:
            q = f"  QUARANTINED v{row['quarantined']['version']}: {row['quarantined']['reason']}" if row["quarantined"] else ""
            err = f"  error: {row['last_error']}" if row["last_error"] else ""
            obs = "  OBSERVE MODE (would block only)" if row["mode"] == "observe" else ""
            print(f"{row['agency']:<12} {row['source']:<40} v{row['version'] or '-':<5} {row['entries'] or 0:>8} entries"
                  f"  ok {row['last_success'] or 'never'}{err}{q}{obs}", file=out)
    elif args.what == "history":
        for v in data:
            print(f"v{v['version']:<5} {v['status']:<11} {v['received']} {v['source']:<30} {v['entries']:>8} "
                  f"+{v['added']} -{v['removed']} ~{v['changed']} rejects {v['rejects']} by {v['actor']}"
                  + (f" ({v['reason']})" if v["reason"] else ""), file=out)
    elif args.what == "diff":
        print(_render_diff(data), file=out)
    else:
        for a in data:
            print(f"{a['time']} {a['actor']:<24} {a['action']:<22} {a['agency'] or '-'} "
                  f"{'v' + str(a['version']) if a['version'] else ''} {json.dumps(a['detail'])}", file=out)
    return 0


def _diff(store: FeedStore, agency: str, version: int, sample: int) -> dict[str, Any] | None:
    """A version's counts, its guardrail findings and a sample of the names it adds and removes."""
    row = store.version(agency, version)
    if row is None:
        return None
    d = store.version_diff(agency, version, max(sample, 0))
    return {
        "agency": agency,
        "version": version,
        "status": row["status"],
        "source": row["source"],
        "received": row["received"],
        "entries": row["entries"],
        "counts": {"added": row["added"], "removed": row["removed"], "changed": row["changed"], "rejects": row["rejects"]},
        # The guard's finding: why the update waits for (or waited for) an admin.
        "findings": [row["reason"]] if row["reason"] else [],
        "decided": {"by": row["decided_by"], "at": row["decided"]} if row.get("decided_by") else None,
        "sample": {k: d.get(k, []) for k in ("added", "removed", "changed")},
        "rejects": d.get("rejects", [])[:sample],
    }


def _render_diff(d: dict[str, Any]) -> str:
    c = d["counts"]
    lines = [
        f"{d['agency']} v{d['version']} ({d['status']}), {d['source']}, received {d['received']}: "
        f"{d['entries']} entries, +{c['added']} -{c['removed']} ~{c['changed']}, {c['rejects']} lines rejected",
    ]
    lines += [f"  guardrail: {f}" for f in d["findings"]] or ["  guardrail: nothing found"]
    if d["decided"]:
        lines.append(f"  decided by {d['decided']['by']} at {d['decided']['at']}")
    for key, total in (("added", c["added"]), ("removed", c["removed"]), ("changed", c["changed"])):
        names = d["sample"][key]
        if names:
            more = f" (and {total - len(names)} more)" if total > len(names) else ""
            lines.append(f"  {key} {total}: {', '.join(names)}{more}")
    for r in d["rejects"]:
        lines.append(f"  rejected line {r['line']}: {r['text']!r}: {r['reason']}")
    return "\n".join(lines)


def _admin_token(settings: Settings, token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip() or None
    env = os.environ.get("BETBLOCK_ADMIN_TOKEN")
    if env:
        return env.strip()
    token = settings.http.admin_token
    return token.get_secret_value() if token is not None else None


def _api_base(settings: Settings, server: str | None) -> str:
    if server:
        return server.rstrip("/")
    host, port = settings.http.address()
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def decide(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """``betblock feeds approve|reject AGENCY VERSION --reason TEXT``: the decision goes to the
    running node's admin API. Exit 0 when it was taken, 1 when the node refused it (not
    quarantined, unknown version), 2 when the node cannot be reached or no token is at hand."""
    try:
        token = _admin_token(settings, args.token_file)
    except OSError as exc:
        print(f"betblock: cannot read the token file: {exc}", file=sys.stderr)
        return 2
    if not token:
        print("betblock: no admin token: set BETBLOCK_ADMIN_TOKEN, pass --token-file, or configure http.admin_token",
              file=sys.stderr)
        return 2
    if any(c.isspace() or not c.isprintable() for c in token):
        print("betblock: the admin token must be one line without spaces (is --token-file the right file?)", file=sys.stderr)
        return 2
    base = _api_base(settings, args.server)
    doc = {"reason": args.reason, "operator": getpass.getuser()}
    agency = urllib.request.quote(args.agency, safe="")
    if args.what == "mode":
        doc["mode"] = args.mode
        target, label = f"{base}/v1/feeds/{agency}/mode", f"{args.what} {args.agency} {args.mode}"
    else:
        target, label = f"{base}/v1/feeds/{agency}/versions/{args.version}/{args.what}", f"{args.what} {args.agency} v{args.version}"
    body = json.dumps(doc).encode()
    req = urllib.request.Request(
        target, data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            result = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except ValueError:
            detail = ""
        print(f"betblock: {label}: {exc.code} {detail or exc.reason}", file=sys.stderr)
        return 1 if exc.code in (404, 409) else 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"betblock: the node's admin API at {base} cannot be reached ({exc}); is 'betblock serve' running?",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    elif args.what == "mode":
        print(f"{args.agency}: {result.get('mode')} (was {result.get('was')}; policy {result.get('policy_version')}; "
              f"reason: {args.reason})", file=out)
    else:
        print(f"{args.agency} v{args.version}: {result.get('status')} (reason: {args.reason})", file=out)
    return 0


def recover(settings: Settings, out: TextIO = sys.stdout, *, as_json: bool = False) -> int:
    """``betblock feeds recover``: when the store is missing, empty or damaged, set it aside
    (``feeds.sqlite.damaged-<time>``) and start an empty store with a new identity; the first
    audit row says what happened. An intact store is left alone. Exit 0 either way."""
    path = settings.data_dir / STORE_FILE
    marker = read_marker(path)
    try:
        store = FeedStore(path, create=False)
        problem = store.check()
        store.close()
        if problem is None:
            print(f"the feed store {path} is intact (store {store.store_id}); nothing to recover", file=out)
            return 0
        problem = f"damaged ({problem})"
    except StoreProblem as exc:
        problem = str(exc)
    aside = set_aside(path, "damaged")
    store = FeedStore(path, create=True)
    report = {
        "store": str(path),
        "problem": problem,
        "set_aside": str(aside) if aside else None,
        "previous_id": marker.get("store_id") if marker else None,
        "new_id": store.store_id,
    }
    try:
        store.audit("cli:feeds recover", "store recovered", ts=time.time(), **report)
        write_marker(store)
    finally:
        store.close()
    if as_json:
        print(json.dumps(report, indent=2), file=out)
        return 0
    print(f"the feed store {path} was {problem}", file=out)
    if aside:
        print(f"set aside as {aside} (with its -wal and -shm, if any)", file=out)
    print(f"started an empty store {store.store_id}; its audit trail starts with this recovery.", file=out)
    print("At the next start the saved snapshot, if intact, answers at once; the lists are then compiled from the "
          "sources: file and URL sources are read again, push agencies must push their lists again.", file=out)
    return 0


def _status(settings: Settings, store: FeedStore) -> list[dict[str, Any]]:
    rows = []
    decided = store.modes()  # an admin's switch wins over the configured mode
    for agency in settings.agencies:
        mode = decided[agency.id]["mode"] if agency.id in decided else agency.mode
        for src in agency.all_sources():
            active = store.active(agency.id, src.key) or {}
            latest = store.latest(agency.id, src.key) or {}
            st = store.source_state(agency.id, src.key)
            rows.append(
                {
                    "agency": agency.id,
                    "mode": mode,
                    "source": src.key,
                    "version": active.get("version"),
                    "entries": active.get("entries"),
                    "last_success": iso(st.get("last_success")),
                    "last_error": st.get("last_error"),
                    "quarantined": latest if latest.get("status") == "quarantined" else None,
                }
            )
    return rows


def check_files(settings: Settings) -> list[str]:
    """Config problems ``check-config`` reports: feed files that do not exist."""
    problems = []
    for agency in settings.agencies:
        for src in agency.sources:
            for key, path in (("path", src.path), ("control_file", src.control_file), ("public_key", src.public_key)):
                if path is not None and not settings.resolve_path(path).is_file():
                    problems.append(f"agencies.{agency.id}.sources.{src.key}.{key}: file {path} not found")
    for path in settings.policy.protected_files:
        if not settings.resolve_path(path).is_file():
            problems.append(f"policy.protected_files: file {path} not found")
    return problems



