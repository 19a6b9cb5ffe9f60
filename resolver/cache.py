"""The answer cache: upstream replies as wire bytes, served with decreasing TTLs.

Owns ``CacheEntry`` (an upstream reply without its OPT record, the offsets of its TTL fields,
its lifetime and the CNAME targets found in it) and ``AnswerCache`` (bounded LRU, keyed by
lower-case question name, type, class and DO bit). A hit copies the stored bytes and patches the
ID, the question's letter case and the TTLs; the TTL-patched body is kept for the current second
so that a popular name costs one patch per second, not one per query.

What is not cached (as CoreDNS): SERVFAIL and other failures, truncated replies, negative answers
without a SOA, and anything whose lifetime after clamping is zero.

Serve-stale (RFC 8767): an expired entry is kept (still within ``max_entries``, LRU) for
``stale_max_age`` seconds past its expiry. ``stale`` hands it out when every upstream failed;
it is then rendered with ``stale_ttl`` on every record, and for ``stale_ttl`` seconds after
that failure ``get`` returns it at once (RFC 8767's failure recheck), so an outage does not make
every query for the name wait for the upstream deadline again.
Must not import the server, the upstream client or the policy.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from config.sections import CacheSettings
from resolver.wire import (
    CD,
    EDE_STALE,
    EDE_STALE_NXDOMAIN,
    NOERROR,
    NXDOMAIN,
    RD,
    U16,
    U32,
    ParsedAnswer,
    Query,
    ede_option,
    opt_record,
    truncated,
)


# ``CacheEntry._sec`` when its bodies carry the stale TTL rather than those of a second.
_STALE = -2

# The OPT record we append to cached answers, by (our UDP size, DO): built once, not per hit.
_OPTS: dict[tuple[int, bool], bytes] = {}
# UDP answers remembered for the rest of their second (AnswerCache.hot): about 200 bytes each.
_HOT = 1 << 17


class CacheEntry:
    """One reply, stored at ``stored`` (whole seconds of the cache's clock)."""

    __slots__ = ("body", "flags", "offsets", "ttls", "stored", "expires", "cnames", "recheck", "_sec", "_plain", "_edns")

    def __init__(self, parsed: ParsedAnswer, ttls: tuple[int, ...], stored: int, lifetime: int) -> None:
        self.body = parsed.body
        # The body's flags, not the reply's: parse_answer cleared AA there, and a truncated
        # answer built from these must not claim authority either.
        self.flags = U16.unpack_from(parsed.body, 2)[0]
        self.offsets = parsed.ttl_offsets
        self.ttls = ttls
        self.stored = stored
        self.expires = stored + lifetime
        self.cnames = parsed.cname_targets
        self.recheck = 0  # expired, and a refresh failed: served stale without asking until then
        if ttls is parsed.ttls:
            # No TTL was clamped (lifetime_of), so the reply's body is already this second's
            # render: the miss that stored it is answered without patching a copy.
            self._sec = stored  # the second the bodies below were patched for, or _STALE
            self._plain = body = parsed.body
            self._edns = body[:10] + U16.pack(U16.unpack_from(body, 10)[0] + 1) + body[12:]
        else:
            self._sec = -1
            self._plain = b""
            self._edns = b""

    def render(self, data: bytes, q: Query, now: int, udp_size: int, limit: int) -> bytes:
        """The reply for query ``q`` in ``data``, TTLs decreased to ``now``; TC when over ``limit``."""
        if now != self._sec:
            self._patch(now)
        name_end = q.name_end
        edns = q.edns_size
        body = self._edns if edns else self._plain
        if data[2] & 0x01 and not data[3] & 0x10:  # RD set and CD clear, as in the stored reply: the common case
            resp = data[:2] + body[2:12] + data[12:name_end] + body[name_end:]
        else:
            # RD and CD are the client's (RFC 1035 4.1.1, RFC 4035 3.2.2: CD is copied).
            flags = (U16.unpack_from(body, 2)[0] & ~(RD | CD)) | (U16.unpack_from(data, 2)[0] & (RD | CD))
            resp = data[:2] + U16.pack(flags) + body[4:12] + data[12:name_end] + body[name_end:]
        if edns:
            opt = _OPTS.get((udp_size, q.do))
            if opt is None:
                opt = _OPTS[(udp_size, q.do)] = opt_record(udp_size, q.do)
            resp += opt
        if len(resp) > limit:
            return truncated(data, q, self.flags, udp_size)
        return resp

    def render_stale(self, data: bytes, q: Query, udp_size: int, limit: int, ttl: int) -> bytes:
        """The reply with every TTL set to ``ttl`` (RFC 8767: the entry has expired)."""
        if self._sec != _STALE:
            self._fill([ttl] * len(self.offsets))
            self._sec = _STALE
        resp = self.render(data, q, _STALE, udp_size, limit)
        if q.edns_size and not resp[2] & 0x02:
            # Say so (RFC 8767 6, RFC 8914): the plain OPT render appended (its last 11 bytes)
            # becomes one with an Extended DNS Error, Stale Answer or Stale NXDOMAIN Answer.
            code = EDE_STALE_NXDOMAIN if resp[3] & 0xF == NXDOMAIN else EDE_STALE
            resp = resp[:-11] + opt_record(udp_size, q.do, ede_option(code))
            if len(resp) > limit:
                return truncated(data, q, self.flags, udp_size)
        return resp

    def _patch(self, now: int) -> None:
        elapsed = now - self.stored
        self._fill([ttl - elapsed if ttl > elapsed else 0 for ttl in self.ttls])
        self._sec = now

    def _fill(self, ttls: list[int]) -> None:
        buf = bytearray(self.body)
        pack = U32.pack_into
        for off, ttl in zip(self.offsets, ttls, strict=True):
            pack(buf, off, ttl)
        self._plain = bytes(buf)
        arcount = U16.unpack_from(buf, 10)[0]
        U16.pack_into(buf, 10, arcount + 1)  # room for the client's OPT record
        self._edns = bytes(buf)

    def remaining(self, now: int) -> int:
        return self.expires - now


def lifetime_of(parsed: ParsedAnswer, settings: CacheSettings) -> tuple[int, tuple[int, ...]]:
    """(seconds to keep, clamped TTLs); 0 seconds means do not cache. The TTLs are the reply's
    own tuple (``is parsed.ttls``) when no clamp changed any of them."""
    rcode = parsed.rcode
    if parsed.truncated or (rcode != NOERROR and rcode != NXDOMAIN):
        return 0, ()
    ttls = parsed.ttls
    if ttls:
        # Each settings read is a pydantic attribute lookup, and a per-TTL generator costs more
        # than the rest of this function: clamp only when a TTL is out of bounds (rarely).
        lo, hi = settings.min_ttl, settings.max_ttl
        if (lo and min(ttls) < lo) or max(ttls) > hi:
            ttls = tuple([lo if t < lo else hi if t > hi else t for t in ttls])
    ancount = parsed.ancount
    if rcode == NXDOMAIN or ancount == 0:  # negative
        if parsed.neg_ttl is None:
            return 0, ()
        life = min(max(parsed.neg_ttl, settings.min_ttl), settings.max_negative_ttl)
        # Serve the SOA with the negative TTL (RFC 2308 section 5), never longer.
        if ttls and max(ttls) > life:
            ttls = tuple([t if t < life else life for t in ttls])
        return life, ttls
    return min(ttls[:ancount]), ttls


class AnswerCache:
    """Bounded LRU of ``CacheEntry`` by question key."""

    def __init__(self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.entries: OrderedDict[bytes, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # UDP query bytes after the ID -> (second, answer bytes after the ID, key): the same question
        # again within the same second gets the same bytes (TTLs only change per second), so
        # the pipeline skips parsing, matching and rendering. Bounded; emptied with the cache
        # and by every policy swap (Pipeline.install).
        self.hot: dict[bytes, tuple[int, bytes, bytes]] = {}

    def remember(self, query: bytes, resp: bytes, now: int, key: bytes) -> None:
        """Keep a rendered UDP answer of entry ``key`` for the rest of second ``now``."""
        if resp[2] & 0x02:  # truncated: rendered for this client's size only, and rare
            return
        hot = self.hot
        if len(hot) >= _HOT:
            hot.clear()  # bounded; refills with what is asked now
        hot[query[2:]] = (now, resp[2:], key)

    def touch(self, key: bytes) -> bool:
        """A hit through the memo: the entry becomes the most recently used; False when it has
        been evicted meanwhile (the caller takes the full path)."""
        try:
            self.entries.move_to_end(key)
        except KeyError:
            return False
        self.hits += 1
        return True

    def now(self) -> int:
        return int(self.clock())

    def get(self, key: bytes, now: int) -> CacheEntry | None:
        """The live entry for ``key``; or an expired one while its failure recheck runs (the
        caller tells them apart by ``expires <= now`` and serves that one stale)."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            if now < entry.recheck:
                self.entries.move_to_end(key)
                return entry
            max_age = self.settings.stale_max_age
            if not max_age or now - entry.expires > max_age:
                del self.entries[key]  # past serving even stale
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry

    def stale(self, key: bytes, now: int) -> CacheEntry | None:
        """An expired entry no older than ``stale_max_age`` past its expiry, for when every
        upstream failed; it is then served at once for ``stale_ttl`` seconds."""
        max_age = self.settings.stale_max_age
        entry = self.entries.get(key)
        if entry is None or not max_age or entry.expires > now or now - entry.expires > max_age:
            return None
        entry.recheck = now + self.settings.stale_ttl
        return entry

    def entry_for(self, parsed: ParsedAnswer, now: int) -> tuple[CacheEntry, bool]:
        """A renderable entry for a reply, and whether it may be cached."""
        life, ttls = lifetime_of(parsed, self.settings)
        if life <= 0:
            return CacheEntry(parsed, parsed.ttls, now, 0), False
        return CacheEntry(parsed, ttls, now, life), True

    def put(self, key: bytes, entry: CacheEntry) -> None:
        limit = self.settings.max_entries
        if limit <= 0:
            return
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > limit:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()
        self.hot.clear()

    def __len__(self) -> int:
        return len(self.entries)

