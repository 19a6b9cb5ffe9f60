"""The DNS listeners: UDP datagrams and TCP streams in, answers out.

Owns sockets only: UDP sockets (large receive buffers so bursts queue instead of dropping; read
and written in batches by ``resolver/udp.py``),
TCP connections with 2-byte length framing, several queries per connection answered as they
complete, a deadline per message, read back-pressure from the write buffer, connection caps per
prefix and in all, and a drain on shutdown.
Every message goes to ``Pipeline.answer``; the server makes no policy decisions.

Must not import feeds, hits or the cache.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import resource
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from config.sections import DnsSettings
from resolver import udp
from resolver.pipeline import Answer

log = structlog.get_logger("betblock.server")

_LEN = struct.Struct(">H")
AnswerFn = Callable[[bytes, str, bool], Answer]


# Answers buffered in user space per connection: past HIGH the client is not read until the
# buffer drains to LOW, so a client that sends without reading costs at most about HIGH plus the
# answers of its queries already in flight (the kernel's socket buffers hold the rest).
_WRITE_HIGH = 64 << 10
_WRITE_LOW = 16 << 10
# Connections looked at for one to close when a cap is reached: the least recently active first,
# so the oldest idle one is found within the first few; busy ones (queries in flight) are kept.
_EVICT_SCAN = 64


def prefix_of(address: str) -> str | bytes:
    """The /24 of an IPv4 address or the /56 of an IPv6 one: the unit of the per-prefix cap."""
    if ":" not in address:
        return address.rpartition(".")[0]
    if address.startswith("::ffff:") and "." in address:
        return address[7:].rpartition(".")[0]  # IPv4-mapped, from a dual-stack listener
    try:
        return ipaddress.IPv6Address(address.partition("%")[0]).packed[:7]
    except ValueError:
        return address


class TcpConnection(asyncio.Protocol):
    """One client TCP connection: framed queries, answered in completion order.

    Reading stops while the connection has ``tcp_max_pending_per_connection`` queries in flight
    or more than ``_WRITE_HIGH`` bytes of answers unsent, so a client that never reads holds a
    bounded amount of memory; one that holds more than ``tcp_max_unsent`` is closed. Each
    complete message (not each byte) re-arms the ``tcp_idle_timeout`` deadline, so a client that
    drips bytes is closed after one period."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.client = ""
        self.prefix: str | bytes = ""
        self.pending = 0  # queries waiting on the upstream
        self.tasks: set[asyncio.Task[None]] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.active = 0.0  # loop time of the last complete message, or of progress in writing
        self.reading = True
        self.writable = True  # False between pause_writing and resume_writing
        self.draining = False  # shutdown: no new messages, answer those in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.prefix = prefix_of(self.client)
        if not self.server.admit(self):
            transport.abort()  # over a cap with nobody idle to close: refuse rather than queue
            return
        transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)  # type: ignore[attr-defined]
        self.active = asyncio.get_running_loop().time()
        self._arm(self.server.settings.tcp_idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        if self.timer is not None:
            self.timer.cancel()
        for task in self.tasks:
            task.cancel()
        self.buf = bytearray()

    def idle(self) -> bool:
        """Closing it loses no answer: nothing in flight and nothing unsent."""
        t = self.transport
        return self.pending == 0 and t is not None and t.get_write_buffer_size() == 0

    def drop(self) -> None:
        """Close now, discarding unsent output (the client is not reading it, or is evicted)."""
        self.draining = True  # take no more messages from the buffer
        self.server.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Shutdown: take no more messages (those not yet taken stay unanswered, as datagrams
        still in the socket buffer do); queries in flight are still answered."""
        self.draining = True
        self._take()

    # -- the per-message deadline ---------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(delay, self._deadline)

    def _deadline(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.server.settings.tcp_idle_timeout
        left = self.active + timeout - loop.time()
        if left > 0:
            self._arm(left)  # a message completed (or the client read) since this was armed
        elif self.pending and self.writable:
            self._arm(timeout)  # still working for this client: not idle
        elif self.transport is not None:
            if self.transport.get_write_buffer_size():
                self.server.unread += 1
                self.drop()  # a full period without the client reading: free what it holds
            else:
                self.server.forget(self)
                self.transport.close()

    # -- reading --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._take()

    def _take(self) -> None:
        """Handle the complete messages in the buffer while the connection may take more."""
        if self.transport is None or self.transport.is_closing():
            return
        buf = self.buf
        limit = self.server.settings.tcp_max_pending_per_connection
        took = False
        while len(buf) >= 2 and self.writable and self.pending < limit and not self.draining:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            took = True
            self._handle(msg)
        if took:
            self.active = asyncio.get_running_loop().time()
            self.server.touch(self)
        # A message is at most 65,537 bytes: past that, stop reading until it is taken.
        want = self.writable and self.pending < limit and not self.draining and len(buf) <= 65537
        if want != self.reading:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _handle(self, msg: bytes) -> None:
        res = self.server.answer(msg, self.client, False)
        if res is None:
            return
        if res.__class__ is bytes:
            self._send(res)  # type: ignore[arg-type]
            return
        self.pending += 1
        task = asyncio.ensure_future(self._later(res))  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, pending: Coroutine[Any, Any, bytes | None]) -> None:
        try:
            resp = await pending
        finally:
            self.pending -= 1
        if resp is not None:
            self._send(resp)
        if self.buf or not self.reading:
            self._take()

    # -- writing --------------------------------------------------------------------------

    def _send(self, resp: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_LEN.pack(len(resp)) + resp)
            if t.get_write_buffer_size() > self.server.settings.tcp_max_unsent:
                self.server.unread += 1
                self.drop()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading it too, and give it a full period to start.
        self.writable = False
        self.active = asyncio.get_running_loop().time()
        self._take()

    def resume_writing(self) -> None:
        self.writable = True
        self.active = asyncio.get_running_loop().time()
        self._take()


class TcpServer:
    """Tracks open TCP connections for the caps, eviction and shutdown.

    ``connections`` and each prefix's dict are ordered by last activity (a complete message), so
    the least recently active connection comes first when one must make room."""

    def __init__(self, settings: DnsSettings, answer: AnswerFn) -> None:
        self.settings = settings
        self.answer = answer
        self.connections: dict[TcpConnection, None] = {}
        self.prefixes: dict[str | bytes, dict[TcpConnection, None]] = {}
        self.max_connections = settings.tcp_max_connections  # see budget()
        self.rejected = 0  # refused at a cap, nobody idle to close
        self.evicted = 0  # idle connections closed to make room for a new one
        self.unread = 0  # closed because the client did not read its answers
        self.empty = asyncio.Event()
        self.empty.set()

    def admit(self, conn: TcpConnection) -> bool:
        """Make room for ``conn`` under the per-prefix and global caps, or refuse it."""
        group = self.prefixes.get(conn.prefix)
        if group is not None and len(group) >= self.settings.tcp_max_connections_per_prefix:
            if not self._evict(group):
                self.rejected += 1
                return False
        if len(self.connections) >= self.max_connections:
            if not self._evict(self.connections):
                self.rejected += 1
                return False
        self.connections[conn] = None
        self.prefixes.setdefault(conn.prefix, {})[conn] = None
        self.empty.clear()
        return True

    def _evict(self, group: dict[TcpConnection, None]) -> bool:
        for i, victim in enumerate(group):
            if i >= _EVICT_SCAN:
                break
            if victim.idle():
                self.evicted += 1
                victim.drop()
                return True
        return False

    def budget(self) -> int:
        """The connection cap under the descriptor limit: ``tcp_max_connections``, or a quarter
        of the soft limit when that is less (256 under the common 1,024), so that TCP clients
        cannot take the descriptors upstream sockets, HTTP and the stores need."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        configured = self.settings.tcp_max_connections
        if soft != resource.RLIM_INFINITY and soft // 4 < configured:
            self.max_connections = max(16, soft // 4)
            log.warning(
                "TCP connection cap lowered to fit the descriptor limit",
                configured=configured, cap=self.max_connections, nofile=soft,
            )
        else:
            self.max_connections = configured
        return self.max_connections

    def waiting_on_clients(self) -> int:
        """Connections not read now because their clients are not reading their answers."""
        return sum(1 for conn in self.connections if not conn.writable)

    def touch(self, conn: TcpConnection) -> None:
        """``conn`` completed a message: it becomes the most recently active."""
        if self.connections.pop(conn, 0) is None:
            self.connections[conn] = None
            group = self.prefixes[conn.prefix]
            del group[conn]
            group[conn] = None

    def forget(self, conn: TcpConnection) -> None:
        if self.connections.pop(conn, 0) is None:
            group = self.prefixes[conn.prefix]
            del group[conn]
            if not group:
                del self.prefixes[conn.prefix]
            if not self.connections:
                self.empty.set()


class DnsServer:
    """All configured listeners; ``start`` binds them, ``close`` releases them."""

    def __init__(
        self,
        settings: DnsSettings,
        answer: AnswerFn,
        rcvbuf: int = 4 << 20,
        sockets: list[tuple[socket.socket, socket.socket | None]] | None = None,
    ) -> None:
        self.settings = settings
        self.answer = answer
        self.rcvbuf = rcvbuf
        # Bound by someone else (a worker process gets its UDP and listening TCP socket per
        # listen address from the control plane, which binds them with SO_REUSEPORT): served
        # as they are instead of binding ``settings.listen``.
        self.sockets = sockets
        self.udp: list[udp.Listener] = []  # one per listen address (resolver/udp.py)
        self.tcp = TcpServer(settings, answer)
        self.tcp_servers: list[asyncio.Server] = []
        self.bound: list[tuple[str, int]] = []  # actual (host, port) per listen address, UDP and TCP share it

    async def start(self) -> None:
        if self.settings.tcp:
            self.tcp.budget()
        if self.sockets is not None:
            for usock, tsock in self.sockets:
                await self._serve_bound(usock, tsock)
            return
        for host, port in self.settings.listen_addresses():
            # Port 0 (tests): the kernel picks a free UDP port and TCP must take the same number,
            # which another socket may hold (a client's connection in TIME_WAIT, say). Pick again
            # rather than fail; a configured port is tried once.
            for attempt in range(20 if port == 0 else 1):
                try:
                    bound = await self._listen(host, port)
                    break
                except OSError as exc:
                    if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                        raise
            self.bound.append((host, bound))
            log.info("listening", address=host, port=bound, tcp=self.settings.tcp)

    async def _listen(self, host: str, port: int) -> int:
        """Bind UDP, and TCP on the same port; return the port. Nothing stays bound on error."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        port = sock.getsockname()[1]  # port 0 in tests: TCP takes the same number
        listener = await udp.listen(sock, self.answer, self.settings.udp_batch)
        if self.settings.tcp:
            try:
                srv = await loop.create_server(
                    lambda: TcpConnection(self.tcp), host, port, reuse_address=True, backlog=1024
                )
            except OSError:
                listener.close()
                raise
            self.tcp_servers.append(srv)
        self.udp.append(listener)
        return port

    async def _serve_bound(self, usock: socket.socket, tsock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        host, port = usock.getsockname()[:2]
        self.udp.append(await udp.listen(usock, self.answer, self.settings.udp_batch))
        if tsock is not None:
            tsock.setblocking(False)
            self.tcp_servers.append(await loop.create_server(lambda: TcpConnection(self.tcp), sock=tsock, backlog=1024))
        self.bound.append((host, port))

    async def close(self, drain: float = 5.0, flush: float = 2.0) -> None:
        """Stop accepting, answer what is in flight (each query is bounded by its deadline; at
        most ``drain`` seconds), send it, then close. TCP clients get their answers as UDP
        clients do; a client that does not read them is cut off after ``flush`` seconds."""
        for srv in self.tcp_servers:
            srv.close()
        conns = list(self.tcp.connections)
        for conn in conns:
            conn.drain()
        pending: list[asyncio.Future[Any]] = [listener.drained() for listener in self.udp if listener.waiting]
        pending += [t for c in conns for t in c.tasks]
        if pending:
            await asyncio.wait(pending, timeout=drain)
        for conn in list(self.tcp.connections):
            if conn.transport is not None:
                conn.transport.close()  # after the write buffer is sent
        try:
            async with asyncio.timeout(flush):
                await self.tcp.empty.wait()
        except TimeoutError:
            for conn in list(self.tcp.connections):
                conn.drop()
        for srv in self.tcp_servers:
            await srv.wait_closed()
        for listener in self.udp:
            listener.close()
