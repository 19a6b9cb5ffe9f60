"""The fleet: a control-plane betblock node serves the policy as RPZ; two betblock resolver
nodes follow it with ``xfr`` sources and one Unbound follows it too; both betblock nodes
record their hits in one PostgreSQL store. The primary is killed: every follower keeps
serving the last policy. It comes back with the same serial, a change is pushed, and the
followers resume with IXFR."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import pytest

from tests.dnsutil import address_of
from tests.hits.conftest import PG_DSN, need_pg, pg_schema
from tests.procutil import Serve, betblock, first_answer, free_port, node_toml
from tests.xfr import followers
from tests.xfr.primary import KEY_NAME, KEY_SECRET, ZONE, primary, until

pytestmark = pytest.mark.slow

SINKHOLE = "198.51.100.99"


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """The fleet's hit store: a PostgreSQL schema of its own, dropped afterwards."""
    await need_pg()
    name = pg_schema()
    yield name
    from hits.postgres import PostgresStore

    await PostgresStore(PG_DSN, name).drop_schema()


async def test_fleet_follows_survives_the_primary_and_shares_one_hit_store(tmp_path: Path, schema: str) -> None:
    p = await primary(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    nodes = []
    for name in ("edge-1", "edge-2"):
        home = tmp_path / name
        home.mkdir()
        dns_port, xfr_port = free_port(), free_port()
        cfg = home / "betblock.toml"
        cfg.write_text(node_toml(home, dns_port, p.upstream, f"""[hits]
store = "postgres"
postgres_dsn = "{PG_DSN}"
postgres_schema = "{schema}"
node = "{name}"
flush_interval = 0.2
[xfr]
enabled = true  # NOTIFY from the primary arrives here
listen = ["127.0.0.1:{xfr_port}"]
keys = {{"{KEY_NAME}" = "{KEY_SECRET}"}}
[[agencies]]
id = "hub"
[[agencies.sources]]
kind = "xfr"
format = "rpz"
primary = "127.0.0.1:{p.xfr_port}"
zone = "{ZONE}"
tsig_key = "{KEY_NAME}"
tsig_secret = "{KEY_SECRET}"
poll_interval = 3600  # changes arrive by NOTIFY
"""))
        nodes.append((name, cfg, dns_port, xfr_port))
    u_port = free_port()
    (tmp_path / "unbound").mkdir()
    unbound = followers.unbound(tmp_path / "unbound", u_port, p.upstream.address, p.xfr_port)
    extra = 'notify = [{}]\nallow_unsigned = ["127.0.0.1/32"]\n'.format(
        ", ".join(f'"127.0.0.1:{port}"' for port in [u_port] + [n[3] for n in nodes])
    )
    p.upstream.add("roulette.test", "A", "192.0.2.7")
    p.upstream.add("poker.test", "A", "192.0.2.8")
    ports = [n[2] for n in nodes] + [u_port]
    primaries: list[Serve] = []  # the primary's two runs
    edges: list[Serve] = []
    try:
        await p.start(extra)
        await p.put(["casino.test", "poker.test"])
        for _name, cfg, _d, _x in nodes:
            edges.append(await Serve.start(cfg, "--log-format", "json"))
        await unbound.start()
        for port in ports[:2]:
            await first_answer(port, "ok.test")

        async def everyone(name: str, want: bool) -> bool:
            got = [await address_of(port, name) == SINKHOLE for port in ports]
            return all(g == want for g in got)

        await until(lambda: everyone("www.poker.test", True), "every follower to block a listed name", 60)
        for port in ports[:2]:
            for _ in range(5):
                assert await address_of(port, "casino.test") == SINKHOLE

        # The primary dies: the followers keep the last policy.
        primaries.append(await p.stop())  # type: ignore[arg-type]
        assert await everyone("poker.test", True) and await everyone("casino.test", True)

        # It comes back (same serial, from its data directory) and a change is pushed.
        await p.start(extra)
        await p.put(["casino.test", "roulette.test"])

        async def followed() -> bool:
            return await everyone("roulette.test", True) and await everyone("poker.test", False)

        await until(followed, "every follower to take the change after the restart", 60)
    finally:
        for edge in edges:
            await edge.stop()
        await unbound.stop()
        if (last := await p.stop()) is not None:
            primaries.append(last)
        await p.upstream.stop()
    # The followers' first transfer was an AXFR; after the primary's restart, IXFR resumed.
    for edge in edges:
        kinds = [e["kind"] for e in edge.events("zone transferred in")]
        assert "axfr" in kinds and "ixfr" in kinds, edge.log()[-3000:]
    served = [e for run in primaries for e in run.events("zone transferred", kind="ixfr")]
    assert len(served) >= 3, "\n".join(run.log()[-3000:] for run in primaries)  # both nodes and Unbound

    # One hit store for the fleet: both nodes' hits are there.
    rc, out, err = await betblock("hits", "--config", str(nodes[0][1]), "list", "--json", "--limit", "1000")
    assert rc == 0, err
    hits = json.loads(out)["hits"]
    assert {h["node"] for h in hits} == {"edge-1", "edge-2"}
    assert {h["name"] for h in hits} >= {"casino.test", "www.poker.test"}
