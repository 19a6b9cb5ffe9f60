"""The hit filter knows every action the resolver records: a hit of an RPZ ``drop`` rule (no
answer) and of a ``tcp-only`` rule (TC=1 over UDP) are found through /v1/hits?action=..."""

from __future__ import annotations

import typing
from pathlib import Path

import aiohttp
import dns.flags

from feeds.snapshot import Action
from hits.query import ACTIONS, FILTER_ACTIONS
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import RawUdp, query, udp, wait_until

TOKEN = "t0ken-for-tests-only"
ZONE = """$ORIGIN rpz.test.
@ SOA ns hostmaster 1 3600 600 86400 300
drop.test CNAME rpz-drop.
tcp.test CNAME rpz-tcp-only.
"""


def test_the_filter_takes_every_action_a_rule_can_have() -> None:
    # hits must not import feeds, so the list is written twice; this keeps the two alike.
    assert set(ACTIONS) == set(typing.get_args(Action))
    assert {"drop", "tcp-only", "observe:drop", "observe:tcp-only"} <= set(FILTER_ACTIONS)


async def test_drop_and_tcp_only_hits_are_found_by_the_action_filter(node: NodeFactory, tmp_path: Path) -> None:
    (tmp_path / "zone.rpz").write_text(ZONE)
    app = await node(
        lists={"zone": []},
        agencies=[{"id": "zone", "sources": [{"kind": "file", "path": str(tmp_path / "zone.rpz"), "format": "rpz"}]}],
        http={"admin_token": TOKEN},
        hits={"flush_interval": 3600},
    )
    port = port_of(app)
    dropped = await RawUdp.open(port)
    try:
        dropped.send(query("drop.test").to_wire())  # no answer comes: the hit is counted as blocked
        assert (await udp(port, query("tcp.test", edns=True))).flags & dns.flags.TC
        await wait_until(lambda: app.pipeline.counters.snapshot()["blocked"] == 2, what="both queries answered by the policy")
    finally:
        dropped.close()
    await app.recorder.flush()
    assert app.http is not None and app.http.bound is not None
    url = "http://%s:%d/v1/hits" % app.http.bound
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        for action, name in (("drop", "drop.test"), ("tcp-only", "tcp.test")):
            async with s.get(url, params={"action": action}) as r:
                assert r.status == 200, await r.text()
                assert [(h["name"], h["action"]) for h in (await r.json())["hits"]] == [(name, action)]
        async with s.get(url, params={"action": "observe:drop"}) as r:  # none in observe mode here
            assert r.status == 200 and (await r.json())["hits"] == []
