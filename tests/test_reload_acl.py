"""SIGHUP re-reads the client ACL of a running `betblock serve`, both ways, and the answer memo
never carries an earlier ACL decision across the swap. A real process and a real signal: the
reload goes through the same path an operator's `kill -HUP` takes."""

from __future__ import annotations

import signal
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from tests.dnsutil import ask_patiently
from tests.fakedns import FakeDns
from tests.procutil import Serve, node_toml, one_agency, until


def _config(tmp_path: Path, upstream: FakeDns, allow: str) -> str:
    return node_toml(tmp_path, 0, upstream, f"[acl]\nallow = [{allow}]\n" + one_agency(), warning_page=False)


async def _rcode(port: int, name: str) -> int | None:
    r = await ask_patiently(port, name)
    if r is None:
        return None
    return r.rcode()


async def test_sighup_swaps_the_acl_both_ways_and_the_memo_never_leaks(tmp_path: Path) -> None:
    upstream = FakeDns()
    upstream.add("allowed.test", "A", "192.0.2.10")
    await upstream.start()
    (tmp_path / "list.txt").write_text("casino.test\n")
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(_config(tmp_path, upstream, '"10.0.0.0/8"'))
    node = await Serve.start(cfg)
    try:
        port = node.dns_port
        assert await _rcode(port, "allowed.test") == dns.rcode.REFUSED
        assert await _rcode(port, "casino.test") == dns.rcode.REFUSED

        cfg.write_text(_config(tmp_path, upstream, '"127.0.0.0/8"'))
        node.proc.send_signal(signal.SIGHUP)

        async def served() -> bool:
            return await _rcode(port, "allowed.test") == dns.rcode.NOERROR

        await until(served, "127.0.0.1 to be served after SIGHUP", log=node.log)
        # The same blocked question twice: the second comes from the answer memo.
        assert await _rcode(port, "casino.test") == dns.rcode.NXDOMAIN
        assert await _rcode(port, "casino.test") == dns.rcode.NXDOMAIN

        cfg.write_text(_config(tmp_path, upstream, '"192.0.2.0/24"'))
        node.proc.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            return await _rcode(port, "allowed.test") == dns.rcode.REFUSED

        await until(refused, "127.0.0.1 to be refused after the second SIGHUP", log=node.log)
        # The memo holds casino.test's answer from when 127.0.0.1 was allowed: it must not
        # be served to a client the new ACL refuses.
        assert await _rcode(port, "casino.test") == dns.rcode.REFUSED
        assert node.proc.returncode is None
    finally:
        await node.stop()
        await upstream.stop()
