"""Swapping snapshots under load drops no query and never serves a stale block.

Four clients query the in-process node over UDP without pause while an agency replaces its list
ten times through the push API. Every query must be answered; every answer must agree with a
list that was in force while the query was in flight; and right after each PUT returns, names it
removed are answered unblocked and names it added are blocked (the PUT returns once the new
snapshot is installed, and blocked answers are never cached).
"""

from __future__ import annotations

import asyncio

import aiohttp
import dns.exception

from tests.conftest import NodeFactory, port_of
from tests.dnsutil import ede, query, udp
from tests.fakedns import FakeDns
from tests.feeds_plane.helpers import Api, push_agency

PROBES = [f"p{i}.swap.test" for i in range(40)]
FILLER = [f"filler{i}.bulk.test" for i in range(5000)]
SWAPS = 10


def listed(k: int) -> set[str]:
    """List k blocks every probe but those with i % 10 == k % 10, so each swap unblocks four
    names and blocks four others."""
    return {p for i, p in enumerate(PROBES) if i % 10 != k % 10}


async def test_no_query_lost_and_no_stale_block_across_swaps(node: NodeFactory, upstream: FakeDns) -> None:
    for i, p in enumerate(PROBES):
        upstream.add(p, "A", f"192.0.2.{i + 1}", ttl=300)
    app = await node(lists={"pl-mf": []}, agencies=[push_agency("pl-mf")])
    port = port_of(app)
    async with aiohttp.ClientSession() as session:
        api = Api(session, app.http.bound)  # type: ignore[union-attr, arg-type]

        async def put(k: int) -> None:
            status, body = await api.put("pl-mf", sorted(listed(k)) + FILLER)
            assert status == 200 and body["status"] == "applied", body

        acked = started = 0
        await put(0)
        acked = started = 1
        done = asyncio.Event()
        answers: list[tuple[str, int, bool, int]] = []  # (name, acked before, blocked, started after)
        lost: list[str] = []

        async def client(offset: int) -> None:
            i = offset
            while not done.is_set():
                name = PROBES[i % len(PROBES)]
                i += 1
                before = acked
                try:
                    msg = await udp(port, query(name, edns=True), timeout=2.0)
                except dns.exception.Timeout:
                    lost.append(name)
                    continue
                blocked = any(code == 16 for code, _ in ede(msg))
                answers.append((name, before, blocked, started))

        clients = [asyncio.create_task(client(j * 10)) for j in range(4)]
        try:
            for k in range(1, SWAPS + 1):
                started += 1
                await put(k)
                acked += 1
                # Right after the PUT: no stale block, no late block.
                for name in listed(k - 1) - listed(k):
                    msg = await udp(port, query(name, edns=True))
                    assert not any(c == 16 for c, _ in ede(msg)), f"{name} still blocked after swap {k}"
                    assert msg.answer and msg.answer[0][0].address.startswith("192.0.2.")
                for name in listed(k) - listed(k - 1):
                    msg = await udp(port, query(name, edns=True))
                    assert any(c == 16 for c, _ in ede(msg)), f"{name} not blocked after swap {k}"
                await asyncio.sleep(0.05)  # let the clients run between swaps (load, not a wait for a condition)
        finally:
            done.set()
            await asyncio.gather(*clients)

    assert lost == []
    assert len(answers) > 200, len(answers)
    wrong = [
        a for a in answers
        if not any((a[0] in listed(j)) == a[2] for j in range(a[1] - 1, a[3]))
    ]
    assert wrong == []
    assert app.feeds.builder.patches >= SWAPS  # each swap patched the last snapshot: the fast path is what was tested
