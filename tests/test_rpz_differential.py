"""Differential test: betblock against Unbound (Debian's package) with the same policy.

A seeded generator writes a policy of several hundred rules: agencies whose plain lists say
exact, subtree or below, with NXDOMAIN, NODATA and redirect actions (IPv4, IPv6, both, IPv6
only); one agency whose RPZ zone mixes scopes and per-rule actions (local data, drop,
tcp-only) with nested rules and passthru under blocked parents; an allowlist of exact and
subtree passthru under blocked parents. Unbound gets it as RPZ zones (the allowlist first,
then the agencies by precedence), betblock twice: through its agency configuration and as RPZ
file sources. Both forward to one NSD serving every name asked. Thousands of queries (listed
names, children at depths 1-4, near misses: a prefix, a suffix, another TLD, mixed case; A,
AAAA, TXT, MX, HTTPS, ANY) are compared by rcode, TC, RA, answer types and addresses.

Documented exceptions (where Unbound and BIND themselves disagree, either answer is taken):
- A name listed only as ``*.name`` under a parent the same zone blocks with a wildcard: the
  name is an empty non-terminal of the zone. BIND (RFC 4592) does not apply the parent's
  wildcard to it; Unbound does. betblock answers as BIND.
- ANY for a name that is not blocked: forwarded (Unbound answers ANY from its cache or
  minimally); blocked names are compared for ANY like any type.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from betblock.app import App
from config.settings import Settings
from tests.conftest import port_of
from tests.dnsutil import ede
from tests.nodes import NSD, UNBOUND, nsd_conf, nsd_zone_section, stop
from tests.procutil import START_SECONDS, free_port


SEED = 20261202
TLDS = ("test", "example")
TYPES = ("A", "AAAA", "TXT", "MX", "HTTPS", "ANY")
UPSTREAM_A = "198.51.100.7"  # what NSD answers for every name: a forwarded answer shows it


@dataclass
class Rule:
    name: str
    scope: str  # exact | subtree | below
    action: str  # nxdomain | nodata | redirect | passthru | drop | tcp-only
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()


@dataclass
class Agency:
    id: str
    action: str
    scope: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    plain: bool = True  # expressible as a plain list with the agency's scope and action
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Policy:
    agencies: list[Agency]
    allow: list[Rule]
    queries: list[tuple[str, str]]  # (name, type)

    def names(self) -> set[str]:
        return {n.lower() for n, _t in self.queries}


def generate(seed: int = SEED) -> Policy:
    rnd = random.Random(seed)
    counter = iter(range(10**6))

    def fresh() -> str:
        return f"n{next(counter)}{rnd.choice('abcdefgh')}.{rnd.choice(TLDS)}"

    agencies = [
        Agency("nx-sub", "nxdomain", "subtree"),
        Agency("nd-exact", "nodata", "exact"),
        Agency("r4-below", "redirect", "below", ipv4=("192.0.2.4",)),
        Agency("r6-sub", "redirect", "subtree", ipv6=("2001:db8::6",)),
        Agency("r46-exact", "redirect", "exact", ipv4=("192.0.2.46",), ipv6=("2001:db8::46",)),
        Agency("r44-sub", "redirect", "subtree", ipv4=("192.0.2.41", "192.0.2.42")),
        Agency("rpz-mixed", "nxdomain", "subtree", plain=False),
    ]
    allow: list[Rule] = []
    for ag in agencies:
        for _ in range(30 if ag.plain else 60):
            base = fresh()
            if ag.plain:
                ag.rules.append(Rule(base, ag.scope, ag.action, ag.ipv4, ag.ipv6))
                if rnd.random() < 0.3:  # a nested rule of the same agency, directly below
                    ag.rules.append(Rule(f"c{next(counter)}.{base}", ag.scope, ag.action, ag.ipv4, ag.ipv6))
                if rnd.random() < 0.25:  # the operator's passthru under a blocked parent
                    allow.append(Rule(f"ok{next(counter)}.{base}", rnd.choice(("exact", "subtree")), "passthru"))
                continue
            ag.rules.append(_mixed_rule(rnd, base))
            for _ in range(rnd.choice((0, 0, 1, 2))):  # nested rules of other scopes and actions
                ag.rules.append(_mixed_rule(rnd, f"c{next(counter)}.{base}"))
            if rnd.random() < 0.3:  # the zone's own passthru under its blocked parent
                ag.rules.append(Rule(f"ok{next(counter)}.{base}", rnd.choice(("exact", "subtree")), "passthru"))
    queries: list[tuple[str, str]] = []
    listed = [r.name for ag in agencies for r in ag.rules] + [r.name for r in allow]
    for name in listed:
        first, rest = name.split(".", 1)
        variants = [name]
        for depth in (1, 2, 3, 4):
            if rnd.random() < 0.5:
                variants.append(".".join(f"d{rnd.randrange(100)}" for _ in range(depth)) + "." + name)
        variants.append(f"x{first}.{rest}")  # a prefix
        variants.append(f"{first}x.{rest}")  # a suffix
        tld = name.rsplit(".", 1)[1]
        variants.append(name.rsplit(".", 1)[0] + "." + ("example" if tld == "test" else "test"))  # another TLD
        variants.append("".join(c.upper() if rnd.random() < 0.5 else c for c in name))  # mixed case
        for v in variants:
            for t in rnd.sample(TYPES, 2):
                queries.append((v, t))
    return Policy(agencies, allow, queries)


def _mixed_rule(rnd: random.Random, name: str) -> Rule:
    scope = rnd.choice(("exact", "subtree", "below"))
    action = rnd.choices(("nxdomain", "nodata", "redirect", "drop", "tcp-only"), (4, 3, 6, 1, 1))[0]
    if action != "redirect":
        return Rule(name, scope, action)
    kind = rnd.choice(("4", "6", "46", "44"))
    ipv4 = {"4": ("192.0.2.14",), "46": ("192.0.2.146",), "44": ("192.0.2.141", "192.0.2.142")}.get(kind, ())
    ipv6 = {"6": ("2001:db8::16",), "46": ("2001:db8::146",)}.get(kind, ())
    return Rule(name, scope, action, ipv4, ipv6)


# -- writing the policy down ---------------------------------------------------------------


def rpz_zone(origin: str, rules: list[Rule]) -> str:
    lines = [f"$ORIGIN {origin}.", "$TTL 300", f"@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300", "@ NS ns.invalid."]
    for r in rules:
        owners = {"exact": [r.name], "below": [f"*.{r.name}"], "subtree": [r.name, f"*.{r.name}"]}[r.scope]
        for owner in owners:
            if r.action == "redirect":
                lines += [f"{owner} A {ip}" for ip in r.ipv4] + [f"{owner} AAAA {ip}" for ip in r.ipv6]
            else:
                target = {"nxdomain": ".", "nodata": "*.", "passthru": "rpz-passthru.", "drop": "rpz-drop.", "tcp-only": "rpz-tcp-only."}[r.action]
                lines.append(f"{owner} CNAME {target}")
    return "\n".join(lines) + "\n"


def nsd_zone(tld: str, names: set[str]) -> str:
    lines = [f"$ORIGIN {tld}.", "$TTL 60", f"@ SOA ns.{tld}. hostmaster.{tld}. 1 3600 600 86400 60", "@ NS ns", f"ns A 127.0.0.1"]
    for name in sorted(n for n in names if n.endswith("." + tld)):
        lines += [
            f"{name}. A {UPSTREAM_A}",
            f"{name}. AAAA 2001:db8::7",
            f'{name}. TXT "upstream"',
            f"{name}. MX 10 mail.{name}.",
        ]
    return "\n".join(lines) + "\n"


# -- servers -------------------------------------------------------------------------------


async def _wait_answering(port: int, proc: asyncio.subprocess.Process, log: Path, name: str, seconds: float = START_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        try:
            r = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.3)
            if r.rcode() != dns.rcode.SERVFAIL:
                return
        except (dns.exception.Timeout, OSError):
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"no answer within {seconds}s: {log.read_text(errors='replace')[-3000:]}")
        await asyncio.sleep(0.05)  # between polls of the condition above, not instead of it


async def _start(argv: list[str], run: Path, port: int, probe: str) -> asyncio.subprocess.Process:
    log = run / "stderr"
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=run, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        await _wait_answering(port, proc, log, probe)
    except BaseException:
        await stop(proc)
        raise
    return proc


async def _start_on_free_port(
    conf: Callable[[int], list[str]], run: Path, probe: str
) -> tuple[int, asyncio.subprocess.Process]:
    """Start the server ``conf(port)`` gives the command of; a server that exits at once (the
    port taken between free_port() and its bind, by anything else on the machine) is started
    again on another port, at most three times."""
    for attempt in range(3):
        port = free_port()
        try:
            return port, await _start(conf(port), run, port, probe)
        except RuntimeError:  # exited; _wait_answering put its log in the message
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def start_nsd(run: Path, policy: Policy) -> tuple[int, asyncio.subprocess.Process]:
    run.mkdir()
    names = policy.names()
    zones = ""
    for tld in TLDS:
        (run / f"{tld}.zone").write_text(nsd_zone(tld, names))
        zones += nsd_zone_section(tld, run / f"{tld}.zone")
    conf = run / "nsd.conf"

    def write(port: int) -> list[str]:
        conf.write_text(nsd_conf(run, port, zones))
        return [NSD, "-d", "-c", str(conf)]  # type: ignore[list-item]

    return await _start_on_free_port(write, run, "ns.test")


def zone_files(run: Path, policy: Policy) -> list[tuple[str, Path]]:
    """(zone name, file) of the allowlist zone and each agency's zone, in Unbound's order."""
    out = [("allow.rpz", run / "allow.rpz")]
    out[0][1].write_text(rpz_zone("allow.rpz", policy.allow))
    for ag in policy.agencies:
        path = run / f"{ag.id}.rpz"
        path.write_text(rpz_zone(f"{ag.id}.rpz", ag.rules))
        out.append((f"{ag.id}.rpz", path))
    return out


async def start_unbound(run: Path, policy: Policy, nsd_port: int) -> tuple[int, asyncio.subprocess.Process]:
    run.mkdir()
    rpz = "".join(f'rpz:\n  name: "{name}"\n  zonefile: "{path}"\n  rpz-log: no\n' for name, path in zone_files(run, policy))
    conf = run / "unbound.conf"

    def write(port: int) -> list[str]:
        conf.write_text(
            f"""server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  chroot: ""
  username: ""
  directory: "{run}"
  pidfile: "{run}/unbound.pid"
  logfile: "{run}/unbound.log"
  use-syslog: no
  verbosity: 0
  num-threads: 1
  do-not-query-localhost: no
  module-config: "respip iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "test." nodefault
  local-zone: "example." nodefault
  qname-minimisation: no
  trust-anchor-signaling: no
  auto-trust-anchor-file: ""
remote-control:
  control-enable: no
{rpz}forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{nsd_port}
"""
        )
        return [UNBOUND, "-d", "-c", str(conf)]  # type: ignore[list-item]

    return await _start_on_free_port(write, run, "ns.test")


async def start_betblock(run: Path, policy: Policy, nsd_port: int, *, as_rpz: bool) -> App:
    run.mkdir()
    allow = run / "allow.txt"
    allow.write_text("".join(f"{r.name} {r.scope}\n" for r in policy.allow))
    agencies: list[dict[str, Any]] = []
    zones = dict((name.removesuffix(".rpz"), path) for name, path in zone_files(run, policy))
    for i, ag in enumerate(policy.agencies):
        cfg: dict[str, Any] = {
            "id": ag.id,
            "precedence": 100 - i,
            "action": ag.action,
            "scope": ag.scope,
            "redirect_ipv4": list(ag.ipv4),
            "redirect_ipv6": list(ag.ipv6),
            "churn_limit": 1.0,
        }
        if ag.plain and not as_rpz:
            path = run / f"{ag.id}.txt"
            path.write_text("".join(f"{r.name}\n" for r in ag.rules))
            cfg["sources"] = [{"kind": "file", "path": str(path), "format": "plain"}]
        else:
            cfg["sources"] = [{"kind": "file", "path": str(zones[ag.id]), "format": "rpz", "options": {"origin": f"{ag.id}.rpz"}}]
        agencies.append(cfg)
    settings = Settings(
        dns={"listen": ["127.0.0.1:0"]},
        http={"enabled": False},
        warning_page={"enabled": False},
        upstream={"servers": [f"127.0.0.1:{nsd_port}"], "deadline": 3.0, "attempt_timeout": 1.0},
        policy={"allowlist_files": [str(allow)]},
        agencies=agencies,
        hits={"store": "none"},
        base_dir=run,
        data_dir=run / "var",
    )  # type: ignore[arg-type]
    app = App(settings, handle_signals=False)
    task = asyncio.create_task(app.run())
    ready = asyncio.create_task(app.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready in done, "betblock did not become ready"
    app._test_task = task  # type: ignore[attr-defined]
    return app


# -- comparing -----------------------------------------------------------------------------

Outcome = tuple[Any, ...]


async def ask(port: int, name: str, rdtype: str) -> tuple[Outcome, bool]:
    """(comparable outcome, whether betblock's EDE says blocked) of one UDP query with EDNS."""
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    try:
        # ignore_unexpected: a late answer to an earlier query (from another server, or with
        # another ID) can reach this socket when the kernel gives it that query's port again;
        # it is not this question's answer (seen under load: dns.query.UnexpectedSource).
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=1.5, ignore_unexpected=True)
    except dns.exception.Timeout:
        return ("no answer",), True
    types = tuple(sorted({dns.rdatatype.to_text(rrset.rdtype) for rrset in r.answer}))
    addrs = tuple(sorted(rr.address for rrset in r.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rr in rrset))
    outcome = (dns.rcode.to_text(r.rcode()), bool(r.flags & dns.flags.TC), bool(r.flags & dns.flags.RA), types, addrs)
    return outcome, any(code == 16 for code, _ in ede(r))


def ent_exceptions(policy: Policy) -> set[str]:
    """Names listed only as ``*.name`` directly under a parent whose zone has ``*.parent``."""
    out = set()
    for ag in policy.agencies:
        wild = {r.name for r in ag.rules if r.scope != "exact"}
        own = {r.name for r in ag.rules if r.scope != "below"}
        for r in ag.rules:
            parent = r.name.split(".", 1)[1]
            if r.scope == "below" and r.name not in own and parent in wild:
                out.add(r.name)
    return out


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[Policy, int, App, App]]:
    for what, path in (("nsd", NSD), ("unbound", UNBOUND)):
        if path is None:
            if os.environ.get("CI"):
                pytest.fail(f"{what} is not installed (`make test` installs it)")
            pytest.skip(f"{what} is not installed; set CI=1 to make this a failure")
    policy = generate()
    procs: list[asyncio.subprocess.Process] = []
    apps: list[App] = []
    try:
        nsd_port, nsd = await start_nsd(tmp_path / "nsd", policy)
        procs.append(nsd)
        unbound_port, unbound = await start_unbound(tmp_path / "unbound", policy, nsd_port)
        procs.append(unbound)
        apps.append(await start_betblock(tmp_path / "config", policy, nsd_port, as_rpz=False))
        apps.append(await start_betblock(tmp_path / "rpz", policy, nsd_port, as_rpz=True))
        yield policy, unbound_port, apps[0], apps[1]
    finally:
        for app in apps:
            app.stop()
            await asyncio.wait_for(app._test_task, 10)  # type: ignore[attr-defined]
        for proc in procs:
            await stop(proc)


async def test_betblock_answers_as_unbound_with_the_same_policy(servers: tuple[Policy, int, App, App]) -> None:
    policy, unbound_port, by_config, by_rpz = servers
    rules = sum(len(ag.rules) for ag in policy.agencies) + len(policy.allow)
    assert rules >= 300 and len(policy.queries) >= 2000
    ports = {"config": port_of(by_config), "rpz": port_of(by_rpz)}
    ents = ent_exceptions(policy)
    gate = asyncio.Semaphore(32)
    seen: dict[Outcome, int] = {}
    excused: list[str] = []

    transient = ("no answer", "SERVFAIL")

    async def one(name: str, rdtype: str) -> list[str]:
        async with gate:
            expect, _ = await ask(unbound_port, name, rdtype)
            problems = []
            for route, port in ports.items():
                for _attempt in range(3):
                    got, blocked = await ask(port, name, rdtype)
                    if got == expect or (got[0] not in transient and expect[0] not in transient):
                        break
                    # A lost datagram or an upstream timeout on a loaded machine: ask both again
                    # (a dropped name stays unanswered every time, so it still compares equal).
                    expect, _ = await ask(unbound_port, name, rdtype)
                if got == expect:
                    continue
                if rdtype == "ANY" and not blocked:
                    excused.append(f"{route}: {name} ANY forwarded")
                    continue  # forwarded ANY: documented exception
                if name.lower() in ents and not blocked:
                    excused.append(f"{route}: {name} {rdtype} empty non-terminal")
                    continue  # an empty non-terminal of the zone: BIND's reading (documented)
                problems.append(f"{route}: {name} {rdtype}: unbound {expect} betblock {got}")
            kind = expect[:2] + (len(expect) > 4 and expect[4] != (UPSTREAM_A,) and bool(expect[4]),)
            seen[kind] = seen.get(kind, 0) + 1
            return problems

    results = await asyncio.gather(*(one(n, t) for n, t in policy.queries))
    problems = [p for group in results for p in group]
    print(f"{len(policy.queries)} queries x 2 routes, {rules} rules; Unbound's outcomes {seen}; excused {len(excused)}")
    print("\n".join(e for e in excused if "ANY" not in e))
    # The policy must show in Unbound's answers: every kind of outcome occurs.
    for kind in (("NXDOMAIN", False), ("NOERROR", True), ("no answer",)):
        assert any(k[: len(kind)] == kind for k in seen), (kind, seen)
    assert any(k[2] for k in seen)  # a redirect address
    assert problems == [], f"{len(problems)} disagreements of {2 * len(policy.queries)}:\n" + "\n".join(problems[:40])
