"""Forwarding to upstream resolvers over UDP, with TCP on truncation and failover.

Owns the exchange with upstream servers: a fresh socket (so a kernel-chosen random source port)
and a random ID per attempt, validation of every reply (source address, ID, question) so that a
spoofed or stray reply is ignored rather than accepted (cache-poisoning defence), TCP retry when
the reply is truncated, and failover to the next server on timeout, network error, SERVFAIL,
REFUSED, FORMERR or NOTIMP. One deadline, set by the caller, bounds the whole exchange.

Must not import the cache, the policy or the server.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections.abc import Sequence

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


class UpstreamError(Exception):
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


class _UdpExchange(asyncio.DatagramProtocol):
    """One query on one connected socket; resolves with the first reply that matches."""

    def __init__(self, qid: int, question: bytes, server: tuple[str, int]) -> None:
        self.qid = qid
        self.question = question
        self.server = server
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.ignored = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.reply.done():
            return
        if addr[0] != self.server[0] or addr[1] != self.server[1] or not _matches(data, self.qid, self.question):
            self.ignored += 1  # a stray or spoofed reply: keep waiting for the real one
            return
        self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)  # e.g. ICMP port unreachable: fail over at once

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("socket closed"))


class UpstreamClient:
    """Sends a question to the configured servers in order until one answers usefully."""

    def __init__(self, servers: Sequence[tuple[str, int]], attempt_timeout: float, udp_size: int) -> None:
        if not servers:
            raise ValueError("no upstream servers configured (and none in /etc/resolv.conf)")
        self.servers = list(servers)
        self.attempt_timeout = attempt_timeout
        self.udp_size = udp_size
        self.failures: dict[str, int] = {f"{h}:{p}": 0 for h, p in self.servers}
        self.ignored_replies = 0

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
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(qid, question, server), remote_addr=server
        )
        try:
            transport.sendto(build_query(qid, name, qtype, qclass, do, self.udp_size, cd))
            async with asyncio.timeout(self.attempt_timeout):
                return await proto.reply
        finally:
            self.ignored_replies += proto.ignored
            transport.close()

    async def _tcp(
        self, server: tuple[str, int], name: bytes, qtype: int, qclass: int, do: bool, question: bytes, cd: bool = False
    ) -> bytes:
        qid = secrets.randbits(16)
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
