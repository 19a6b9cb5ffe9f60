"""`betblock serve` as a real process: starts, answers, and on SIGTERM flushes every hit."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode

from tests.fakedns import FakeDns
from tests.procutil import Serve, write_node


async def test_serve_answers_and_sigterm_flushes_hits(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    upstream.add("ok.test", "A", "192.0.2.7")
    hits = tmp_path / "hits.jsonl"
    cfg = write_node(tmp_path, upstream, f"""[hits]
jsonl_path = "{hits}"
flush_interval = 3600  # only the shutdown flush can write the hits
""")
    node = await Serve.start(cfg)  # every listener on port 0: the node's log says which it got
    port = node.dns_port
    try:
        blocked = await dns.asyncquery.udp(dns.message.make_query("www.bad.test", "A"), "127.0.0.1", port=port, timeout=2)
        assert blocked.rcode() == dns.rcode.NXDOMAIN
        for _ in range(4):
            r = await dns.asyncquery.udp(dns.message.make_query("bad.test", "AAAA"), "127.0.0.1", port=port, timeout=2)
            assert r.rcode() == dns.rcode.NXDOMAIN
        ok = await dns.asyncquery.tcp(dns.message.make_query("ok.test", "A"), "127.0.0.1", port=port, timeout=2)
        assert ok.answer[0][0].address == "192.0.2.7"
        assert not hits.exists() or hits.read_text() == ""
    finally:
        code = await node.stop(signal.SIGTERM)
        await upstream.stop()
    assert code == 0, node.log()
    lines = [json.loads(line) for line in hits.read_text().splitlines()]
    assert sum(h["count"] for h in lines) == 5
    first = lines[0]
    assert (first["name"], first["qtype"], first["listed"], first["agency"], first["action"]) == (
        "www.bad.test", "A", "bad.test", "pl-mf", "nxdomain",
    )
    assert first["client"] == "127.0.0.1"
