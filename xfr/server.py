"""The zone-transfer listener: SOA over UDP and TCP, AXFR and IXFR over TCP, NOTIFY in.

Owns the request policy: the transfer ACL (REFUSED outside it), TSIG (dnspython verifies;
unsigned requests are REFUSED unless they come from ``allow_unsigned``, badly signed ones get
NOTAUTH), the answers (SOA, AXFR, IXFR with AXFR fallback, RFC 1995 / 5936), and the counters
that /metrics reads. Every refusal is logged once per client address and reason (a secondary
that retries every minute must not fill the log). Transfer messages are built in worker threads
(``xfr.zones``), so a million-entry AXFR never holds the event loop.

Incoming NOTIFY (RFC 1996) for a zone betblock *follows* is handed to ``on_notify``.

Must not import the resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import struct
from collections import Counter
from collections.abc import Callable, Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import structlog

from config.errors import BetblockError
from config.settings import XfrSettings
from xfr.zones import Signer, Zone, Zones, messages

log = structlog.get_logger("betblock.xfr")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BATCH = 16  # messages built per trip to the worker thread
IDLE = 30.0  # seconds a transfer connection may stay silent
LOGGED_MAX = 4096


def keyring(keys: dict[str, str]) -> dict[dns.name.Name, dns.tsig.Key]:
    """dnspython keys (hmac-sha256) from ``name -> base64 secret``."""
    return {
        dns.name.from_text(name): dns.tsig.Key(name, secret, dns.tsig.HMAC_SHA256) for name, secret in keys.items()
    }


class Refused(BetblockError):
    """A request we answer with an error code (REFUSED, NOTAUTH, FORMERR) and log once."""

    def __init__(self, rcode: int, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


class XfrServer:
    """Answers transfer and SOA requests for ``zones``; counts what it did."""

    def __init__(
        self, settings: XfrSettings, zones: Zones, on_notify: Callable[[str, str], bool] | None = None
    ) -> None:
        self.settings = settings
        self.zones = zones
        self.keyring = keyring({k: v.get_secret_value() for k, v in settings.keys.items()})
        self.allow: list[Network] = [ipaddress.ip_network(n, strict=False) for n in settings.allow]
        self.unsigned: list[Network] = [ipaddress.ip_network(n, strict=False) for n in settings.allow_unsigned]
        self.on_notify = on_notify
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, result) -> requests
        self.bytes_out = 0
        self._logged: set[tuple[str, str]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._conns: set[asyncio.Task[None]] = set()
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.settings.listen_addresses():
            server = await asyncio.start_server(self._connection, host, port)
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]  # port 0: UDP on the same port as TCP
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
            self._transports.append(transport)
            self.bound.append((host, port))
        log.info("zone transfers served", listen=[f"{h}:{p}" for h, p in self.bound],
                 zones=[z.name for z in self.zones.zones.values()])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for t in self._transports:
            t.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            await server.wait_closed()

    # -- request policy ----------------------------------------------------------------------

    def _refuse_once(self, client: str, reason: str, **kw: object) -> None:
        key = (client, reason)
        if key in self._logged:
            return
        if len(self._logged) < LOGGED_MAX:
            self._logged.add(key)
        log.warning("transfer request refused", client=client, reason=reason, **kw)

    def parse(self, wire: bytes, client: str) -> dns.message.Message | None:
        """The request, TSIG verified; Refused with the answer code otherwise; None to drop."""
        if len(wire) < 12:
            return None
        addr = ipaddress.ip_address(client)
        if not any(addr in net for net in self.allow):
            raise Refused(dns.rcode.REFUSED, "not in the transfer ACL")
        try:
            msg = dns.message.from_wire(wire, keyring=self.keyring)
        except dns.message.UnknownTSIGKey:
            raise Refused(dns.rcode.NOTAUTH, "unknown TSIG key") from None
        except dns.tsig.BadSignature:
            raise Refused(dns.rcode.NOTAUTH, "bad TSIG signature") from None
        except dns.tsig.BadTime:
            raise Refused(dns.rcode.NOTAUTH, "TSIG time out of range") from None
        except dns.exception.DNSException:
            raise Refused(dns.rcode.FORMERR, "malformed request") from None
        if msg.flags & dns.flags.QR:
            return None
        # A NOTIFY is authorised by coming from the primary a source follows (see _notify), as
        # BIND's allow-notify; it only makes us ask that primary, over our own signed requests.
        if (
            not msg.had_tsig
            and self.settings.require_tsig
            and msg.opcode() != dns.opcode.NOTIFY
            and not any(addr in net for net in self.unsigned)
        ):
            raise Refused(dns.rcode.REFUSED, "not signed (TSIG required)")
        return msg

    def answer(self, wire: bytes, client: str, tcp: bool) -> tuple[str, object]:
        """("one", bytes) for a single answer, ("stream", (request, zone, "axfr"|"ixfr", the
        records' factory or the secondary's serial)) for a transfer, ("drop", None) for nothing."""
        try:
            msg = self.parse(wire, client)
        except Refused as r:
            self.counts[("request", r.reason)] += 1
            self._refuse_once(client, r.reason)
            return "one", _error(wire, r.rcode)
        if msg is None:
            return "drop", None
        opcode = msg.opcode()
        if opcode == dns.opcode.NOTIFY:
            return "one", self._notify(msg, client)
        if opcode != dns.opcode.QUERY or len(msg.question) != 1:
            return "one", _reply(msg, dns.rcode.NOTIMP if opcode != dns.opcode.QUERY else dns.rcode.FORMERR)
        q = msg.question[0]
        zone = self.zones.find(q.name)
        if zone is None or zone.view is None:
            self.counts[("request", "not a zone of ours")] += 1
            self._refuse_once(client, "not a zone of ours", zone=str(q.name))
            return "one", _reply(msg, dns.rcode.NOTAUTH)
        kind = dns.rdatatype.to_text(q.rdtype).lower()
        if q.rdtype == dns.rdatatype.SOA:
            self.counts[("soa", "ok")] += 1
            return "one", self._single(msg, zone, [self.zones.soa(zone)])
        if q.rdtype == dns.rdatatype.AXFR:
            if not tcp:
                return "one", _reply(msg, dns.rcode.REFUSED)
            view, serial = zone.view, zone.serial
            return "stream", (msg, zone, "axfr", lambda: self.zones.axfr_records(zone, view, serial))
        if q.rdtype == dns.rdatatype.IXFR:
            since = _client_serial(msg)
            if since is None:
                return "one", _reply(msg, dns.rcode.FORMERR)
            if not tcp:
                # RFC 1995 2: over UDP, the SOA alone tells the secondary to come over TCP.
                self.counts[("ixfr", "udp")] += 1
                return "one", self._single(msg, zone, [self.zones.soa(zone)])
            return "stream", (msg, zone, "ixfr", since)
        self.counts[(kind, "refused")] += 1
        return "one", _reply(msg, dns.rcode.REFUSED)

    def _single(self, msg: dns.message.Message, zone: Zone, records: list[bytes]) -> bytes:
        signer = _signer(msg)
        question = _question(msg)
        return next(messages(msg.id, zone.wire, question, records, signer, flags=0x8400 | (msg.flags & dns.flags.RD)))

    def _notify(self, msg: dns.message.Message, client: str) -> bytes:
        q = msg.question[0] if msg.question else None
        ok = q is not None and self.on_notify is not None and self.on_notify(q.name.to_text(), client)
        self.counts[("notify", "ok" if ok else "refused")] += 1
        if not ok:
            self._refuse_once(client, "NOTIFY for a zone we do not follow", zone=str(q.name) if q else "")
            return _reply(msg, dns.rcode.REFUSED)
        resp = dns.message.make_response(msg)
        resp.flags |= dns.flags.AA
        return resp.to_wire()

    def stream(self, request: tuple[dns.message.Message, Zone, str, object]) -> tuple[str, Iterator[bytes]]:
        """Runs in a worker thread: (kind done, messages) for an AXFR or IXFR request."""
        msg, zone, kind, arg = request
        signer = _signer(msg)
        question = _question(msg)
        if kind == "ixfr":
            assert isinstance(arg, int)
            found = self.zones.ixfr_records(zone, arg)
            if found is not None:
                done, records = found
                return done, messages(msg.id, zone.wire, question, records, signer)
            done = "axfr-fallback"
            view, serial = zone.view, zone.serial
            assert view is not None
            return done, messages(msg.id, zone.wire, question, self.zones.axfr_records(zone, view, serial), signer)
        assert callable(arg)
        return "axfr", messages(msg.id, zone.wire, question, arg(), signer)

    # -- TCP -----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        client = writer.get_extra_info("peername")[0]
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE):
                        head = await reader.readexactly(2)
                        wire = await reader.readexactly(struct.unpack("!H", head)[0])
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                kind, value = self.answer(wire, client, tcp=True)
                if kind == "drop":
                    return
                if kind == "one":
                    assert isinstance(value, bytes)
                    if value:
                        await self._write(writer, [value])
                    continue
                await self._transfer(writer, value, client)  # type: ignore[arg-type]
        except Exception:  # a bug in one transfer must not take the listener down
            log.exception("transfer failed", client=client)
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _transfer(self, writer: asyncio.StreamWriter, request: tuple, client: str) -> None:
        _msg, zone, kind, _arg = request
        done, gen = await asyncio.to_thread(self.stream, request)
        sent = 0
        while True:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(gen, BATCH)))
            if not batch:
                break
            sent += await self._write(writer, batch)
        self.counts[(kind, done)] += 1
        log.info("zone transferred", zone=zone.name, kind=done, serial=zone.serial, client=client, bytes=sent)

    async def _write(self, writer: asyncio.StreamWriter, wires: list[bytes]) -> int:
        data = b"".join(struct.pack("!H", len(w)) + w for w in wires)
        writer.write(data)
        await writer.drain()
        self.bytes_out += len(data)
        return len(data)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: XfrServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            kind, value = self.server.answer(data, addr[0], tcp=False)
        except Exception:
            log.exception("SOA/NOTIFY request failed", client=addr[0])
            return
        if kind == "one" and value and self.transport is not None:
            assert isinstance(value, bytes)
            self.transport.sendto(value, addr)


def _signer(msg: dns.message.Message) -> Signer | None:
    if not msg.had_tsig:
        return None
    key = msg.keyring if isinstance(msg.keyring, dns.tsig.Key) else None
    if key is None:
        assert isinstance(msg.keyring, dict)
        key = msg.keyring[msg.keyname]
    return Signer(key, msg.mac or b"", msg.id)


def _question(msg: dns.message.Message) -> bytes:
    q = msg.question[0]
    return q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)


def _client_serial(msg: dns.message.Message) -> int | None:
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(rrset[0].serial)
    return None


def _reply(msg: dns.message.Message, rcode: int) -> bytes:
    resp = dns.message.make_response(msg)
    resp.set_rcode(rcode)
    return resp.to_wire()


def _error(wire: bytes, rcode: int) -> bytes:
    """An answer to a request we do not trust or cannot read: its header and question echoed,
    the rcode set, nothing signed."""
    if len(wire) < 12:
        return b""
    qid, flags, qd = struct.unpack_from("!HHH", wire)
    question = b""
    if qd == 1:
        try:
            _name, used = dns.name.from_wire(wire, 12)
            end = 12 + used + 4
            question = wire[12:end] if end <= len(wire) else b""
        except dns.exception.DNSException:
            question = b""
    out_flags = 0x8000 | (flags & 0x7900) | rcode  # QR, opcode and RD kept
    return struct.pack("!HHHHHH", qid, out_flags, 1 if question else 0, 0, 0, 0) + question
