"""betblock as an RPZ primary: the policy in force, served as zones, and secondaries told of it.

Owns the lifecycle of the transfer side: ``publish`` (called by the composition root with
every snapshot it installs; cheap, on the event loop) hands the newest snapshot to ``run``,
which turns it into new zone versions in a worker thread (coalescing bursts: only the newest
snapshot counts) and sends NOTIFY (RFC 1996) for each zone whose serial moved to every
configured secondary, retrying with backoff until it answers. Also owns the metric families of
the transfer side.

Must not import the resolver or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config.settings import Settings
from feeds.snapshot import PolicySnapshot
from xfr.history import History
from xfr.server import XfrServer
from xfr.zones import Zone, Zones

log = structlog.get_logger("betblock.xfr")

NOTIFY_TRIES = 5
NOTIFY_TIMEOUT = 2.0


class XfrService:
    """The zones, their listener and the NOTIFY sender of one node."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.history = History(settings.data_dir / "xfr.sqlite", settings.xfr.history)
        self.zones = Zones(settings, self.history, clock)
        self.server = XfrServer(settings.xfr, self.zones)
        self.notify_key = settings.xfr.notify_key or None
        self._pending: PolicySnapshot | None = None
        self._wake = asyncio.Event()
        self._notifies: set[asyncio.Task[None]] = set()
        self.notify_counts = {"ok": 0, "failed": 0}

    def publish(self, snapshot: PolicySnapshot) -> None:
        """A new snapshot is in force; its zones follow soon (see ``run``)."""
        self._pending = snapshot
        self._wake.set()

    async def start(self, snapshot: PolicySnapshot) -> None:
        """Make the zones of the first snapshot, then open the listener."""
        self._pending = None
        changed = await asyncio.to_thread(self.zones.publish, snapshot)
        await self.server.start()
        self._announce(changed)

    async def run(self) -> None:
        """Apply published snapshots until cancelled."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                snapshot, self._pending = self._pending, None
                if snapshot is None:
                    continue
                try:
                    changed = await asyncio.to_thread(self.zones.publish, snapshot)
                except Exception:  # the zones keep the last version; the next snapshot retries
                    log.exception("zones not updated", policy_version=snapshot.version)
                    continue
                for zone in changed:
                    log.info("zone updated", zone=zone.name, serial=zone.serial, policy_version=snapshot.version)
                self._announce(changed)
        finally:
            for task in list(self._notifies):
                task.cancel()
            for task in list(self._notifies):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        await self.server.close()
        self.history.close()

    # -- NOTIFY --------------------------------------------------------------------------------

    def _announce(self, zones: list[Zone]) -> None:
        for zone in zones:
            for target in self.settings.xfr.notify_addresses():
                task = asyncio.ensure_future(self._notify(zone, zone.serial, target))
                self._notifies.add(task)
                task.add_done_callback(self._notifies.discard)

    async def _notify(self, zone: Zone, serial: int, target: tuple[str, int]) -> None:
        msg = dns.message.make_query(zone.origin, dns.rdatatype.SOA)
        msg.flags = dns.flags.AA  # (the opcode lives in the flags: set after)
        msg.set_opcode(dns.opcode.NOTIFY)
        soa = dns.rrset.from_text(zone.origin, self.settings.xfr.minimum, "IN", "SOA",
                                  f"localhost. hostmaster.localhost. {serial} 1 1 1 1")
        msg.answer.append(soa)
        if self.notify_key is not None:
            msg.use_tsig(self.server.keyring, dns.name.from_text(self.notify_key))
        delay = 1.0
        for attempt in range(NOTIFY_TRIES):
            if zone.serial != serial:
                return  # a newer serial has its own NOTIFY
            try:
                await dns.asyncquery.udp(msg, target[0], port=target[1], timeout=NOTIFY_TIMEOUT)
            except (dns.exception.DNSException, OSError) as exc:
                if attempt == NOTIFY_TRIES - 1:
                    self.notify_counts["failed"] += 1
                    log.warning("NOTIFY not answered", zone=zone.name, serial=serial,
                                target=f"{target[0]}:{target[1]}", error=str(exc) or type(exc).__name__)
                    return
                await asyncio.sleep(delay)  # RFC 1996 3.6: retry with a growing interval
                delay *= 2
                continue
            self.notify_counts["ok"] += 1
            return

    # -- metrics -------------------------------------------------------------------------------

    def metrics(self) -> Iterator[Metric]:
        serials = GaugeMetricFamily("betblock_xfr_zone_serial", "SOA serial in force per served RPZ zone", labels=["zone"])
        for zone in self.zones.zones.values():
            serials.add_metric([zone.name], zone.serial)
        yield serials
        requests = CounterMetricFamily(
            "betblock_xfr_requests", "Zone-transfer listener requests by kind and result", labels=["kind", "result"]
        )
        for (kind, result), n in sorted(self.server.counts.items()):
            requests.add_metric([kind, result], n)
        yield requests
        yield CounterMetricFamily("betblock_xfr_bytes", "Bytes sent in zone transfers", value=self.server.bytes_out)
        notifies = CounterMetricFamily("betblock_xfr_notifies", "NOTIFY messages sent by result", labels=["result"])
        for result, n in self.notify_counts.items():
            notifies.add_metric([result], n)
        yield notifies
