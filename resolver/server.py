"""The DNS listeners: UDP datagrams and TCP streams in, answers out.

Owns sockets only: UDP sockets (large receive buffers so bursts queue instead of dropping; read
and written in batches by ``resolver/udp.py``),
TCP connections with 2-byte length framing, several queries per connection answered as they
complete, an idle timeout, a cap on pending queries per connection and on open connections.
Every message goes to ``Pipeline.answer``; the server makes no policy decisions.

Must not import feeds, hits or the cache.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from config.settings import DnsSettings
from resolver import udp
from resolver.pipeline import Answer

log = structlog.get_logger("betblock.server")

_LEN = struct.Struct(">H")
AnswerFn = Callable[[bytes, str, bool], Answer]


class TcpConnection(asyncio.Protocol):
    """One client TCP connection: framed queries, answered in completion order."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.client = ""
        self.pending = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.idle: asyncio.TimerHandle | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        if len(self.server.connections) >= self.server.settings.tcp_max_connections:
            self.server.rejected += 1
            transport.close()  # over the cap: close at once rather than queue unboundedly
            return
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        for task in self.tasks:
            task.cancel()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.server.settings.tcp_idle_timeout, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self.pending == 0 and self.transport is not None:
            self.transport.close()
        else:
            self._arm_idle()  # still working for this client: not idle

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm_idle()
        buf = self.buf
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self._handle(msg)
        if self.pending >= self.server.settings.tcp_max_pending_per_connection and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

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
            if self.paused and self.pending < self.server.settings.tcp_max_pending_per_connection:
                self.paused = False
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.resume_reading()
        if resp is not None:
            self._send(resp)

    def _send(self, resp: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LEN.pack(len(resp)) + resp)


class TcpServer:
    """Accepts TCP connections and tracks them for the connection cap and shutdown."""

    def __init__(self, settings: DnsSettings, answer: AnswerFn) -> None:
        self.settings = settings
        self.answer = answer
        self.connections: set[TcpConnection] = set()
        self.rejected = 0


class DnsServer:
    """All configured listeners; ``start`` binds them, ``close`` releases them."""

    def __init__(self, settings: DnsSettings, answer: AnswerFn, rcvbuf: int = 4 << 20) -> None:
        self.settings = settings
        self.answer = answer
        self.rcvbuf = rcvbuf
        self.udp: list[udp.Listener] = []  # one per listen address (resolver/udp.py)
        self.tcp = TcpServer(settings, answer)
        self.tcp_servers: list[asyncio.Server] = []
        self.bound: list[tuple[str, int]] = []  # actual (host, port) per listen address, UDP and TCP share it

    async def start(self) -> None:
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

    async def close(self) -> None:
        for srv in self.tcp_servers:
            srv.close()
        for conn in list(self.tcp.connections):
            if conn.transport is not None:
                conn.transport.close()
        for srv in self.tcp_servers:
            await srv.wait_closed()
        pending = [t for listener in self.udp for t in listener.tasks]
        if pending:
            # Let queries already waiting on an upstream finish (each is bounded by its deadline).
            await asyncio.wait(pending, timeout=5)
        for listener in self.udp:
            listener.close()
