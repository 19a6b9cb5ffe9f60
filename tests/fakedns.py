"""A small authoritative DNS server for tests, on 127.0.0.1, with knobs for edge cases.

It answers from a dict of records (dnslib), over UDP and TCP, and can be told to delay, truncate
over UDP, answer with a wrong ID or from the wrong question first, answer SERVFAIL, or stay
silent. It counts the queries it receives so that tests can assert what reached the upstream.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from dataclasses import dataclass, field

from dnslib import EDNS0, DNSError, QTYPE, RCODE, RR, DNSRecord, A, AAAA, CNAME, SOA, TXT


@dataclass
class Behaviour:
    delay: float = 0.0  # seconds before answering
    truncate_udp: bool = False  # UDP replies carry TC and no records
    wrong_id_first: bool = False  # send a reply with a wrong ID (and a wrong question) first
    rcode: int | None = None  # force this rcode
    silent: bool = False  # never answer
    edns_reply: bool = False  # every reply carries an OPT record, as real servers' replies do
    truncate_tcp: bool = False  # TCP replies carry TC and no records too (a broken upstream)
    gate: asyncio.Event | None = None  # UDP replies wait until it is set (queries pile up in flight)


@dataclass
class FakeDns:
    """Zone data: name -> list of (type, rdata, ttl). Names without a trailing dot."""

    records: dict[str, list[tuple[str, object, int]]] = field(default_factory=dict)
    behaviour: Behaviour = field(default_factory=Behaviour)
    soa_minimum: int = 60
    host: str = "127.0.0.1"
    port: int = 0
    udp_queries: int = 0
    tcp_queries: int = 0
    seen: list[tuple[str, str, bool]] = field(default_factory=list)  # (name, type, DO)
    checking_disabled: list[bool] = field(default_factory=list)  # the CD bit of each query
    # (query ID, client source port, "udp" or "tcp") of every query received, in arrival order.
    sources: list[tuple[int, int, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # queries dnslib could not parse

    def add(self, name: str, rtype: str, value: object, ttl: int = 300) -> None:
        self.records.setdefault(name.lower().rstrip("."), []).append((rtype, value, ttl))

    def reply_for(self, data: bytes, udp: bool) -> bytes | None:
        try:
            reply = self._reply(data, udp)
        except (DNSError, UnicodeError) as exc:
            # dnslib cannot read every name a client may send (binary labels): answer FORMERR
            # with the query echoed, rather than never answering.
            self.unreadable.append(f"{type(exc).__name__}: {exc}")
            out = bytearray(data)
            out[2] |= 0x80
            out[3] = (out[3] & 0xF0) | RCODE.FORMERR
            return bytes(out)
        if self.behaviour.edns_reply:
            reply.add_ar(EDNS0(udp_len=4096))
        return reply.pack()

    def _reply(self, data: bytes, udp: bool) -> DNSRecord:
        req = DNSRecord.parse(data)
        qname = str(req.q.qname).rstrip(".").lower()
        qtype = QTYPE[req.q.qtype]
        do = any(rr.rtype == 41 and (rr.ttl & 0x8000) for rr in req.ar)
        self.seen.append((qname, qtype, do))
        self.checking_disabled.append(bool(req.header.cd))
        b = self.behaviour
        reply = req.reply()
        if b.rcode is not None:
            reply.header.rcode = b.rcode
            return reply
        if (udp and b.truncate_udp) or (not udp and b.truncate_tcp):
            reply.header.tc = 1
            return reply
        rrs = self.records.get(qname)
        if rrs is None:
            reply.header.rcode = RCODE.NXDOMAIN
            self._soa(reply, qname)
            return reply
        matched = False
        for rtype, value, ttl in rrs:
            if rtype == qtype or rtype == "CNAME":
                reply.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=_rdata(rtype, value), ttl=ttl))
                matched = True
                if rtype == "CNAME":
                    target = str(value).rstrip(".").lower()
                    for rt2, v2, ttl2 in self.records.get(target, []):
                        if rt2 == qtype:
                            reply.add_answer(RR(target, getattr(QTYPE, rt2), rdata=_rdata(rt2, v2), ttl=ttl2))
        if not matched:
            self._soa(reply, qname)
        return reply

    def _soa(self, reply: DNSRecord, qname: str) -> None:
        zone = ".".join(qname.split(".")[-2:]) or "."
        reply.add_auth(
            RR(zone, QTYPE.SOA, ttl=300, rdata=SOA("ns." + zone, "host." + zone, (1, 3600, 600, 86400, self.soa_minimum)))
        )

    async def start(self) -> FakeDns:
        loop = asyncio.get_running_loop()
        wanted = self.port
        # With port 0, TCP must take the UDP port's number, which another socket may hold (a
        # client connection in TIME_WAIT): pick again.
        for attempt in range(20):
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, wanted))
            self.port = self._udp.get_extra_info("sockname")[1]
            # A burst of misses reaches us before this loop (shared with an in-process node) reads
            # any: the default buffer holds about 256 datagrams, and a lost query would be retried.
            self._udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            try:
                self._tcp = await asyncio.start_server(self._handle_tcp, self.host, self.port)
                return self
            except OSError as exc:
                self._udp.close()
                if wanted != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        self._udp.close()
        self._tcp.close()
        await self._tcp.wait_closed()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                data = await reader.readexactly(size)
                self.tcp_queries += 1
                if len(data) >= 2:
                    self.sources.append((struct.unpack_from(">H", data)[0], peer[1], "tcp"))
                if self.behaviour.delay:
                    await asyncio.sleep(self.behaviour.delay)
                if self.behaviour.silent:
                    continue
                resp = self.reply_for(data, udp=False)
                if resp:
                    writer.write(struct.pack(">H", len(resp)) + resp)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDns) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.udp_queries += 1
        if len(data) >= 2:
            self.server.sources.append((struct.unpack_from(">H", data)[0], addr[1], "udp"))
        asyncio.ensure_future(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        b = self.server.behaviour
        if b.gate is not None:
            await b.gate.wait()
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.silent:
            return
        if b.wrong_id_first:
            bogus = DNSRecord.parse(data).reply()
            bogus.header.id = (bogus.header.id + 1) & 0xFFFF
            bogus.add_answer(RR(str(bogus.q.qname), QTYPE.A, rdata=A("6.6.6.6"), ttl=86400))
            self.transport.sendto(bogus.pack(), addr)
        resp = self.server.reply_for(data, udp=True)
        if resp:
            self.transport.sendto(resp, addr)


def _rdata(rtype: str, value: object):
    if rtype == "A":
        return A(str(value))
    if rtype == "AAAA":
        return AAAA(str(value))
    if rtype == "CNAME":
        return CNAME(str(value))
    if rtype == "TXT":
        return TXT(str(value))
    raise ValueError(rtype)
