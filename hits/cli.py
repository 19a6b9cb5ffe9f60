"""``betblock hits ...``: the hit log from the command line, the same queries as the admin API.

Owns the subcommands list, export, stats, status, verify and purge, their flags and exit codes
(0 ok, 1 a broken chain, 2 bad arguments or configuration, 3 the store cannot be opened). Reads
the store named by the config file. Must not import the resolver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path


from config.settings import DEFAULT_CONFIG, ConfigError, load_settings
from hits.query import FilterError, Filters, csv_header, csv_rows, ndjson_lines, parse_cursor, parse_limit
from hits.service import build_store
from hits.store import DAY_MS, HitStore, StoreError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="betblock hits", description="read, export and verify the hit log")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    sub = p.add_subparsers(dest="cmd", required=True)

    def filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--since", help="from this time (epoch seconds or ISO 8601, UTC)")
        sp.add_argument("--until", help="before this time")
        sp.add_argument("--name", help="this name and its subdomains")
        sp.add_argument("--exact", action="store_true", help="only the name itself, not its subdomains")
        sp.add_argument("--agency", help="hits where this agency's entry matched")
        sp.add_argument("--client", help="a stored client value or client network")
        sp.add_argument("--qtype", help="query type, e.g. A, AAAA, 65")
        sp.add_argument("--action", help="redirect, nxdomain, nodata or refused")

    ls = sub.add_parser("list", help="one page of hits, newest first")
    filters(ls)
    ls.add_argument("--limit", default="50", help="hits per page (max 1000)")
    ls.add_argument("--cursor", help="the 'next' cursor of the previous page")
    ls.add_argument("--json", action="store_true", help="print the page as JSON (with the next cursor)")
    ex = sub.add_parser("export", help="every matching hit as CSV or NDJSON")
    filters(ex)
    ex.add_argument("--format", choices=["csv", "ndjson"], default="csv")
    ex.add_argument("--output", "-o", type=Path, help="file to write (default: standard output)")
    st = sub.add_parser("stats", help="hits per agency per day, top names and networks, new names")
    st.add_argument("--days", type=int, default=30)
    st.add_argument("--top", type=int, default=20)
    sub.add_parser("status", help="store kind, rows, oldest and newest hit, size")
    sub.add_parser("verify", help="check the hash chain; report the first broken link")
    sub.add_parser("purge", help="delete hits past hits.retention_days now")
    return p


def _filter_params(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for key in ("since", "until", "name", "agency", "client", "qtype", "action"):
        v = getattr(args, key, None)
        if v:
            out[key] = v
    if getattr(args, "exact", False):
        out["exact"] = "1"
    return out


async def _run(args: argparse.Namespace, store: HitStore, retention_days: int) -> int:
    out = sys.stdout
    if args.cmd == "list":
        f = Filters.parse(_filter_params(args))
        hits, nxt = await store.page(f, parse_limit(args.limit), parse_cursor(args.cursor))
        if args.json:
            print(json.dumps({"hits": hits, "next": str(nxt) if nxt is not None else None}, indent=1))
            return 0
        for h in hits:
            print(
                f"{h['id']:>10} {h['time']} {h['node']} {h['client'] or '-'} {h['name']} {h['qtype']} "
                f"{h['listed']} {','.join(h['agencies'])} {h['action']} x{h['count']}"
            )
        print(f"next: {nxt}" if nxt is not None else "next: (last page)", file=sys.stderr)
        return 0
    if args.cmd == "export":
        f = Filters.parse(_filter_params(args))
        sink = args.output.open("wb") if args.output else sys.stdout.buffer
        try:
            if args.format == "csv":
                sink.write(csv_header())
            async for hits in store.iterate(f):
                sink.write(csv_rows(hits) if args.format == "csv" else ndjson_lines(hits))
        finally:
            if args.output:
                sink.close()
            else:
                sink.flush()
        return 0
    if args.cmd == "stats":
        print(json.dumps(await store.stats(args.days, args.top), indent=1))
        return 0
    if args.cmd == "status":
        print(json.dumps({"retention_days": retention_days, **(await store.status())}, indent=1))
        return 0
    if args.cmd == "verify":
        verified, broken = await store.verify()
        if broken is None:
            print(f"ok: {verified} batches verified, chain intact", file=out)
            return 0
        where = f"hits {broken.first_hit}..{broken.last_hit}" if broken.first_hit >= 0 else "after the last batch"
        print(f"BROKEN at batch {broken.batch} ({where}): {broken.reason}; {verified} batches before it verified", file=out)
        return 1
    if args.cmd == "purge":
        cutoff = int(store.clock() * 1000) - retention_days * DAY_MS
        print(f"deleted {await store.purge(cutoff)} rows older than {retention_days} days")
        return 0
    raise AssertionError(args.cmd)  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"betblock: {exc}", file=sys.stderr)
        return 2
    store = build_store(settings.hits, settings.data_dir)
    if store is None:
        print("betblock: hits.store is 'none': there is no hit log to read", file=sys.stderr)
        return 2

    async def go() -> int:
        try:
            await store.open()
        except StoreError as exc:
            print(f"betblock: {exc}", file=sys.stderr)
            return 3
        try:
            return await _run(args, store, settings.hits.retention_days)
        except FilterError as exc:
            print(f"betblock: {exc}", file=sys.stderr)
            return 2
        finally:
            await store.close()

    return asyncio.run(go())


