"""Compliance evidence for the regulator: the report per agency (``feeds/compliance.py`` computes
it from the feed store), its HTTP route and command, and the self-test that asks the live
resolver for a sample of listed names.

Owns:
- ``GET /v1/compliance/{agency}[?format=json|csv]`` (the admin, or that agency) and
  ``POST /v1/compliance/{agency}/self-test[?sample=N]`` (the admin); 404 for an unknown agency;
- ``betblock compliance AGENCY [--format json|csv] [-o FILE] [--self-test [--sample N]
  [--server HOST:PORT]]``, which reads the store read-only beside a running server;
- the self-test's DNS client: a query with EDNS over UDP (dnslib builds and parses it; this is
  not the hot path), a name counts as sinkholed when the answer carries Extended DNS Error 16
  "Censored", which every sinkhole answer to an EDNS query carries and nothing else does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import dnslib
from aiohttp import web

from config.auth import ADMIN, AGENCY, accepts
from config.settings import DEFAULT_CONFIG, AgencySettings, ConfigError, load_settings
from feeds.compliance import report, to_csv
from feeds.entry import Entry
from feeds.formats import scope_of
from feeds.lists import SourceList
from feeds.manager import STORE_FILE, FeedManager
from feeds.store import FeedStore, iso
from resolver.wire import EDE_CENSORED, OPT_CODE_EDE

DEFAULT_SAMPLE = 20
_RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


# -- the self-test -----------------------------------------------------------------------


def active_names(lists: Iterable[SourceList], now: float, scopes: Iterable[tuple[str, str]] | None = None) -> list[str]:
    """Names an agency's lists block now: not exceptions, listed (no future listing date), not
    past a removal date. ``scopes`` gives (format, agency scope) per list: an entry that covers
    only the names below it (RPZ ``*.name``) is asked as a name below it."""
    names: set[str] = set()
    for lst, (fmt, default) in zip(lists, scopes or iter(lambda: ("plain", "subtree"), None)):
        for e in lst.entries():
            if _active(e, now):
                below = scope_of(fmt, e.wildcard, default) == "below"  # type: ignore[arg-type]
                names.add(f"self-test.{e.name}" if below else e.name)
    return sorted(names)


def _active(e: Entry, now: float) -> bool:
    if e.allow:
        return False
    if e.listed_at is not None and e.listed_at.timestamp() > now:
        return False
    return e.removed_at is None or e.removed_at.timestamp() > now


def ask(server: tuple[str, int], name: str, timeout: float = 2.0, tries: int = 2) -> dict[str, Any]:
    """One A query with EDNS to ``server`` over UDP (blocking); what came back."""
    q = dnslib.DNSRecord.question(name, "A")
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    packet = q.pack()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    for attempt in range(tries):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect(server)
            s.send(packet)
            try:
                while True:
                    data = s.recv(65535)
                    reply = dnslib.DNSRecord.parse(data)
                    if reply.header.id == q.header.id:
                        break
            except (TimeoutError, socket.timeout):
                if attempt + 1 == tries:
                    return {"name": name, "rcode": "TIMEOUT", "addresses": [], "ede": []}
                continue
            except OSError as exc:  # e.g. connection refused: nothing listens there
                return {"name": name, "rcode": f"ERROR: {exc}", "addresses": [], "ede": []}
        ede: list[tuple[int, str]] = []
        for rr in reply.ar:
            if rr.rtype == dnslib.QTYPE.OPT:
                for opt in rr.rdata:
                    if opt.code == OPT_CODE_EDE and len(opt.data) >= 2:
                        ede.append((int.from_bytes(opt.data[:2], "big"), opt.data[2:].decode("utf-8", "replace")))
        rcode = reply.header.rcode
        return {
            "name": name,
            "rcode": _RCODES.get(rcode, str(rcode)),
            "addresses": [str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A],
            "ede": ede,
        }
    raise AssertionError("unreachable")


def _verdict(agency: AgencySettings, got: dict[str, Any]) -> dict[str, Any]:
    censored = [text for code, text in got["ede"] if code == EDE_CENSORED]
    out = {
        "name": got["name"],
        "sinkholed": bool(censored),
        "rcode": got["rcode"],
        "addresses": got["addresses"],
        "expected": agency.action,
    }
    if censored:
        out["by"] = censored[0]
    return out


async def self_test(
    agency: AgencySettings, names: list[str], server: tuple[str, int], *, sample: int = DEFAULT_SAMPLE,
    now: float | None = None, rng: random.Random | None = None,
) -> dict[str, Any]:
    """Ask the resolver at ``server`` for up to ``sample`` of ``names``; report those not sinkholed."""
    rng = rng or random.Random()
    chosen = names if len(names) <= sample else rng.sample(names, sample)
    results = []
    for name in chosen:  # sequential: a blocked answer takes microseconds, and the resolver is live
        got = await asyncio.to_thread(ask, server, name)
        results.append(_verdict(agency, got))
    failures = [r for r in results if not r["sinkholed"]]
    return {
        "agency": agency.id,
        "server": f"{server[0]}:{server[1]}",
        "time": iso(time.time() if now is None else now),
        "listed": len(names),
        "sampled": len(chosen),
        "sinkholed": len(chosen) - len(failures),
        "ok": not failures,
        "failures": failures,
        "results": results,
    }


def query_address(host: str, port: int) -> tuple[str, int]:
    """Where to ask a listener bound to ``host``: a wildcard address is asked on loopback."""
    if host in ("0.0.0.0", ""):
        return ("127.0.0.1", port)
    if host == "::":
        return ("::1", port)
    return (host, port)


# -- HTTP --------------------------------------------------------------------------------


def mount(feeds: FeedManager, dns_address: Callable[[], tuple[str, int]]) -> Callable[[web.Application], None]:
    """The compliance routes of a running node: its feeds (agencies, lists, the report) and
    where its DNS listener answers (for the self-test)."""
    agencies = feeds.agencies

    def agency_of(request: web.Request) -> AgencySettings:
        agency = agencies.get(request.match_info["agency"])
        if agency is None:
            raise web.HTTPNotFound(reason=f"no agency {request.match_info['agency']!r}")
        return agency

    @accepts(ADMIN, AGENCY)  # an agency reads its own report (the auth layer checks the path)
    async def get(request: web.Request) -> web.StreamResponse:
        agency = agency_of(request)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise web.HTTPBadRequest(reason="format must be json or csv")
        rep = await feeds.read.compliance(agency)
        if fmt == "csv":
            return web.Response(
                text=to_csv(rep), content_type="text/csv", charset="utf-8",
                headers={"Content-Disposition": f'attachment; filename="compliance-{agency.id}.csv"'},
            )
        return web.json_response(rep)

    async def post_self_test(request: web.Request) -> web.Response:
        agency = agency_of(request)
        try:
            sample = int(request.query.get("sample", DEFAULT_SAMPLE))
        except ValueError:
            raise web.HTTPBadRequest(reason="sample must be a number") from None
        if not 1 <= sample <= 10_000:
            raise web.HTTPBadRequest(reason="sample must be between 1 and 10000")
        now = feeds.clock()
        runtimes = feeds.sources.of(agency.id)
        scopes = [(rt.settings.format, agency.scope) for rt in runtimes]
        names = await asyncio.to_thread(active_names, [rt.current for rt in runtimes], now, scopes)
        return web.json_response(await self_test(agency, names, dns_address(), sample=sample, now=now))

    def add(app: web.Application) -> None:
        app.router.add_get("/v1/compliance/{agency}", get)
        app.router.add_post("/v1/compliance/{agency}/self-test", post_self_test)

    return add


# -- the command -------------------------------------------------------------------------


def main(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``betblock compliance AGENCY``: exit 0 when nothing is late (or, with --self-test, every
    sampled name is sinkholed), 1 otherwise, 2 on a usage or config error."""
    p = argparse.ArgumentParser(prog="betblock compliance", description="compliance report and self-test of one agency")
    p.add_argument("agency")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="report format")
    p.add_argument("-o", "--output", type=Path, help="write the report to this file")
    p.add_argument("--self-test", action="store_true", help="query the live resolver for a sample of listed names")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="names to query (self-test)")
    p.add_argument("--server", help="resolver to query as host:port (default: the first dns.listen)")
    args = p.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"betblock: {exc}", file=sys.stderr)
        return 2
    agency = next((a for a in settings.agencies if a.id == args.agency), None)
    if agency is None:
        print(f"betblock compliance: no agency {args.agency!r} in {args.config}", file=sys.stderr)
        return 2
    path = settings.data_dir / STORE_FILE
    if not path.is_file():
        print(f"betblock compliance: no feed store at {path} (has the server run?)", file=sys.stderr)
        return 2
    store = FeedStore(path, readonly=True)
    now = time.time()
    try:
        if args.self_test:
            if args.server:
                server = _server(args.server)
            else:
                server = query_address(*settings.dns.listen_addresses()[0])
            lists = [store.live(agency.id, src.key) for src in agency.all_sources()]
            scopes = [(src.format, agency.scope) for src in agency.all_sources()]
            result = asyncio.run(self_test(agency, active_names(lists, now, scopes), server, sample=args.sample, now=now))
            _write(json.dumps(result, indent=2) + "\n", args.output, out)
            return 0 if result["ok"] else 1
        rep = report(store, agency, now)
    finally:
        store.close()
    _write(to_csv(rep) if args.format == "csv" else json.dumps(rep, indent=2) + "\n", args.output, out)
    return 1 if rep["summary"]["late"] else 0


def _server(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest else 53
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


def _write(text: str, path: Path | None, out: TextIO) -> None:
    if path is None:
        out.write(text)
    else:
        path.write_text(text, encoding="utf-8")
