"""Client helpers for the integration tests: dnspython queries over UDP/TCP, raw sockets for
malformed input, and a bounded wait on a condition (never a sleep standing in for one)."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.procutil import until

HOST = "127.0.0.1"
TIMEOUT = 3.0


def query(name: str, rdtype: str = "A", *, edns: int | bool = False, payload: int = 1232, do: bool = False) -> dns.message.QueryMessage:
    """A query; ``edns`` False for none, True/0 for EDNS version 0, or another version number."""
    if edns is False and not do:
        return dns.message.make_query(name, rdtype, use_edns=False)
    version = 0 if edns is True else int(edns)
    return dns.message.make_query(name, rdtype, use_edns=version, payload=payload, want_dnssec=do)


async def udp(port: int, q: dns.message.Message, timeout: float = TIMEOUT) -> dns.message.Message:
    # ignore_unexpected: a late answer to another client's query (another test worker's, say)
    # can reach this socket when the kernel hands out that client's port again; it is not the
    # answer to ``q`` (a wrong answer from ``port`` still fails: no answer comes).
    return await dns.asyncquery.udp(q, HOST, port=port, timeout=timeout, ignore_unexpected=True)


async def tcp(port: int, q: dns.message.Message, timeout: float = TIMEOUT) -> dns.message.Message:
    return await dns.asyncquery.tcp(q, HOST, port=port, timeout=timeout)


def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    """(info code, text) of every Extended DNS Error option in the answer."""
    return [(o.code, o.text or "") for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def a_records(msg: dns.message.Message) -> list[str]:
    return sorted(rr.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset)


def first_address(msg: dns.message.Message) -> str | None:
    """The first address record in the answer section (None: none). bench/xfr.py polls with it too."""
    for rrset in msg.answer:
        for rd in rrset:
            if hasattr(rd, "address"):
                return str(rd.address)
    return None


class RawUdp(asyncio.DatagramProtocol):
    """A UDP socket that sends arbitrary bytes and queues every datagram it receives."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, port: int) -> RawUdp:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, remote_addr=(HOST, port))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:  # pragma: no cover - loopback
        pass

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float = TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def recv_id(self, qid: int, timeout: float = TIMEOUT) -> tuple[bytes, list[bytes]]:
        """The first reply with ID ``qid``, and every other reply received before it."""
        others: list[bytes] = []
        async with asyncio.timeout(timeout):
            while True:
                data = await self.replies.get()
                if len(data) >= 2 and struct.unpack_from(">H", data)[0] == qid:
                    return data, others
                others.append(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RawTcp:
    """One TCP connection with 2-byte framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawTcp:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(struct.pack(">H", len(data)) + data)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = TIMEOUT) -> bytes:
        async with asyncio.timeout(timeout):
            size = struct.unpack(">H", await self.reader.readexactly(2))[0]
            return await self.reader.readexactly(size)

    async def eof(self, timeout: float = TIMEOUT) -> bool:
        """True when the server closes the connection within ``timeout`` (data before it is read
        and discarded)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionError:
                    return True
                if not chunk:
                    return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def ask_patiently(port: int, name: str, rdtype: str = "A", seconds: float = 10.0) -> dns.message.Message | None:
    """The answer to one question over UDP, asked anew after each second without one, within
    ``seconds``; None when nothing answered. One try of one second is a timed assertion on a
    loaded machine, where a starved process answers late; a test that means "no answer" says so."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), HOST, port=port, timeout=1.0)
        except (dns.exception.Timeout, dns.query.BadResponse, dns.query.UnexpectedSource):
            # BadResponse, UnexpectedSource: a late answer to an earlier try (or to another
            # server's client) reached a new socket on the same port.
            if time.monotonic() > deadline:
                return None


async def address_of(port: int, name: str) -> str | None:
    """The first A address ``name`` gets from the resolver on ``port`` (None: none, or no answer)."""
    r = await ask_patiently(port, name)
    return None if r is None else first_address(r)


async def wait_until(cond: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds (``procutil.until``, polled often:
    in-process conditions are cheap to ask)."""
    await until(cond, what, timeout, every=0.01)


class FakeClock:
    """A settable clock to replace ``app.cache.clock``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

