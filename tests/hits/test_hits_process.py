"""A real `betblock serve` process: SIGTERM writes every buffered hit to the store, and
`betblock hits` reads it back and verifies the chain (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from tests.fakedns import FakeDns
from tests.hits.conftest import PG_DSN, need_pg, pg_schema
from tests.procutil import Serve, betblock, write_node


_cli = partial(betblock, "hits")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_sigterm_flushes_every_hit_to_the_store(tmp_path: Path, kind: str) -> None:
    schema = pg_schema()
    if kind == "postgres":
        await need_pg()
        store_cfg = f'store = "postgres"\npostgres_dsn = "{PG_DSN}"\npostgres_schema = "{schema}"'
    else:
        store_cfg = f'sqlite_path = "{tmp_path / "hits.sqlite"}"'
    upstream = await FakeDns().start()
    cfg = write_node(tmp_path, upstream, f"""[hits]
flush_interval = 3600  # only the shutdown flush can write the hits
privacy = "truncate"
node = "edge-1"
{store_cfg}
""")
    node = await Serve.start(cfg)  # every listener on port 0: the node's log says which it got
    port = node.dns_port
    try:
        r = await dns.asyncquery.udp(dns.message.make_query("www.bad.test", "A"), "127.0.0.1", port=port, timeout=2)
        assert r.rcode() == dns.rcode.NXDOMAIN
        for i in range(40):
            r = await dns.asyncquery.udp(dns.message.make_query(f"n{i}.bad.test", "AAAA"), "127.0.0.1", port=port, timeout=2)
            assert r.rcode() == dns.rcode.NXDOMAIN
        rc, out, _ = await _cli("--config", str(cfg), "status")
        assert rc == 0 and json.loads(out)["hits"] == 0  # nothing written before the signal
        assert await node.stop(signal.SIGTERM) == 0, node.log()

        rc, out, err = await _cli("--config", str(cfg), "list", "--json", "--limit", "1000")
        assert rc == 0, err
        hits = json.loads(out)["hits"]
        assert sum(h["count"] for h in hits) == 41
        assert {h["client"] for h in hits} == {"127.0.0.0/24"} and {h["node"] for h in hits} == {"edge-1"}
        assert hits[-1]["name"] == "www.bad.test" and hits[-1]["listed"] == "bad.test"
        rc, out, _ = await _cli("--config", str(cfg), "verify")
        assert rc == 0 and out.startswith("ok: 1 batches verified")
        rc, out, _ = await _cli("--config", str(cfg), "export", "--format", "csv", "--name", "n1.bad.test", "--exact")
        assert rc == 0 and out.splitlines()[1].split(",")[4] == "n1.bad.test"
        rc, _, err = await _cli("--config", str(cfg), "list", "--qtype", "NOPE")
        assert rc == 2 and "qtype" in err
    finally:
        await node.stop()
        await upstream.stop()
        if kind == "postgres":
            from hits.postgres import PostgresStore

            await PostgresStore(PG_DSN, schema).drop_schema()
