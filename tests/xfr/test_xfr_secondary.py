"""betblock as a secondary: a source of kind ``xfr`` follows an RPZ zone from a real BIND 9
primary on loopback (TSIG-signed), AXFR first, then IXFR after a change that BIND announces
with NOTIFY; the followed list goes through the feeds path (blocked as the zone says), and a
restart with the primary gone still serves it."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.dnsutil import ask_patiently
from tests.fakedns import FakeDns
from tests.procutil import Serve, first_answer, free_port, node_toml
from tests.xfr.followers import bind_conf
from tests.xfr.primary import KEY_NAME, KEY_SECRET, until

pytestmark = pytest.mark.slow

ZONE = "agency.rpz"


def zone_text(serial: int, names: list[str]) -> str:
    lines = [
        f"$ORIGIN {ZONE}.",
        "$TTL 60",
        f"@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 60",
        "@ IN NS localhost.",
    ]
    for name in names:
        lines += [f"{name} CNAME .", f"*.{name} CNAME ."]
    return "\n".join(lines) + "\n"


def named_conf(tmp: Path, port: int, notify_port: int) -> Path:
    conf = tmp / "named.conf"
    conf.write_text(bind_conf(tmp, port, "    recursion no;\n", f"""zone "{ZONE}" {{
    type primary;
    file "{tmp}/{ZONE}.db";
    allow-transfer {{ key "{KEY_NAME}"; }};
    allow-query {{ 127.0.0.1; }};
    ixfr-from-differences yes;
    max-ixfr-ratio unlimited;  # (a test zone is tiny: any change is a big share of it)
    notify explicit;
    also-notify {{ 127.0.0.1 port {notify_port} key "{KEY_NAME}"; }};
}};
"""))
    return conf


async def _rcode(port: int, name: str) -> int | None:
    r = await ask_patiently(port, name)
    if r is None:
        return None
    return r.rcode()


async def test_betblock_follows_a_bind_primary(tmp_path: Path) -> None:
    if shutil.which("named") is None:
        pytest.fail("named is not installed (make test installs bind9)")
    upstream = await FakeDns().start()
    # Every name the test asks has an address upstream: NXDOMAIN can only come from the zone.
    # (An unknown name gets NXDOMAIN from the fake upstream: "www.casino.test" was "blocked"
    # before the zone arrived, and the next check raced the first transfer.)
    for name in ("casino.test", "www.casino.test", "later.test", "sub.later.test"):
        upstream.add(name, "A", "192.0.2.9")
    upstream.add("gone.test", "A", "192.0.2.10")
    bind_port, dns_port, xfr_port, http_port = free_port(), free_port(), free_port(), free_port()
    home = tmp_path / "bind"
    home.mkdir()
    (home / f"{ZONE}.db").write_text(zone_text(1, ["casino.test", "gone.test"]))
    named = await asyncio.create_subprocess_exec(
        "named", "-g", "-n", "1", "-c", str(named_conf(home, bind_port, xfr_port)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out: list[bytes] = []  # BIND's log, read as it comes: a full pipe would stall it

    async def read_bind() -> None:
        assert named.stdout is not None
        while chunk := await named.stdout.read(65536):
            out.append(chunk)

    def bind_log() -> str:
        return b"".join(out).decode(errors="replace")

    reader = asyncio.create_task(read_bind())
    try:
        async def bind_up() -> bool:
            assert named.returncode is None, f"named exited with {named.returncode}:\n{bind_log()}"
            try:
                r = await dns.asyncquery.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=bind_port, timeout=0.5)
            except (dns.exception.Timeout, dns.query.BadResponse, dns.query.UnexpectedSource):
                return False
            return bool(r.answer)

        # BIND first: a source that finds no primary retries only after 30 s.
        await until(bind_up, "BIND to serve the zone", 60, log=bind_log)
        cfg = tmp_path / "betblock.toml"
        cfg.write_text(node_toml(tmp_path, dns_port, upstream, f"""[hits]
    store = "none"
    [xfr]
    enabled = true
    listen = ["127.0.0.1:{xfr_port}"]
    keys = {{"{KEY_NAME}" = "{KEY_SECRET}"}}
    [[agencies]]
    id = "pl-mf"
    action = "nxdomain"
    churn_floor = 10
    [[agencies.sources]]
    kind = "xfr"
    format = "rpz"
    primary = "127.0.0.1:{bind_port}"
    zone = "{ZONE}"
    tsig_key = "{KEY_NAME}"
    tsig_secret = "{KEY_SECRET}"
    # An hour between SOA checks: the change below must arrive by NOTIFY.
    poll_interval = 3600
    """).replace('[http]\nlisten = "127.0.0.1:0"', f'[http]\nlisten = "127.0.0.1:{http_port}"'))
        node = await Serve.start(cfg, "--log-format", "json")
        try:
            await first_answer(dns_port, "ok.test")

            async def blocked(name: str) -> bool:
                return await _rcode(dns_port, name) == dns.rcode.NXDOMAIN

            await until(lambda: blocked("www.casino.test"), "the zone from BIND (AXFR)", 60)
            assert await blocked("gone.test")
            assert await _rcode(dns_port, "later.test") == dns.rcode.NOERROR

            (home / f"{ZONE}.db").write_text(zone_text(2, ["casino.test", "later.test"]))
            assert named.pid is not None
            named.send_signal(signal.SIGHUP)  # BIND reloads, keeps the difference, sends NOTIFY

            async def followed() -> bool:
                return await blocked("later.test") and await _rcode(dns_port, "gone.test") == dns.rcode.NOERROR

            await until(followed, "the change from BIND (NOTIFY, IXFR)", 60)

            # The guardrails of any feed: a transfer that empties the list is quarantined, and
            # the names stay blocked until an admin decides.
            (home / f"{ZONE}.db").write_text(zone_text(3, []))
            named.send_signal(signal.SIGHUP)

            async def quarantined() -> bool:
                async with aiohttp.ClientSession() as s:
                    async with s.get(f"http://127.0.0.1:{http_port}/metrics") as r:
                        return 'betblock_feed_quarantined{agency="pl-mf"' in (text := await r.text()) and any(
                            line.startswith("betblock_feed_quarantined{") and line.endswith(" 1.0")
                            for line in text.splitlines()
                        )

            await until(quarantined, "the emptying transfer to be quarantined", 60)
            assert await blocked("later.test") and await blocked("casino.test")
        finally:
            await node.stop()
        kinds = [e["kind"] for e in node.events("zone transferred in")]
        assert "axfr" in kinds and "ixfr" in kinds, node.log()[-3000:]

        # The primary is gone; a restart serves the followed list from the feed store.
        named.terminate()
        await named.wait()
        await reader
        # BIND sent the change as an IXFR (from the difference it kept), not the whole zone again.
        assert ": IXFR started: TSIG" in bind_log() and "AXFR started: TSIG" in bind_log(), bind_log()[-3000:]
        node = await Serve.start(cfg, "--log-format", "json")
        try:
            await first_answer(dns_port, "ok.test")
            assert await _rcode(dns_port, "sub.later.test") == dns.rcode.NXDOMAIN
            assert await _rcode(dns_port, "gone.test") == dns.rcode.NOERROR
        finally:
            await node.stop()
            await upstream.stop()
    finally:  # BIND never outlives the test, whatever failed
        if named.returncode is None:
            named.kill()
            await named.wait()
        await reader
