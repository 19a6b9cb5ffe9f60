"""Idle and half-sent HTTP connections must not take the descriptors DNS needs (issue 8, item 5).

A real `betblock serve` under a 1,024 open-files limit; 1,100 HTTP connections that never finish
a request (idle, headers cut off, a body that never comes) on the API and the warning page.
Forwarded queries over UDP and TCP still answer, the API still answers, and every one of those
connections is closed by the server.
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from tests.dnsutil import HOST
from tests.fakedns import FakeDns
from tests.procutil import Serve, node_toml, write_node

LIMIT = 1024
CONNECTIONS = 1100


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@pytest.fixture
def many_descriptors() -> None:
    """This test process holds 1,100 client sockets itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNECTIONS + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open-files limit ({hard}) is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))


async def _open(port: int, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    if first:
        writer.write(first)
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            if not await reader.read(65536):
                return
        except ConnectionError:
            return


async def test_idle_http_connections_leave_descriptors_for_dns(tmp_path: Path, many_descriptors: None) -> None:
    upstream = await FakeDns().start()
    upstream.add("ok.test", "A", "192.0.2.7")
    cfg = write_node(tmp_path, upstream, action=None, http="idle_timeout = 2.0\n")
    node = await Serve.start(cfg, preexec_fn=_low_nofile)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        kinds = [
            b"",  # connects and says nothing
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never finished
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\ntoken=",  # body never comes
        ]
        for i in range(CONNECTIONS):
            port = node.warning_port if i % 4 == 3 else node.http_port
            conns.append(await _open(port, kinds[i % len(kinds)]))

        # Forwarded DNS needs a new socket per upstream attempt; TCP clients need one each.
        q = dns.message.make_query("ok.test", "A")
        r = await dns.asyncquery.udp(q, HOST, port=node.dns_port, timeout=3)
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.7", node.log()
        r = await dns.asyncquery.tcp(dns.message.make_query("ok.test", "A"), HOST, port=node.dns_port, timeout=3)
        assert r.answer[0][0].address == "192.0.2.7"

        # The API answers a new client (an idle connection makes room for it).
        reader, writer = await _open(node.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readline()
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()

        # Every connection that never completed a request is closed by the server.
        async with asyncio.timeout(60):
            await asyncio.gather(*(_closed_by_server(r) for r, _ in conns))
    finally:
        for _, w in conns:
            w.close()
        code = await node.stop()
        await upstream.stop()
    assert code == 0, node.log()


async def test_a_client_that_stops_sending_its_body_is_closed(tmp_path: Path) -> None:
    """An authenticated push whose body stalls is closed after http.body_timeout."""
    upstream = await FakeDns().start()
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(node_toml(tmp_path, 0, upstream, http='body_timeout = 1.0\nidle_timeout = 30.0\nadmin_token = "a-long-admin-token-for-tests"\n'))
    node = await Serve.start(cfg)
    try:
        reader, writer = await _open(
            node.http_port,
            b"PUT /v1/allowlist/ok.test HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-long-admin-token-for-tests\r\n"
            b"Content-Length: 100\r\n\r\n{",
        )
        async with asyncio.timeout(20):
            await _closed_by_server(reader)
        writer.close()
    finally:
        code = await node.stop()
        await upstream.stop()
    assert code == 0, node.log()
