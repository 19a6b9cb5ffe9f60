"""Forwarding to upstream resolvers over UDP, with TCP on truncation and failover.

Owns the exchange with upstream servers: a pool of pre-opened sockets per server on random
source ports, rotated (``PortPool``), a random ID per attempt, validation of every reply (source
address and port by the connected socket, then ID and question) so that a spoofed or stray reply
is ignored rather than accepted (cache-poisoning defence), TCP retry when
the reply is truncated, and failover to the next server on timeout, network error, SERVFAIL,
REFUSED, FORMERR or NOTIMP. One deadline, set by the caller, bounds the whole exchange.

A question's attempts are an ``Exchange`` driven by callbacks: the reply is matched inside the
pool socket's reader callback and handed straight to the caller's ``done``, with no task and
no loop iteration in between (only TCP after truncation runs as a task). ``resolve`` wraps it
in a coroutine for callers that await.

Must not import the cache, the policy or the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any
from functools import partial

from config.errors import BetblockError
from resolver.timers import FixedDelay
from resolver.wire import (
    CD,
    FORMERR,
    NOTIMP,
    QR,
    RD,
    REFUSED,
    SERVFAIL,
    TYPE_CLASS,
    U16,
    build_query,
    opt_record,
)

_RETRY_RCODES = frozenset((SERVFAIL, REFUSED, FORMERR, NOTIMP))
_LEN = struct.Struct(">H")
# A UDP query after its ID, as build_query writes it: flags and counts by CD, then the question,
# then our OPT record by (UDP size, DO). Built once per exchange from these, not per attempt.
_FLAGS_COUNTS = {cd: U16.pack(RD | (CD if cd else 0)) + b"\x00\x01\x00\x00\x00\x00\x00\x01" for cd in (False, True)}
_OPTS: dict[tuple[int, bool], bytes] = {}


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


class _Port:
    """One pre-opened UDP socket, connected to one upstream server, and its queries in flight."""

    __slots__ = ("sock", "pending", "uses", "limit", "retired")

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.pending: dict[int, Exchange] = {}  # ID -> the exchange waiting for that reply
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
        self.closed = False

    def take(self) -> _Port:
        if self.closed:
            raise ConnectionError("upstream client closed")
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
            for exchange in list(port.pending.values()):
                exchange.failed(exc)
            return
        qid = (data[0] << 8 | data[1]) if len(data) >= 2 else -1
        exchange = port.pending.get(qid)
        if exchange is None or not _matches(data, qid, exchange.question):
            self.client.ignored_replies += 1  # a stray or spoofed reply: keep waiting
            return
        exchange.answered(data)

    def close(self) -> None:
        self.closed = True  # the exchanges failed below find no port to fail over to
        ports = self.order + list(self.retired)
        for port in ports:
            for exchange in list(port.pending.values()):
                exchange.failed(ConnectionError("upstream client closed"))
        for port in ports:
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

    @property
    def attempt_timeout(self) -> float:
        return self.timeouts.delay

    @attempt_timeout.setter
    def attempt_timeout(self, seconds: float) -> None:
        self.timeouts = FixedDelay(seconds)  # a new queue per delay keeps each in expiry order

    def close(self) -> None:
        """Close every pre-opened socket; queries still waiting fail over to nothing."""
        for pool in self.pools.values():
            pool.close()

    def exchange(
        self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool, done: Callable[[bytes | None, Exception | None], None]
    ) -> Exchange:
        """Start asking; ``done(reply, None)`` with the first usable reply or ``done(None,
        UpstreamError)``, called once (possibly before this returns) unless the exchange is
        cancelled first. The caller's deadline calls ``cancel``."""
        ex = Exchange(self, name, qtype, qclass, do, cd, done)
        ex.next()
        return ex

    async def resolve(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool = False) -> bytes:
        """The first usable reply; raises UpstreamError. Cancelling the caller cancels it."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        ex = self.exchange(name, qtype, qclass, do, cd, partial(_settle, future))
        try:
            return await future
        finally:
            ex.cancel()

    async def tcp(
        self, server: tuple[str, int], name: bytes, qtype: int, qclass: int, do: bool, question: bytes, cd: bool = False
    ) -> bytes:
        """One attempt over TCP (after a truncated UDP reply)."""
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


def _settle(future: asyncio.Future[bytes], reply: bytes | None, exc: Exception | None) -> None:
    if not future.done():
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(reply)  # type: ignore[arg-type]


_FAILOVER = (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError)


class Exchange:
    """One question's attempts: the servers in order, up to three rounds, each attempt a UDP
    query on a pool port (TCP when the reply is truncated), until one answers usefully.

    Driven by callbacks: the pool's reader calls ``answered`` or ``failed``, the attempt's
    timer calls ``timed_out``; each ends the attempt (its ID, timer and port released) and
    either finishes or starts the next attempt."""

    __slots__ = ("client", "name", "qtype", "qclass", "do", "cd", "question", "query", "done", "attempt", "errors", "server", "port", "pool", "qid", "timer", "tcp")

    def __init__(
        self,
        client: UpstreamClient,
        name: bytes,
        qtype: int,
        qclass: int,
        do: bool,
        cd: bool,
        done: Callable[[bytes | None, Exception | None], None] | None,
    ) -> None:
        self.client = client
        self.name, self.qtype, self.qclass, self.do, self.cd = name, qtype, qclass, do, cd
        self.question = question = name + TYPE_CLASS.pack(qtype, qclass)
        opt = _OPTS.get((client.udp_size, do))
        if opt is None:
            opt = _OPTS[(client.udp_size, do)] = opt_record(client.udp_size, do)
        self.query = _FLAGS_COUNTS[cd] + question + opt  # the UDP query after its ID
        self.done = done  # None once finished or cancelled
        self.attempt = 0
        self.errors: list[str] | None = None  # what happened to each failed attempt
        self.server: tuple[str, int] | None = None
        self.port: _Port | None = None
        self.pool: PortPool | None = None
        self.qid = 0
        self.timer: list[Any] | None = None  # this attempt's timeout (FixedDelay entry)
        self.tcp: asyncio.Task[bytes] | None = None

    def next(self) -> None:
        """Start the next attempt, or give up after three rounds of the servers."""
        client = self.client
        servers = client.servers
        while self.done is not None:
            if self.attempt >= len(servers) * 3:
                self._finish(None, UpstreamError("; ".join((self.errors or [])[-len(servers) :]) or "no attempt made"))
                return
            server = servers[self.attempt % len(servers)]
            self.attempt += 1
            self.server = server
            try:
                self._send(client.pools[server])
                return
            except _FAILOVER as exc:
                self._release()
                self._failure(type(exc).__name__)
            except Exception as exc:  # our own bug: the caller answers it, nothing hangs
                self._release()
                self._finish(None, exc)
                return

    def _send(self, pool: PortPool) -> None:
        port = pool.take()
        self.pool, self.port = pool, port
        pending = port.pending
        qid = _random.u16()
        while qid in pending:  # two queries in flight on one port never share an ID
            qid = _random.u16()
        self.qid = qid
        pending[qid] = self
        loop = pool.loop
        assert loop is not None
        # One shared timer for all attempts (FixedDelay), not a loop timer each: the timeout
        # fails this attempt over; the caller's deadline still cancels the whole exchange.
        self.timer = self.client.timeouts.add(loop, Exchange.timed_out, self)
        port.sock.send(U16.pack(qid) + self.query)

    def _release(self) -> None:
        """End the UDP attempt: its timer, its ID and its port."""
        timer = self.timer
        if timer is not None:
            timer[1] = timer[2] = None  # FixedDelay.cancel
            self.timer = None
        port = self.port
        if port is not None:
            self.port = None
            if port.pending.get(self.qid) is self:
                del port.pending[self.qid]
            self.pool.release(port)  # type: ignore[union-attr]

    def _failure(self, why: str) -> None:
        key = f"{self.server[0]}:{self.server[1]}"  # type: ignore[index]
        self.client.failures[key] += 1
        if self.errors is None:
            self.errors = []
        self.errors.append(f"{key}: {why}")

    def answered(self, reply: bytes) -> None:
        """A matching UDP reply (checked by the pool)."""
        self._release()
        if reply[2] & 0x02:  # TC (the pool checked that the header is there)
            server = self.pool.server  # type: ignore[union-attr]
            self.tcp = asyncio.ensure_future(self.client.tcp(server, self.name, self.qtype, self.qclass, self.do, self.question, self.cd))
            self.tcp.add_done_callback(self._tcp_done)
            return
        self._checked(reply)

    def _tcp_done(self, task: asyncio.Task[bytes]) -> None:
        self.tcp = None
        if task.cancelled():
            if self.done is not None:  # not by us: fail over as on a network error
                self._failure("CancelledError")
                self.next()
            return
        exc = task.exception()
        if exc is not None:
            if self.done is None:
                return
            if not isinstance(exc, _FAILOVER):
                self._finish(None, exc)  # type: ignore[arg-type]
                return
            self._failure(type(exc).__name__)
            self.next()
            return
        if self.done is not None:
            self._checked(task.result())

    def _checked(self, reply: bytes) -> None:
        rcode = reply[3] & 0xF
        if rcode in _RETRY_RCODES:
            self._failure(f"rcode {rcode}")
            self.next()
            return
        self._finish(reply, None)

    def failed(self, exc: Exception) -> None:
        """A network error on the attempt's port (ICMP unreachable) or the pool closing."""
        self._release()
        self._failure(type(exc).__name__)
        self.next()

    def timed_out(self) -> None:
        self.timer = None
        self._release()
        self._failure("TimeoutError")
        self.next()

    def _finish(self, reply: bytes | None, exc: Exception | None) -> None:
        done = self.done
        self.done = None
        if done is not None:
            done(reply, exc)

    def cancel(self) -> None:
        """The caller gave up (its deadline): stop, and never call ``done``."""
        self.done = None
        self._release()
        if self.tcp is not None:
            self.tcp.cancel()
            self.tcp = None
