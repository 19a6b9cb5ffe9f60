"""Source kind ``xfr``: an agency's list followed as an RPZ zone from a primary over zone
transfers (betblock as a secondary).

Owns one followed zone: a dnspython copy of it (AXFR the first time, IXFR after, RFC 1995;
dnspython falls back to AXFR when the primary answers so), the SOA check that decides whether
to transfer (RFC 1982 serial arithmetic), TSIG on every request (hmac-sha256), the refresh
interval from the zone's SOA, and a copy on disk (``data_dir/xfr-follow/``) so that a restart
resumes with IXFR. What it hands the feeds manager is the zone as master-file text, read by the
``rpz`` format: from there it takes the path of any feed (guardrails, quarantine, store,
compile), and the feed store keeps the list, so a restart serves without the primary.

Transfers run in a worker thread (a million-record zone takes dnspython a while). Must not
import the resolver, aiohttp or SQL.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.xfr
import dns.zone
import structlog

from config.settings import SourceSettings, host_port
from feeds.fetch import FetchError

log = structlog.get_logger("betblock.feeds")

TIMEOUT = 10.0  # seconds per SOA query or per message of a transfer
LIFETIME = 600.0  # seconds a whole transfer may take
SERIAL_HALF = 1 << 31


def newer(a: int, b: int) -> bool:
    """RFC 1982: is serial ``a`` greater than ``b``?"""
    return a != b and ((a - b) % (1 << 32)) < SERIAL_HALF


class ZoneFollower:
    """One RPZ zone followed from its primary."""

    def __init__(self, settings: SourceSettings, state_dir: Path) -> None:
        self.settings = settings
        self.host, self.port = host_port(settings.primary, 53)
        self.origin = dns.name.from_text(settings.zone)
        self.keyring: dns.tsig.Key | None = None
        if settings.tsig_secret is not None:
            self.keyring = dns.tsig.Key(settings.tsig_key, settings.tsig_secret.get_secret_value(), dns.tsig.HMAC_SHA256)
        safe = re.sub(r"[^a-z0-9_.-]", "_", f"{settings.zone}@{settings.primary}".lower())
        self.path = state_dir / f"{safe}.zone"
        self.zone: dns.zone.Zone | None = None
        self.refresh: float | None = None
        self.last_kind = ""  # "axfr" or "ixfr": what the last transfer was, for logs and tests
        self.transfers = 0

    @property
    def serial(self) -> int | None:
        if self.zone is None:
            return None
        soa = self.zone.get_soa()
        return int(soa.serial)

    def interval(self) -> float:
        """Seconds to the next SOA check: ``poll_interval``, else the zone's SOA refresh."""
        if self.settings.poll_interval:
            return self.settings.poll_interval
        return self.refresh if self.refresh is not None else 300.0

    def matches(self, zone: str, client: str) -> bool:
        """Is a NOTIFY for ``zone`` (text) from ``client`` (address) one for this source?"""
        return dns.name.from_text(zone) == self.origin and client == self.host

    async def fetch(self) -> bytes | None:
        """The zone as master-file text when its serial moved, None when it did not."""
        try:
            return await asyncio.to_thread(self._fetch)
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            raise FetchError(f"zone {self.settings.zone} from {self.settings.primary}: {type(exc).__name__}: {exc}") from exc

    def _fetch(self) -> bytes | None:
        if self.zone is None:
            self._load()
        if self.zone is not None:
            primary = self._soa_serial()
            serial = self.serial
            assert serial is not None
            if not newer(primary, serial):
                return None
        zone = self.zone if self.zone is not None else dns.zone.Zone(self.origin)
        before = self.serial
        query, _ = dns.xfr.make_query(
            zone, serial=0 if self.zone is not None else None, keyring=self.keyring,
            keyname=self.keyring.name if self.keyring is not None else None,
        )
        dns.query.inbound_xfr(self.host, zone, query, port=self.port, timeout=TIMEOUT, lifetime=LIFETIME)
        if zone.get_soa(None) is None:
            raise FetchError(f"zone {self.settings.zone}: the transfer carried no SOA")
        self.last_kind = "ixfr" if self.zone is not None else "axfr"
        self.zone = zone
        self.transfers += 1
        soa = zone.get_soa()
        self.refresh = float(soa.refresh)
        log.info("zone transferred in", zone=self.settings.zone, primary=self.settings.primary,
                 kind=self.last_kind, serial=int(soa.serial), names=len(zone.nodes))
        if before is not None and int(soa.serial) == before:
            return None
        text = self._text()
        self._save(text)
        return text

    def _soa_serial(self) -> int:
        q = dns.message.make_query(self.origin, dns.rdatatype.SOA)
        if self.keyring is not None:
            q.use_tsig(self.keyring)
        r = dns.query.udp(q, self.host, port=self.port, timeout=TIMEOUT)
        if r.flags & dns.flags.TC:
            r = dns.query.tcp(q, self.host, port=self.port, timeout=TIMEOUT)
        for rrset in r.answer:
            if rrset.rdtype == dns.rdatatype.SOA and rrset.name == self.origin:
                return int(rrset[0].serial)
        raise FetchError(f"zone {self.settings.zone}: the primary answered no SOA ({dns.rcode.to_text(r.rcode())})")

    def _text(self) -> bytes:
        assert self.zone is not None
        body = self.zone.to_text(relativize=True)
        return f"$ORIGIN {self.origin.to_text()}\n{body}".encode()

    def _save(self, text: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(text)
        os.replace(tmp, self.path)

    def _load(self) -> None:
        """The copy kept by the last run, so that the first transfer is an IXFR."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return
        try:
            self.zone = dns.zone.from_text(text, origin=self.origin, relativize=True, check_origin=True)
        except dns.exception.DNSException:
            self.zone = None  # unreadable: the next transfer is an AXFR
            return
        self.refresh = float(self.zone.get_soa().refresh)
