"""The RPZ zones betblock serves, version by version: serials, SOA, and transfer messages.

Owns ``Zone`` (name, serial, the view of the snapshot in force), ``Zones.publish`` (a new
snapshot becomes new views; a zone whose records changed gets the next serial, RFC 1982, and
its step is kept in the history for IXFR), and the rendering of AXFR and IXFR answers as a
sequence of DNS messages, each TSIG-signed with dnspython when the request was.

Runs in worker threads (a million-entry zone takes a second to compare or render), never on the
event loop. Must not import the resolver or aiohttp.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig

from config.settings import Settings, XfrSettings
from feeds.snapshot import PolicySnapshot
from xfr import rpz
from xfr.history import History

SERIAL_MOD = 1 << 32
# Bytes of records per transfer message: compression pointers reach 16383 bytes into a message,
# so a message this size can point back at any owner it holds (NSD sends about as much).
MAX_MESSAGE = 16000
# A step this much larger than the zone it leads to is not kept: an AXFR is cheaper.
STEP_LIMIT = 1.0


def serial_gt(a: int, b: int) -> bool:
    """RFC 1982: is serial ``a`` greater than serial ``b``?"""
    return a != b and ((a - b) % SERIAL_MOD) < (1 << 31)


def next_serial(serial: int) -> int:
    return (serial + 1) % SERIAL_MOD


@dataclass
class Zone:
    """One served zone: its name and the version in force."""

    name: str  # presentation form, no trailing dot
    agency: str | None  # None: the combined zone
    serial: int = 0
    view: rpz.View | None = None

    def __post_init__(self) -> None:
        self.origin = dns.name.from_text(self.name)
        self.wire = self.origin.to_wire()
        self.lower = self.origin.canonicalize()

    def records_count(self) -> int:
        return 0 if self.view is None else self.view.count()


class Zones:
    """Every zone of the node, their history, and what a new snapshot changes in them."""

    def __init__(self, settings: Settings, history: History, clock: Callable[[], float] = time.time) -> None:
        self.xfr: XfrSettings = settings.xfr
        self.agencies = list(settings.agencies)
        self.history = history
        self.clock = clock
        self.zones: dict[dns.name.Name, Zone] = {}
        combined = Zone(self.xfr.zone.rstrip("."), None)
        self.zones[combined.lower] = combined
        if self.xfr.agency_zone:
            for agency in self.agencies:
                z = Zone(self.xfr.agency_zone.replace("{agency}", agency.id).rstrip("."), agency.id)
                if z.lower in self.zones:
                    raise ValueError(f"zone {z.name} is configured twice")
                self.zones[z.lower] = z
        self._agency = {a.id: a for a in self.agencies}

    def find(self, qname: dns.name.Name) -> Zone | None:
        return self.zones.get(qname.canonicalize())

    def _view(self, zone: Zone, snapshot: PolicySnapshot) -> rpz.View:
        if zone.agency is None:
            return rpz.combined_view(snapshot)
        return rpz.agency_view(snapshot, self._agency[zone.agency])

    def publish(self, snapshot: PolicySnapshot) -> list[Zone]:
        """Make ``snapshot`` the zones' content; return the zones whose serial moved."""
        changed: list[Zone] = []
        for zone in self.zones.values():
            view = self._view(zone, snapshot)
            old = zone.view
            if old is None:
                state = self.history.state(zone.name)
                if state is None:
                    # A fresh data directory: a serial from the clock stays above the serials
                    # of an earlier life of this node that secondaries may still hold.
                    zone.serial = int(self.clock()) % SERIAL_MOD
                    self.history.record(zone.name, zone.serial, zone.serial, snapshot.version, None, None)
                elif state[1] == snapshot.version:
                    zone.serial = state[0]
                else:
                    # Restarted under another policy: the step is unknown, older secondaries AXFR.
                    zone.serial = next_serial(state[0])
                    self.history.record(zone.name, state[0], zone.serial, snapshot.version, None, None)
                    changed.append(zone)
                zone.view = view
                continue
            deleted, added = rpz.diff(old, view)
            if not deleted and not added:
                zone.view = view
                self.history.set_state(zone.name, zone.serial, snapshot.version)
                continue
            serial = next_serial(zone.serial)
            keep = len(deleted) + len(added) <= max(64, STEP_LIMIT * 2 * view.count())
            self.history.record(
                zone.name, zone.serial, serial, snapshot.version, deleted if keep else None, added if keep else None
            )
            zone.serial, zone.view = serial, view
            changed.append(zone)
        return changed

    # -- records -----------------------------------------------------------------------------

    def soa(self, zone: Zone, serial: int | None = None) -> bytes:
        """The zone's SOA record, relative (at ``serial``, default the one in force)."""
        x = self.xfr
        rdata = (
            b"\x09localhost\x00"
            + b"\x0ahostmaster\x09localhost\x00"
            + struct.pack("!IIIII", zone.serial if serial is None else serial, x.refresh, x.retry, x.expire, x.minimum)
        )
        return rpz.relative(b"", struct.pack("!HHIH", rpz.SOA, rpz.IN, x.minimum, len(rdata)) + rdata)

    def ns(self, zone: Zone) -> bytes:
        rdata = b"\x09localhost\x00"
        return rpz.relative(b"", struct.pack("!HHIH", 2, rpz.IN, self.xfr.minimum, len(rdata)) + rdata)

    def axfr_records(self, zone: Zone, view: rpz.View, serial: int) -> Iterator[bytes]:
        soa = self.soa(zone, serial)
        yield soa
        yield self.ns(zone)
        yield from rpz.records(view)
        yield soa

    def ixfr_records(self, zone: Zone, since: int) -> tuple[str, Iterable[bytes]] | None:
        """The IXFR answer from ``since`` to the serial in force as (kind, records): "soa" when
        the secondary is current, "ixfr" from the history; None when the history does not reach
        ``since`` (the caller answers with the whole zone)."""
        serial, view = zone.serial, zone.view
        if since == serial or serial_gt(since, serial):
            return "soa", [self.soa(zone, serial)]
        steps = self.history.steps(zone.name, since, serial)
        if steps is None:
            return None
        assert view is not None

        def gen() -> Iterator[bytes]:
            yield self.soa(zone, serial)
            for serial_from, serial_to, deleted, added in steps:
                yield self.soa(zone, serial_from)
                yield from deleted
                yield self.soa(zone, serial_to)
                yield from added
            yield self.soa(zone, serial)

        return "ixfr", gen()


@dataclass
class Signer:
    """TSIG for a sequence of answers to one signed request (RFC 8945 5.3.1: every message
    signed, each MAC chained to the one before)."""

    key: dns.tsig.Key
    request_mac: bytes
    original_id: int
    ctx: object | None = None

    def sign(self, wire: bytes) -> bytes:
        rdata = dns.rdtypes.ANY.TSIG.TSIG(
            dns.rdataclass.ANY, dns.rdatatype.TSIG, self.key.algorithm, 0, 300, b"", self.original_id, 0, b""
        )
        tsig, self.ctx = dns.tsig.sign(
            wire, self.key, rdata, int(time.time()), self.request_mac if self.ctx is None else None, self.ctx, True
        )
        body = tsig.to_wire()
        assert body is not None
        rr = self.key.name.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(body)) + body
        arcount = struct.unpack_from("!H", wire, 10)[0] + 1
        return wire[:10] + struct.pack("!H", arcount) + wire[12:] + rr


def messages(
    query_id: int, origin: bytes, question: bytes, records: Iterable[bytes], signer: Signer | None, flags: int = 0x8400
) -> Iterator[bytes]:
    """Pack relative ``records`` (see ``xfr.rpz.relative``) into answer messages under the wire
    name ``origin``, the question in the first, signed when asked.

    Owners are compressed (RFC 1035 4.1.4) as NSD and BIND do: the origin is written once per
    message (the question's name in the first) and pointed at after, and ``*.name`` right after
    ``name`` points at that name: a third of the bytes of a zone of subtree entries."""
    header = struct.Struct("!HHHHHH")
    parts: list[bytes] = []
    count = 0
    size = 0
    first = True
    origin_ptr = b""  # pointer to the origin in this message, once written
    prev_rel = b""
    prev_ptr = b""  # pointer to the previous record's owner

    def start() -> None:
        nonlocal parts, count, size, origin_ptr, prev_rel, prev_ptr
        parts, count = [], 0
        size = 12
        origin_ptr = prev_ptr = b""
        prev_rel = b"\xff"  # matches no owner
        if first:
            parts.append(question)
            origin_ptr = b"\xc0\x0c"  # the question's name is the origin
            size += len(question)

    def emit() -> bytes:
        nonlocal first
        wire = header.pack(query_id, flags, 1 if first else 0, count, 0, 0) + b"".join(parts)
        first = False
        return signer.sign(wire) if signer is not None else wire

    start()
    for rr in records:
        n = rr[0]
        rel = rr[1 : 1 + n]
        tail = rr[1 + n :]
        if size + n + len(origin) + len(tail) > MAX_MESSAGE and count:
            yield emit()
            start()
        owner_at = size
        if prev_ptr and rel[:2] == b"\x01*" and rel[2:] == prev_rel:
            owner = b"\x01*" + prev_ptr
        elif rel == prev_rel and prev_ptr:
            owner = prev_ptr
            owner_at = -1
        elif origin_ptr:
            owner = rel + origin_ptr
        else:
            owner = rel + origin
            origin_ptr = struct.pack("!H", 0xC000 | (size + n))
        if owner_at >= 0 and owner_at < 0x3FFF and rel:
            prev_rel, prev_ptr = rel, struct.pack("!H", 0xC000 | owner_at)
        parts.append(owner)
        parts.append(tail)
        size += len(owner) + len(tail)
        count += 1
    if count or first:
        yield emit()
