"""Integration against a real authoritative server: NSD (Debian package nsd) on 127.0.0.1.

NSD runs in the foreground from a temporary directory with its own configuration; betblock
forwards to it. Skipped when nsd is not installed, unless the CI variable is set (then the
missing server is a failure: `make test` installs it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import port_of
from tests.dnsutil import a_records, ede, query, tcp, udp
from tests.nodes import NSD, nsd_conf, nsd_zone_section, stop
from tests.procutil import free_port


ZONE = """$ORIGIN nsd.test.
$TTL 3600
@       IN SOA ns.nsd.test. hostmaster.nsd.test. 2024010101 3600 600 86400 120
@       IN NS  ns
ns      IN A   127.0.0.1
www     IN A   192.0.2.53
www     IN AAAA 2001:db8::53
casino  IN A   192.0.2.66
alias   IN CNAME casino
clean   IN CNAME www
"""


def write_config(run: Path, port: int) -> Path:
    (run / "nsd.test.zone").write_text(ZONE)
    conf = run / "nsd.conf"
    conf.write_text(nsd_conf(run, port, nsd_zone_section("nsd.test", run / "nsd.test.zone")))
    return conf


async def answers(port: int, proc: asyncio.subprocess.Process, log: Path, timeout: float = 15) -> None:
    """Poll NSD with a query until it answers; fail if it exits or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"nsd exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            r = await udp(port, query("www.nsd.test"), timeout=0.2)
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                return
        except (dns.exception.Timeout, ConnectionError, OSError):
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"nsd did not answer within {timeout}s: {log.read_text(errors='replace')[-2000:]}")
        await asyncio.sleep(0.05)  # between polls of the condition above, not instead of it


@pytest.fixture
async def nsd(tmp_path: Path) -> AsyncIterator[int]:
    if NSD is None:
        if os.environ.get("CI"):
            pytest.fail("nsd is not installed (apt-get install nsd; `make test` does it)")
        pytest.skip("nsd is not installed (apt-get install nsd); set CI=1 to make this a failure")
    run = tmp_path / "nsd"
    run.mkdir()
    log = run / "nsd.stderr"
    for attempt in range(3):  # a port taken between free_port() and nsd's bind: try another
        port = free_port()
        conf = write_config(run, port)
        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                NSD, "-d", "-c", str(conf), cwd=run, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err
            )
        try:
            await answers(port, proc, log)
            break
        except RuntimeError:
            await stop(proc)
            if attempt == 2:
                raise
        except BaseException:
            await stop(proc)
            raise
    try:
        yield port
    finally:
        await stop(proc)
        assert proc.returncode is not None


async def test_forward_and_block_with_nsd_upstream(nsd, node):
    app = await node(lists={"pl-mf": ["casino.nsd.test"]}, upstreams=[f"127.0.0.1:{nsd}"])
    port = port_of(app)

    # Forwarded: NSD's answer, without its AA bit and without its OPT unless the client sent one,
    # and with RA (NSD, an authoritative server, sets none: we are the recursive resolver).
    direct = await udp(nsd, query("www.nsd.test"))
    assert not direct.flags & dns.flags.RA and direct.flags & dns.flags.AA
    asked = time.monotonic()
    for edns in (False, True):  # the first from upstream, the second from the cache
        r = await udp(port, query("WWW.nsd.test", edns=edns))
        assert r.rcode() == dns.rcode.NOERROR
        assert a_records(r) == ["192.0.2.53"]
        # The zone's 3600, less the whole seconds the cache held it: the cache counts whole
        # seconds, so a boundary crossed since the first query may take one more.
        held = int(time.monotonic() - asked) + 1
        assert 3600 - held <= r.answer[0].ttl <= 3600
        assert not r.flags & dns.flags.AA
        assert r.flags & dns.flags.RA
        assert (r.opt is not None) == edns
    r = await tcp(port, query("www.nsd.test", "AAAA"))
    assert [rr.address for rrset in r.answer for rr in rrset] == ["2001:db8::53"]
    assert r.flags & dns.flags.RA

    # NXDOMAIN from NSD, with its SOA (minimum 120), also with RA, from upstream and from the cache.
    for _ in range(2):
        r = await udp(port, query("missing.nsd.test"))
        assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.RA
        assert r.authority[0].rdtype == dns.rdatatype.SOA and r.authority[0][0].minimum == 120

    # Blocked: the listed name and its subdomains never reach NSD, and a CNAME into it is caught.
    for name in ("casino.nsd.test", "www.casino.nsd.test", "alias.nsd.test"):
        r = await udp(port, query(name, edns=True))
        assert r.rcode() == dns.rcode.NXDOMAIN, name
        assert r.answer == [], name
        assert ede(r)[0][0] == 16, name
        assert r.flags & dns.flags.RA, name
    r = await udp(port, query("clean.nsd.test"))
    assert r.rcode() == dns.rcode.NOERROR and a_records(r) == ["192.0.2.53"]
    assert app.upstream.failures == {f"127.0.0.1:{nsd}": 0}
