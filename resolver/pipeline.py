"""The query pipeline: the one place where the order of stages is written.

    rrl (UDP) -> wire.parse -> acl -> policy -> ANY (RFC 8482) -> cache -> upstream

Owns ``Pipeline.answer`` (bytes in; bytes, None or a pending ``Miss`` out) and the installed
policy (snapshot plus its precomputed sinkholes, swapped by one reference). Blocked and cached
answers are computed synchronously inside the caller's ``datagram_received``; only a cache miss
waits on the upstream. A miss is driven by callbacks, not tasks: the upstream's reply callback
parses and caches the reply and answers every client waiting on that question (the UDP
listener's ``then`` callback sends it), so a miss costs no loop iteration between the
upstream's reply and the client's answer. Callers that await get the same as a coroutine.
Every answer is counted under one ``Kind``.

Stages never touch sockets; the server makes no policy decisions.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import structlog

from feeds.snapshot import EMPTY, PolicySnapshot, Rule
from hits.record import HitTuple
from resolver.acl import Acl
from resolver.cache import AnswerCache, CacheEntry
from resolver.outcome import Counters, Kind
from resolver.rrl import SLIP, RateLimiter
from resolver.sinkhole import Sinkhole, build_sinkholes
from resolver.timers import FixedDelay
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
# What CNAME inspection answers when the chain reaches only observed names: answer normally.
OBSERVED = object()


# Upper bounds (seconds) of the forwarded-latency buckets; the last bucket is +Inf.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _settle(future: asyncio.Future[bytes | None], resp: bytes | None) -> None:
    if not future.done():
        future.set_result(resp)


class _TaskExchange:
    """Drives an upstream that only offers ``async resolve`` (a test double) with a task; the
    real ``UpstreamClient`` offers ``exchange`` and needs none."""

    __slots__ = ("task",)

    def __init__(self, upstream: Any, name: bytes, qtype: int, qclass: int, do: bool, cd: bool, done: Callable[..., None]) -> None:
        self.task = asyncio.ensure_future(upstream.resolve(name, qtype, qclass, do, cd))
        self.task.add_done_callback(partial(self._done, done))

    @staticmethod
    def _done(done: Callable[..., None], task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            return  # by cancel(): the caller has given up
        exc = task.exception()
        if exc is not None:
            done(None, exc)
        else:
            done(task.result(), None)

    def cancel(self) -> None:
        self.task.cancel()


class Miss:
    """A question that missed the cache. ``then(done)`` asks the upstream (or joins the same
    question already asked) and calls ``done(answer)`` once, from the upstream's reply callback
    or the deadline's timer: bytes, or None to send nothing. ``wait()`` is the same as a
    coroutine. Nothing is asked before either is called."""

    __slots__ = ("pipeline", "data", "q", "name", "key", "client", "limit", "started", "done", "fetch")

    def __init__(self, pipeline: Pipeline, data: bytes, q: Query, name: bytes, key: bytes, client: str, limit: int) -> None:
        self.pipeline = pipeline
        self.data, self.q, self.name, self.key, self.client, self.limit = data, q, name, key, client, limit
        self.started = 0.0
        self.done: Callable[[bytes | None], None] | None = None
        self.fetch: _Fetch | None = None

    def then(self, done: Callable[[bytes | None], None]) -> None:
        self.done = done
        self.pipeline._start(self)

    async def wait(self) -> bytes | None:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.then(partial(_settle, future))
        try:
            return await future
        except asyncio.CancelledError:
            self.pipeline._abandon(self)
            raise


class _Fetch:
    """One upstream exchange shared by every client asking the same question meanwhile."""

    __slots__ = ("key", "waiters", "timer", "exchange", "ended")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.waiters: list[Miss] = []
        self.timer: list[Any] | None = None  # its deadline (FixedDelay entry)
        self.exchange: Any = None
        self.ended = False


Answer = bytes | None | Coroutine[Any, Any, bytes | None] | Miss


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


class HitSink(Protocol):
    """Where blocked answers go as hits: ``hits.recorder.HitRecorder`` in one process, a
    worker's ``HitBatcher``. A protocol, so that the data plane does not import the hit log's
    recorder and store (a worker process has no use for them)."""

    def record(self, hit: HitTuple) -> None:
        """Take one hit; never blocks."""


class Pipeline:
    """Answers one DNS message. ``answer`` is called by the UDP and TCP servers alike."""

    def __init__(
        self,
        *,
        acl: Acl,
        cache: AnswerCache,
        upstream: UpstreamClient,
        recorder: HitSink,
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
        self.inflight: dict[bytes, _Fetch] = {}
        self._exchange = getattr(upstream, "exchange", None) or partial(_TaskExchange, upstream)
        self.latency = LatencyCounts()
        self.policy = self._prepare(EMPTY)

    @property
    def deadline(self) -> float:
        return self._deadlines.delay

    @deadline.setter
    def deadline(self, seconds: float) -> None:
        # A new queue for a new delay (keeps each in expiry order); the old one's timer still
        # serves the misses already in it.
        self._deadlines = FixedDelay(seconds)

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

    def set_cname_inspection(self, enabled: bool) -> None:
        """Check (or stop checking) CNAME targets against the policy (SIGHUP: ``policy.cname_inspection``)."""
        self.cname_inspection = enabled

    # -- the pipeline ---------------------------------------------------------------------

    def answer(self, data: bytes, client: str, udp: bool, then: bool = False) -> Answer:
        """bytes to send now, None to send nothing, or for a cache miss a coroutine that
        resolves to either (a ``Miss`` when ``then`` is true: the caller passes it a callback).

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
                        if resp is None:  # rpz-drop; rpz-tcp-only over TCP or observe mode: resolve it
                            if not sink.drop:  # type: ignore[union-attr]
                                if sink.observe:  # type: ignore[union-attr]
                                    # Observe mode (RPZ's "log only"): the hit "would block", the
                                    # answer is the upstream's. off = -1 keeps that answer out of
                                    # the hot memo below, which is read before the policy: every
                                    # repeat must come back here to be recorded.
                                    self._observed(client, name, q.qtype, sink.rule, listed, pol.version)  # type: ignore[union-attr]
                                    off = -1
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
                        if blocked is not OBSERVED:
                            return blocked or None  # b"": dropped
                        off = -1  # a CNAME target is observed: recorded, and not memoised (above)
                counts[_CACHED] += 1
                resp = entry.render(data, q, now, self.udp_size, self._limit(q, udp))
                if udp and off >= 0:  # off < 0: observed (see the policy stage)
                    cache.remember(data, resp, now, key)
                return resp
        except Exception:
            return self._failed(data, q)
        # 5. Upstream: the only stage that waits.
        miss = Miss(self, data, q, name, key, client, self._limit(q, udp))
        return miss if then else miss.wait()

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

    def _observed(self, client: str, name: bytes, qtype: int, rule: Rule, listed: bytes, version: int) -> None:
        """A query for a name only observing agencies list: one hit ("would block"), counted
        apart from blocked answers; the caller answers it as an unlisted name."""
        self.counters.observed += 1
        self.recorder.record((self.wallclock(), client, name, qtype, rule, listed, version))

    def _cname_block(
        self, data: bytes, q: Query, name: bytes, client: str, entry: CacheEntry, limit: int
    ) -> bytes | object | None:
        """Sinkhole the query when the answer's CNAME chain reaches a listed name; ``OBSERVED``
        when it reaches only observed names (their hit is recorded, the answer goes out)."""
        pol = self.policy
        seen = None
        for target in entry.cnames:
            match = pol.snapshot.match(target)
            if match is not None and not (match.rule.action == "tcp-only" and limit == 65535):
                if match.rule.observe:
                    seen = seen or match
                    continue
                # The SOA of a negative answer is owned by the question name (offset 0): the
                # listed name is not in this message.
                return self._blocked(data, q, name, client, pol, match.rule.id, 0, match.listed, limit)
        if seen is not None:
            self._observed(client, name, q.qtype, seen.rule, seen.listed, pol.version)
            return OBSERVED
        return None

    def _start(self, m: Miss) -> None:
        """Ask the upstream for ``m`` or join the same question in flight (Miss.then)."""
        m.started = time.perf_counter()  # a cache miss: timed for the latency histogram
        fetch = self.inflight.get(m.key)
        if fetch is not None:
            m.fetch = fetch
            fetch.waiters.append(m)
            return
        if len(self.inflight) >= self.max_inflight:
            self._deliver(m, self._unanswered(m))
            return
        # Identical questions in flight share one upstream exchange, bounded by its deadline
        # (one timer per exchange: a waiter that joins later has a later deadline of its own,
        # so the exchange's ends first and answers it too).
        fetch = _Fetch(m.key)
        m.fetch = fetch
        fetch.waiters.append(m)
        self.inflight[m.key] = fetch
        fetch.timer = self._deadlines.add(asyncio.get_running_loop(), self._expired, fetch)
        q = m.q
        try:
            exchange = self._exchange(m.name, q.qtype, q.qclass, q.do, bool(q.flags & CD), partial(self._fetched, fetch))
            if not fetch.ended:  # it may have failed over to nothing inside that call
                fetch.exchange = exchange
        except Exception:
            self._end(fetch)
            for w in fetch.waiters:
                self._deliver(w, self._failed(w.data, w.q))

    def _end(self, fetch: _Fetch) -> bool:
        """Take ``fetch`` out of flight; False if it had already ended.

        Its links to its exchange and deadline go here, and each waiter's link back to it in
        ``_deliver``: a miss's objects (fetch, exchange, deadline entry, misses) would otherwise
        form reference cycles, freed only by the collector's full passes, which walk the whole
        cache each time (a third of a busy resolver's time in a run of misses)."""
        if fetch.ended:
            return False
        fetch.ended = True
        fetch.exchange = None
        timer = fetch.timer
        if timer is not None:
            timer[1] = timer[2] = None  # FixedDelay.cancel
            fetch.timer = None
        if self.inflight.get(fetch.key) is fetch:
            del self.inflight[fetch.key]
        return True

    def _expired(self, fetch: _Fetch) -> None:
        exchange = fetch.exchange
        if exchange is not None:
            exchange.cancel()
        self._fetched(fetch, None, TimeoutError())

    def _fetched(self, fetch: _Fetch, raw: bytes | None, exc: BaseException | None) -> None:
        """The exchange's outcome: cache the reply and answer every waiter (the reply callback)."""
        if not self._end(fetch):
            return
        waiters = fetch.waiters
        if exc is None:
            try:
                cache = self.cache
                now = cache.now()
                entry, cacheable = cache.entry_for(parse_answer(raw), now)  # type: ignore[arg-type]
                if cacheable:
                    cache.put(fetch.key, entry)
            except WireError as bad:
                exc = bad
            except Exception:
                for m in waiters:
                    self._deliver(m, self._failed(m.data, m.q))
                return
            else:
                for m in waiters:
                    if m.done is not None:
                        self._reply(m, entry, now)
                return
        if isinstance(exc, (TimeoutError, UpstreamError, WireError)):
            log.debug("upstream failed", error=str(exc) or type(exc).__name__)
            for m in waiters:
                if m.done is not None:
                    self._deliver(m, self._unanswered(m))
            return
        try:
            raise exc
        except Exception:  # our own bug below us: logged with its traceback, every waiter answered
            for m in waiters:
                self._deliver(m, self._failed(m.data, m.q))

    def _reply(self, m: Miss, entry: CacheEntry, now: int) -> None:
        try:
            if entry.cnames and self.cname_inspection:
                blocked = self._cname_block(m.data, m.q, m.name, m.client, entry, m.limit)
                if blocked is not None and blocked is not OBSERVED:
                    self._deliver(m, blocked or None)  # type: ignore[arg-type]  # b"": dropped
                    return
            self._counts[_FORWARDED] += 1
            resp = entry.render(m.data, m.q, now, self.udp_size, m.limit)
        except Exception:
            resp = self._failed(m.data, m.q)
        self._deliver(m, resp)

    def _unanswered(self, m: Miss) -> bytes | None:
        """No upstream answered in time: serve-stale if the cache can, else SERVFAIL."""
        stale = self._stale(m.data, m.q, m.name, m.key, m.client, m.limit)
        if stale is not None:
            return stale
        self._counts[_SERVFAIL] += 1
        return error_response(m.data, m.q, SERVFAIL, self.udp_size, _EDE_UPSTREAM if m.q.edns_size else b"")

    def _deliver(self, m: Miss, resp: bytes | None) -> None:
        done = m.done
        if done is None:
            return  # abandoned (its awaiting task was cancelled)
        m.done = None
        m.fetch = None  # no cycle back through the fetch's waiters (_end)
        self.latency.observe(time.perf_counter() - m.started)
        try:
            done(resp)
        except Exception:
            log.exception("sending a forwarded answer failed")

    def _abandon(self, m: Miss) -> None:
        """The coroutine waiting on ``m`` was cancelled: the shared exchange goes on for the
        others (as asyncio.shield did) and answers nobody for this one."""
        if m.done is not None:
            m.done = None
            self.latency.observe(time.perf_counter() - m.started)
            fetch = m.fetch
            m.fetch = None
            if fetch is not None and not fetch.ended:
                fetch.waiters.remove(m)

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
            if blocked is not None and blocked is not OBSERVED:
                return blocked or None  # type: ignore[return-value]  # b"": dropped
        self._counts[_STALE] += 1
        return entry.render_stale(data, q, self.udp_size, limit, self.cache.settings.stale_ttl)

    def _failed(self, data: bytes, q: Query) -> bytes:
        """Our own bug: SERVFAIL and one log line with context, never a dead server."""
        self._counts[_SERVFAIL] += 1
        log.exception("internal error answering query", qtype=q.qtype, size=len(data))
        return error_response(data, q, SERVFAIL, self.udp_size, _EDE_INTERNAL if q.edns_size else b"")

