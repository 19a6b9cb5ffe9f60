"""Forwarding to upstream resolvers over UDP, with TCP on truncation and failover.

Owns the exchange with upstream servers: a pool of pre-opened sockets per server on random
source ports, rotated (``PortPool``), a random ID per attempt, validation of every reply (source
address and port by the connected socket, then ID and question) so that a spoofed or stray reply
is ignored rather than accepted (cache-poisoning defence), TCP retry when
the reply is truncated, and failover to the next server on timeout, network error, SERVFAIL,
REFUSED, FORMERR or NOTIMP. One deadline, set by the caller, bounds the whole exchange.

Must not import the cache, the policy or the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Sequence

from config.errors import BetblockError
from resolver.wire import (
    FORMERR,
    HEADER,
    NOTIMP,
    QR,
    REFUSED,
    SERVFAIL,
    TC,
    build_query,
)

_RETRY_RCODES = frozenset((SERVFAIL, REFUSED, FORMERR, NOTIMP))
_LEN = struct.Struct(">H")


class UpstreamError(BetblockError):
    """No upstream gave a usable answer; the message says what happened to each."""


def _matches(reply: bytes, qid: int, question: bytes) -> bool:
    """Same ID, a response, and the question we asked (letter case ignored)."""
    if len(reply) < 12 + len(question):
        return False
    rid, flags, qdcount = struct.unpack_from(">HHH", reply)
    if rid != qid or not flags & QR or qdcount != 1:
        return False
    # Only the name is compared case-insensitively: lower-casing the type and class bytes too
    # turned e.g. HTTPS (65 = 0x0041, "A") into 0x0061, so every reply to such a type was
    # ignored as a mismatch and the client got SERVFAIL.
    split = len(question) - 4
    return reply[12 : 12 + split].lower() == question[:split] and reply[12 + split : 12 + len(question)] == question[split:]


class _Entropy:
    """Unpredictable 16-bit numbers from the kernel's CSPRNG, drawn 4 KiB at a time: one
    getrandom call per 2,048 numbers instead of one (or two) per query."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = memoryview(b"")
        self.pos = 0

    def u16(self) -> int:
        pos = self.pos
        if pos >= len(self.buf):
            self.buf = memoryview(os.urandom(4096))
            pos = 0
        self.pos = pos + 2
        return self.buf[pos] << 8 | self.buf[pos + 1]

    def below(self, n: int) -> int:
        """Uniform in [0, n) for n <= 65536 (rejection sampling, no modulo bias)."""
        limit = 65536 - 65536 % n
        while True:
            v = self.u16()
            if v < limit:
                return v % n


_random = _Entropy()
# A forked worker must not replay its parent's unused numbers.
os.register_at_fork(after_in_child=lambda: setattr(_random, "pos", len(_random.buf)))


def _expire(reply: asyncio.Future[bytes]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


class _Port:
    """One pre-opened UDP socket, connected to one upstream server, and its queries in flight."""

    __slots__ = ("sock", "pending", "uses", "limit", "retired")

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}  # ID -> (reply, question)
        self.uses = 0
        self.limit = limit
        self.retired = False


class PortPool:
    """Pre-opened UDP sockets on random source ports to one server, rotated (as Unbound's
    outgoing-range): a query takes one of the least recently used half at random, a socket is
    replaced by a fresh one (a new random port) after about ``reuse`` queries, and at most
    ``size`` retired sockets wait for their last replies, so descriptors stay bounded by
    2 x ``size`` whatever the load and however silent the server."""

    def __init__(self, server: tuple[str, int], size: int, reuse: int, client: UpstreamClient) -> None:
        self.server = server
        self.size = size
        self.reuse = reuse
        self.client = client
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.order: list[_Port] = []  # least recently used first
        self.retired: set[_Port] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # sockets opened over the pool's life (rotation shows here)

    def take(self) -> _Port:
        order = self.order
        if len(order) < self.size:
            # The pool fills one socket per query (the first misses each open one), so no
            # single query pays for opening them all.
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            port = self._open()
        else:
            # Never one of the most recently used half: a port does not repeat within size/2
            # queries, and which of the other half goes next is unpredictable.
            port = order.pop(_random.below(len(order) + 1 >> 1))
        port.uses += 1
        if port.uses >= port.limit and len(self.retired) < self.size:
            port.retired = True
            self.retired.add(port)
            order.append(self._open())
        else:
            order.append(port)
        return port

    def release(self, port: _Port) -> None:
        """A query on ``port`` ended; a retired port closes with its last query."""
        if port.retired and not port.pending:
            self.retired.discard(port)
            self._close(port)

    def _open(self) -> _Port:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # connect() binds a random ephemeral port (Linux randomises it) and makes the kernel
            # drop datagrams from any other source address and port: the address check.
            sock.connect(self.server)
            port = _Port(sock, self.reuse // 2 + _random.below(self.reuse + 1))
            assert self.loop is not None
            self.loop.add_reader(sock.fileno(), self._readable, port)
        except BaseException:
            sock.close()
            raise
        self.opened += 1
        return port

    def _close(self, port: _Port) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(port.sock.fileno())
        port.sock.close()

    def _readable(self, port: _Port) -> None:
        # One datagram per wakeup: the reader is level-triggered, so another queued reply calls
        # again, and the usual single reply costs no second recv ending in BlockingIOError.
        try:
            data = port.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # ICMP port or host unreachable, reported on the connected socket: every query on
            # it went to this server, so fail them over at once.
            for reply, _ in port.pending.values():
                if not reply.done():
                    reply.set_exception(exc)
            return
        qid = (data[0] << 8 | data[1]) if len(data) >= 2 else -1
        entry = port.pending.get(qid)
        if entry is None or entry[0].done() or not _matches(data, qid, entry[1]):
            self.client.ignored_replies += 1  # a stray or spoofed reply: keep waiting
            return
        entry[0].set_result(data)

    def close(self) -> None:
        for port in self.order + list(self.retired):
            for reply, _ in port.pending.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("upstream client closed"))
            self._close(port)
        self.order.clear()
        self.retired.clear()


class UpstreamClient:
    """Sends a question to the configured servers in order until one answers usefully."""

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        attempt_timeout: float,
        udp_size: int,
        ports: int = 128,
        port_reuse: int = 32,
    ) -> None:
        if not servers:
            raise ValueError("no upstream servers configured (and none in /etc/resolv.conf)")
        self.servers = list(servers)
        self.attempt_timeout = attempt_timeout
        self.udp_size = udp_size
        self.failures: dict[str, int] = {f"{h}:{p}": 0 for h, p in self.servers}
        self.ignored_replies = 0
        self.pools = {server: PortPool(server, ports, port_reuse, self) for server in self.servers}

    def close(self) -> None:
        """Close every pre-opened socket; queries still waiting fail over to nothing."""
        for pool in self.pools.values():
            pool.close()

    async def resolve(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool = False) -> bytes:
        """The first usable reply; raises UpstreamError. The caller's deadline cancels it."""
        question = name + struct.pack(">HH", qtype, qclass)
        errors: list[str] = []
        # Cycle through the servers until the caller's deadline cancels us.
        for attempt in range(len(self.servers) * 3):
            server = self.servers[attempt % len(self.servers)]
            key = f"{server[0]}:{server[1]}"
            try:
                reply = await self._udp(server, name, qtype, qclass, do, question, cd)
                if HEADER.unpack_from(reply)[1] & TC:
                    reply = await self._tcp(server, name, qtype, qclass, do, question, cd)
            except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                self.failures[key] += 1
                errors.append(f"{key}: {type(exc).__name__}")
                continue
            rcode = HEADER.unpack_from(reply)[1] & 0xF
            if rcode in _RETRY_RCODES:
                self.failures[key] += 1
                errors.append(f"{key}: rcode {rcode}")
                continue
            return reply
        raise UpstreamError("; ".join(errors[-len(self.servers) :]) or "no attempt made")

    async def _udp(
        self, server: tuple[str, int], name: bytes, qtype: int, qclass: int, do: bool, question: bytes, cd: bool = False
    ) -> bytes:
        pool = self.pools[server]
        port = pool.take()
        pending = port.pending
        qid = _random.u16()
        while qid in pending:  # two queries in flight on one port never share an ID
            qid = _random.u16()
        loop = pool.loop
        assert loop is not None
        reply: asyncio.Future[bytes] = loop.create_future()
        pending[qid] = (reply, question)
        # A timer on the future rather than asyncio.timeout: a third of the cost, same effect
        # (TimeoutError fails this attempt over; the caller's deadline still cancels us).
        timer = loop.call_later(self.attempt_timeout, _expire, reply)
        try:
            port.sock.send(build_query(qid, name, qtype, qclass, do, self.udp_size, cd))
            return await reply
        finally:
            timer.cancel()
            del pending[qid]
            pool.release(port)

    async def _tcp(
        self, server: tuple[str, int], name: bytes, qtype: int, qclass: int, do: bool, question: bytes, cd: bool = False
    ) -> bytes:
        qid = _random.u16()
        query = build_query(qid, name, qtype, qclass, do, 65535, cd)
        reader, writer = await asyncio.open_connection(server[0], server[1])
        try:
            writer.write(_LEN.pack(len(query)) + query)
            async with asyncio.timeout(self.attempt_timeout * 2):
                await writer.drain()
                while True:
                    size = _LEN.unpack(await reader.readexactly(2))[0]
                    reply = await reader.readexactly(size)
                    if _matches(reply, qid, question):
                        return reply
                    self.ignored_replies += 1
        finally:
            writer.close()
