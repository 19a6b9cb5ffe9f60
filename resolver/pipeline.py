"""The query pipeline: the one place where the order of stages is written.

    rrl (UDP) -> wire.parse -> acl -> policy -> ANY (RFC 8482) -> cache -> upstream

Owns ``Pipeline.answer`` (bytes in; bytes, None or an awaitable out) and the installed policy
(snapshot plus its precomputed sinkholes, swapped by one reference). Blocked and cached answers
are computed synchronously inside the caller's ``datagram_received``; only a cache miss creates a
coroutine that waits on the upstream. Every answer is counted under one ``Kind``.

Stages never touch sockets; the server makes no policy decisions.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from feeds.snapshot import EMPTY, PolicySnapshot, Rule
from hits.recorder import HitRecorder
from resolver.acl import Acl
from resolver.cache import AnswerCache, CacheEntry
from resolver.outcome import Counters, Kind
from resolver.rrl import SLIP, RateLimiter
from resolver.sinkhole import Sinkhole, build_sinkholes
from resolver.upstream import UpstreamClient, UpstreamError
from resolver.wire import (
    CD,
    BADVERS,
    EDE_NO_REACHABLE_AUTHORITY,
    EDE_OTHER,
    EDE_PROHIBITED,
    FORMERR,
    NOTIMP,
    QR,
    RA,
    REFUSED,
    SERVFAIL,
    T_ANY,
    U16,
    Drop,
    FormErr,
    NotImp,
    Query,
    WireError,
    ede_option,
    error_response,
    minimal_any,
    parse_answer,
    parse_query,
    truncated,
)

log = structlog.get_logger("betblock.pipeline")

_EDE_REFUSED = ede_option(EDE_PROHIBITED, "client not allowed")
_EDE_UPSTREAM = ede_option(EDE_NO_REACHABLE_AUTHORITY, "no upstream answered")
_EDE_INTERNAL = ede_option(EDE_OTHER, "internal error")
# Last byte of a cache key: DO (bit 0) and CD (bit 1) change what an upstream answers.
_FLAG_KEY = (b"\x00", b"\x01", b"\x02", b"\x03")
# Blocked UDP answers remembered per snapshot (see ActivePolicy.answers): about 250 bytes each.
_ANSWER_MEMO = 1 << 17
# Outcome kinds as plain ints: indexing a list with an IntEnum costs an __index__ call per packet.
_BLOCKED, _CACHED, _FORWARDED, _REFUSED = int(Kind.BLOCKED), int(Kind.CACHED), int(Kind.FORWARDED), int(Kind.REFUSED)
_FORMERR, _NOTIMP, _SERVFAIL, _DROPPED = int(Kind.FORMERR), int(Kind.NOTIMP), int(Kind.SERVFAIL), int(Kind.DROPPED)
_MINIMAL_ANY, _STALE = int(Kind.MINIMAL_ANY), int(Kind.STALE)
_SLIP_FLAGS = QR | RA  # of a slipped answer: NOERROR, no records, TC added by ``truncated``

Answer = bytes | None | Coroutine[Any, Any, bytes | None]

# Upper bounds (seconds) of the forwarded-latency buckets; the last bucket is +Inf.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _expire(waiter: asyncio.Future[CacheEntry]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _relay(waiter: asyncio.Future[CacheEntry], fetch: asyncio.Future[CacheEntry]) -> None:
    """Hand a shared fetch's outcome to one waiter; a fetch cancelled by its deadline is a timeout."""
    if waiter.done():
        return
    if fetch.cancelled():
        waiter.set_exception(TimeoutError())
    elif (exc := fetch.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(fetch.result())


class LatencyCounts:
    """Time to answer queries that missed the cache, as plain bucket counts (a metrics
    collector turns them into a histogram at scrape time). Blocked and cached answers are not
    timed: they never wait."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sum += seconds


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """A snapshot with its sinkholes, installed as one reference."""

    snapshot: PolicySnapshot
    table: dict[bytes, int]
    sinks: tuple[Sinkhole | None, ...]
    version: int
    # UDP query bytes after the ID -> (answer bytes after the ID, hit fields) for blocked names
    # seen under this snapshot. It lives and dies with the snapshot, so a swap empties it.
    answers: dict[bytes, tuple[bytes, bytes, int, Rule, bytes]] = field(default_factory=dict)


class Pipeline:
    """Answers one DNS message. ``answer`` is called by the UDP and TCP servers alike."""

    def __init__(
        self,
        *,
        acl: Acl,
        cache: AnswerCache,
        upstream: UpstreamClient,
        recorder: HitRecorder,
        udp_size: int,
        deadline: float,
        max_inflight: int,
        cname_inspection: bool = True,
        counters: Counters | None = None,
        wallclock: Callable[[], float] = time.time,
        rrl: RateLimiter | None = None,
    ) -> None:
        self.acl = acl
        self.cache = cache
        self.upstream = upstream
        self.recorder = recorder
        self.udp_size = udp_size
        self.deadline = deadline
        self.max_inflight = max_inflight
        self.cname_inspection = cname_inspection
        self.counters = counters or Counters()
        self._counts = self.counters.counts
        self._acl_memo = acl.memo
        self.wallclock = wallclock
        self.rrl = rrl
        self.inflight: dict[bytes, asyncio.Future[CacheEntry]] = {}
        self.latency = LatencyCounts()
        self.policy = self._prepare(EMPTY)

    # -- policy ---------------------------------------------------------------------------

    def _prepare(self, snapshot: PolicySnapshot) -> ActivePolicy:
        return ActivePolicy(snapshot, snapshot.table, build_sinkholes(snapshot, self.udp_size), snapshot.version)

    def install(self, snapshot: PolicySnapshot) -> None:
        """Swap in a new snapshot. Blocked answers are remembered only by the snapshot that made
        them (``ActivePolicy.answers``), so the next packet sees the new one; cached upstream
        answers whose CNAMEs reach a newly listed name are re-checked on use, and the cache's
        memo of rendered answers (whose CNAMEs were checked against the old one) is emptied."""
        self.policy = self._prepare(snapshot)
        self.cache.hot.clear()

    def set_acl(self, acl: Acl) -> None:
        """Swap the client ACL (SIGHUP). The hot path reads the memo directly, so both go."""
        self.acl = acl
        self._acl_memo = acl.memo

    # -- the pipeline ---------------------------------------------------------------------

    def answer(self, data: bytes, client: str, udp: bool) -> Answer:
        """bytes to send now, None to send nothing, or a coroutine that resolves to either.

        This is the hot path: attribute lookups are hoisted, outcome kinds are plain ints and
        the blocked branch is inlined, because every call here costs on every packet."""
        counts = self._counts
        pol = self.policy
        if udp:
            # 0. Rate limit first: a limited answer costs nothing else (no parse, no upstream),
            #    whatever it would have been; TCP is never limited (it cannot be spoofed).
            rrl = self.rrl
            if rrl is not None:
                verdict = rrl.check(client)
                if verdict:
                    return self._rate_limited(data, verdict)
            # The same blocked question again (any ID): the answer is a function of the bytes
            # after the ID and the snapshot, so skip parsing, matching and building. The ACL
            # still decides first; only a client already known to be allowed takes this path.
            known = pol.answers.get(data[2:])
            if known is not None and self._acl_memo.get(client):
                tail, name, qtype, rule, listed = known
                counts[_BLOCKED] += 1
                self.recorder.record((self.wallclock(), client, name, qtype, rule, listed, pol.version))
                return data[:2] + tail
            # The same cached question again within this second: the answer (TTLs included)
            # is the one rendered a moment ago (AnswerCache.hot; emptied by every swap).
            cache = self.cache
            hot = cache.hot.get(data[2:])
            if hot is not None and hot[0] == int(cache.clock()) and self._acl_memo.get(client) and cache.touch(hot[2]):
                counts[_CACHED] += 1
                return data[:2] + hot[1]
        try:
            q = parse_query(data)
        except WireError as exc:
            return self._unreadable(data, exc)
        try:
            # 1. ACL first: a client we do not serve learns nothing, not even what is listed.
            ok = self._acl_memo.get(client)
            if ok is None:
                ok = self.acl.allowed(client)
            if not ok:
                counts[_REFUSED] += 1
                return error_response(data, q, REFUSED, self.udp_size, _EDE_REFUSED if q.edns_size else b"")
            if q.edns_version:
                counts[_FORMERR] += 1
                return error_response(data, q, BADVERS, self.udp_size)  # RFC 6891 6.1.3
            name_end = q.name_end
            name = data[12:name_end].lower()

            # 2. Policy before cache: the cache holds only upstream answers, so a swapped
            #    snapshot decides the very next packet and no stale block can be served.
            get = pol.table.get
            off = 0
            while name[off]:
                listed = name[off:]
                rid = get(listed)
                if rid is not None:
                    if rid < 0:  # decides apart for the name itself and below it (feeds.snapshot)
                        rid = ~rid & 0xFFFFFFFF if not off else ~rid >> 32
                    if rid:  # 0: not blocked here (allowlist, exception, scope), stop looking
                        sink = pol.sinks[rid]
                        resp = sink.render(data, q, off, udp)  # type: ignore[union-attr]
                        if resp is None:  # rpz-drop, or rpz-tcp-only over TCP: resolve it
                            if not sink.drop:  # type: ignore[union-attr]
                                break
                            counts[_BLOCKED] += 1
                            self.recorder.record((self.wallclock(), client, name, q.qtype, sink.rule, listed, pol.version))  # type: ignore[union-attr]
                            return None
                        counts[_BLOCKED] += 1
                        self.recorder.record((self.wallclock(), client, name, q.qtype, sink.rule, listed, pol.version))  # type: ignore[union-attr]
                        if len(resp) > 512:
                            if udp and len(resp) > self._limit(q, udp):
                                # only with many warning-page addresses
                                return truncated(data, q, U16.unpack_from(resp, 2)[0], self.udp_size)
                        elif udp:
                            answers = pol.answers
                            if len(answers) >= _ANSWER_MEMO:
                                answers.clear()  # bounded; refills with what is asked now
                            answers[data[2:]] = (resp[2:], name, q.qtype, sink.rule, listed)  # type: ignore[union-attr]
                        return resp
                    break
                off += name[off] + 1

            # 3. ANY after policy (a listed name still gets its sinkhole) and before the cache:
            #    one synthesized HINFO (RFC 8482), never forwarded, so ANY amplifies nothing.
            if q.qtype == T_ANY:
                counts[_MINIMAL_ANY] += 1
                return minimal_any(data, q, self.udp_size)

            # 4. Cache: answers from upstream, TTLs decreased, the client's ID and letter case.
            key = name + data[name_end : name_end + 4] + _FLAG_KEY[q.do | (q.flags & CD) >> 3]
            cache = self.cache
            now = int(cache.clock())
            entry = cache.get(key, now)
            if entry is not None:
                if entry.expires <= now:  # expired, in the failure recheck after a failed refresh
                    return self._serve_stale(data, q, name, client, entry, self._limit(q, udp))
                if entry.cnames and self.cname_inspection:
                    blocked = self._cname_block(data, q, name, client, entry, self._limit(q, udp))
                    if blocked is not None:
                        return blocked or None  # b"": dropped
                counts[_CACHED] += 1
                resp = entry.render(data, q, now, self.udp_size, self._limit(q, udp))
                if udp:
                    cache.remember(data, resp, now, key)
                return resp
        except Exception:
            return self._failed(data, q)
        # 5. Upstream: the only stage that waits.
        return self._forward(data, q, name, key, client, self._limit(q, udp))

    def _limit(self, q: Query, udp: bool) -> int:
        """The largest answer this client can take: its EDNS size (at most ours), 512 without
        EDNS, anything over TCP."""
        if not udp:
            return 65535
        return min(q.edns_size, self.udp_size) if q.edns_size else 512

    def _rate_limited(self, data: bytes, verdict: int) -> bytes | None:
        """A limited UDP answer: an empty TC=1 answer when it is this prefix's turn to slip (a
        real client retries over TCP), else nothing. The limiter has counted it."""
        if verdict != SLIP:
            return None
        try:
            q = parse_query(data)
        except WireError:
            return None  # nothing readable to truncate: drop
        return truncated(data, q, _SLIP_FLAGS, self.udp_size)

    def _unreadable(self, data: bytes, exc: WireError) -> bytes | None:
        if isinstance(exc, Drop):
            self._counts[_DROPPED] += 1
            return None
        if isinstance(exc, NotImp):
            self._counts[_NOTIMP] += 1
            return error_response(data, None, NOTIMP, self.udp_size)
        self._counts[_FORMERR] += 1
        return error_response(data, None, FORMERR, self.udp_size)

    def _blocked(
        self, data: bytes, q: Query, name: bytes, client: str, pol: ActivePolicy, rid: int, off: int, listed: bytes, limit: int
    ) -> bytes:
        """A sinkhole answer outside the hot loop (CNAME inspection)."""
        sink = pol.sinks[rid]
        assert sink is not None
        resp = sink.render(data, q, off, limit != 65535)  # _limit: 65535 means TCP
        self._counts[_BLOCKED] += 1
        self.recorder.record((self.wallclock(), client, name, q.qtype, sink.rule, listed, pol.version))
        if resp is None:
            return b""  # dropped: the caller sends nothing
        if len(resp) > limit:
            return truncated(data, q, U16.unpack_from(resp, 2)[0], self.udp_size)
        return resp

    def _cname_block(
        self, data: bytes, q: Query, name: bytes, client: str, entry: CacheEntry, limit: int
    ) -> bytes | None:
        """Sinkhole the query when the answer's CNAME chain reaches a listed name."""
        pol = self.policy
        for target in entry.cnames:
            match = pol.snapshot.match(target)
            if match is not None and not (match.rule.action == "tcp-only" and limit == 65535):
                # The SOA of a negative answer is owned by the question name (offset 0): the
                # listed name is not in this message.
                return self._blocked(data, q, name, client, pol, match.rule.id, 0, match.listed, limit)
        return None

    async def _forward(self, data: bytes, q: Query, name: bytes, key: bytes, client: str, limit: int) -> bytes | None:
        started = time.perf_counter()  # a cache miss: timed for the latency histogram
        try:
            counts = self._counts
            fetch = self.inflight.get(key)
            if fetch is None:
                if len(self.inflight) >= self.max_inflight:
                    stale = self._stale(data, q, name, key, client, limit)
                    if stale is not None:
                        return stale
                    counts[_SERVFAIL] += 1
                    return error_response(data, q, SERVFAIL, self.udp_size, _EDE_UPSTREAM if q.edns_size else b"")
                # Identical questions in flight share one upstream exchange, bounded by its own
                # deadline (a timer that cancels it: cheaper than asyncio.timeout per miss).
                loop = asyncio.get_running_loop()
                fetch = loop.create_task(self._fetch(key, name, q.qtype, q.qclass, q.do, bool(q.flags & CD)))
                self.inflight[key] = fetch
                fetch.add_done_callback(self._fetch_done(key, loop.call_later(self.deadline, fetch.cancel)))
            # Each waiter has its own deadline and only reads the shared fetch's outcome, so a
            # waiter that gives up never cancels it for the others (what asyncio.shield did).
            waiter = asyncio.get_running_loop().create_future()
            relay = partial(_relay, waiter)
            fetch.add_done_callback(relay)
            timer = waiter.get_loop().call_later(self.deadline, _expire, waiter)
            try:
                entry = await waiter
            except (TimeoutError, UpstreamError, WireError) as exc:
                log.debug("upstream failed", error=str(exc) or type(exc).__name__)
                stale = self._stale(data, q, name, key, client, limit)
                if stale is not None:
                    return stale
                counts[_SERVFAIL] += 1
                return error_response(data, q, SERVFAIL, self.udp_size, _EDE_UPSTREAM if q.edns_size else b"")
            except Exception:
                return self._failed(data, q)
            finally:
                timer.cancel()
                fetch.remove_done_callback(relay)
            try:
                if entry.cnames and self.cname_inspection:
                    blocked = self._cname_block(data, q, name, client, entry, limit)
                    if blocked is not None:
                        return blocked or None  # b"": dropped
                counts[_FORWARDED] += 1
                return entry.render(data, q, self.cache.now(), self.udp_size, limit)
            except Exception:
                return self._failed(data, q)
        finally:
            self.latency.observe(time.perf_counter() - started)

    def _stale(self, data: bytes, q: Query, name: bytes, key: bytes, client: str, limit: int) -> bytes | None:
        """Serve-stale (RFC 8767): the expired answer for ``key`` when no upstream answered,
        if the cache still holds one young enough; None when it does not (then SERVFAIL)."""
        try:
            entry = self.cache.stale(key, self.cache.now())
            if entry is None:
                return None
            return self._serve_stale(data, q, name, client, entry, limit)
        except Exception:
            return self._failed(data, q)

    def _serve_stale(self, data: bytes, q: Query, name: bytes, client: str, entry: CacheEntry, limit: int) -> bytes | None:
        if entry.cnames and self.cname_inspection:
            blocked = self._cname_block(data, q, name, client, entry, limit)
            if blocked is not None:
                return blocked or None  # b"": dropped
        self._counts[_STALE] += 1
        return entry.render_stale(data, q, self.udp_size, limit, self.cache.settings.stale_ttl)

    def _fetch_done(self, key: bytes, deadline: asyncio.TimerHandle) -> Callable[[asyncio.Future[CacheEntry]], None]:
        def done(fetch: asyncio.Future[CacheEntry]) -> None:
            deadline.cancel()
            self.inflight.pop(key, None)
            # The fetch's own deadline starts a moment after its first waiter's, so it can fail
            # after every waiter has given up (shielded, so nobody awaits it then): consume the
            # exception here, or asyncio logs "Task exception was never retrieved" per query.
            if not fetch.cancelled():
                fetch.exception()

        return done

    async def _fetch(self, key: bytes, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> CacheEntry:
        raw = await self.upstream.resolve(name, qtype, qclass, do, cd)
        parsed = parse_answer(raw)
        entry, cacheable = self.cache.entry_for(parsed, self.cache.now())
        if cacheable:
            self.cache.put(key, entry)
        return entry

    def _failed(self, data: bytes, q: Query) -> bytes:
        """Our own bug: SERVFAIL and one log line with context, never a dead server."""
        self._counts[_SERVFAIL] += 1
        log.exception("internal error answering query", qtype=q.qtype, size=len(data))
        return error_response(data, q, SERVFAIL, self.udp_size, _EDE_INTERNAL if q.edns_size else b"")

