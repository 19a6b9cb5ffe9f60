"""``betblock hits ...``: the hit log from the command line, the same queries as the admin API.

Owns the subcommands list, export, stats, status, verify, rebuild-index and purge, their flags and exit codes
(0 ok, 1 a broken chain or a damaged store, 2 bad arguments or configuration, 3 the store cannot
be opened: "no such hit log" for a path or schema that holds none, which is never created). Reads
the store named by the config file. Must not import the resolver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path


from config.settings import DEFAULT_CONFIG, ConfigError, load_settings
from hits.query import FILTER_ACTIONS, FilterError, Filters, csv_header, csv_rows, ndjson_lines, parse_cursor, parse_limit
from hits.audit import audit, rebuild
from hits.checkpoint import CheckpointError, CheckpointLog
from hits.service import build_checkpoints, build_store
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
        sp.add_argument("--action", help=", ".join(FILTER_ACTIONS))

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
    vf = sub.add_parser("verify", help="check the hash chain, its checkpoint and the derived tables; report what differs")
    vf.add_argument(
        "--expect", metavar="HEAD/BATCHES",
        help="also check against a head kept elsewhere (the 'hit log checkpoint' log line or betblock_hits_chain_head): "
        "hash prefix/batch count, e.g. 3fa9c2d41b0e77aa/1234",
    )
    sub.add_parser("purge", help="delete hits past hits.retention_days now")
    sub.add_parser(
        "rebuild-index",
        help="write every table derived from the hits (name and client lookups, agency blocks, time bounds, roll-ups) "
        "anew from the chained rows, after verify named differences",
    )
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


def _expect(raw: str | None) -> tuple[str, int] | None:
    if raw is None:
        return None
    head, _, count = raw.partition("/")
    if not count.isdigit() or not head or any(c not in "0123456789abcdefABCDEF" for c in head):
        raise FilterError(f"--expect: HEAD/BATCHES (a hex prefix and a count), got {raw!r}")
    return head, int(count)


async def _verify(args: argparse.Namespace, store: HitStore, checkpoints: CheckpointLog) -> int:
    out = sys.stdout
    expect = _expect(args.expect)
    try:
        mine = [cp for cp in checkpoints.read() if cp.store == store.ident]
    except CheckpointError as exc:
        print(f"BROKEN: {exc}", file=out)
        return 1
    problems = []
    for a, b in zip(mine, mine[1:]):
        if b.head.batches < a.head.batches or b.head.purged < a.head.purged:
            problems.append(f"checkpoint {b.seq} records a shorter chain than checkpoint {a.seq} (the store was cut back or replaced)")
    report = await audit(store, mine[-1] if mine else None, sealed=checkpoints.sealed, expect=expect)
    b = report.broken
    if b is not None:
        where = f"hits {b.first_hit}..{b.last_hit}" if b.first_hit >= 0 else "after the last batch"
        print(f"BROKEN at batch {b.batch} ({where}): {b.reason}; {report.verified} batches before it verified", file=out)
        return 1
    if not mine and report.batches:
        problems.append(f"no checkpoint of this store in {checkpoints.path}: the chain's length and anchor cannot be checked")
    problems += report.problems
    if problems:
        print(f"BROKEN: {report.verified} batches verified, but:", file=out)
        for p in problems:
            print(f"  - {p}", file=out)
        return 1
    anchored = f"; matches checkpoint {mine[-1].seq}" if mine else ""
    print(f"ok: {report.verified} batches verified, chain intact; head {report.head[:16]}/{report.batches}{anchored}; derived tables match", file=out)
    for note in report.notes:
        print(f"  note: {note}", file=out)
    return 0


async def _run(args: argparse.Namespace, store: HitStore, retention_days: int, checkpoints: CheckpointLog) -> int:
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
        return await _verify(args, store, checkpoints)
    if args.cmd == "rebuild-index":
        verified, broken = await store.verify()
        if broken is not None:
            print(f"refused: the chain is broken at batch {broken.batch} ({broken.reason}); the rows are not evidence to rebuild from", file=sys.stderr)
            return 1
        await rebuild(store)
        report = await audit(store)
        if report.problems:
            print("rebuilt, but still:\n" + "\n".join(f"  - {p}" for p in report.problems), file=out)
            return 1
        print(f"rebuilt the derived tables from {verified} verified batches; they match", file=out)
        return 0
    if args.cmd == "purge":
        cutoff = int(store.clock() * 1000) - retention_days * DAY_MS
        print(f"deleted {await store.purge(cutoff)} rows older than {retention_days} days")
        if store.head is not None:  # the anchor moved: record it outside the store
            checkpoints.append(store.ident, store.head)
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
            await store.open(create=False)  # reading a mistyped path must not create a store there
        except StoreError as exc:
            if args.cmd == "verify" and exc.cause == "corrupt":
                print(f"BROKEN: {exc}", file=sys.stdout)
                return 1
            print(f"betblock: {exc}", file=sys.stderr)
            return 3
        checkpoints = build_checkpoints(settings.hits, settings.data_dir)
        store.seal = checkpoints.seal
        try:
            return await _run(args, store, settings.hits.retention_days, checkpoints)
        except FilterError as exc:
            print(f"betblock: {exc}", file=sys.stderr)
            return 2
        finally:
            await store.close()

    return asyncio.run(go())


