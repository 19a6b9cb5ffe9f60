"""The control plane's side of the DNS worker processes (``dns.workers`` > 0).

Owns the DNS sockets (bound here with SO_REUSEPORT, one UDP and one listening TCP socket per
worker and listen address, and kept open here, so a worker's replacement inherits the very
sockets, with the datagrams and connections that queued while it was gone), starting and
supervising the workers (a worker that dies is replaced after a short backoff, logged and
counted, while the others go on answering), policy swaps (a swap is in force once every live
worker has acknowledged it; a worker that does not within ``SWAP_TIMEOUT`` is replaced, so none
can go on answering from the old list), SIGHUP's client ACL, the hits the workers hand over (in
batches, mapped back to this process's rules and recorded by the hit log's ``HitRecorder``),
their counters for /metrics, and the drain at SIGTERM.

The workers themselves are ``betblock.worker``; the messages are ``betblock.channel``'s.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from betblock import channel, handover
from betblock.dataplane import Sections
from config.errors import BetblockError
from config.settings import Settings
from feeds.snapshot import PolicySnapshot, Rule
from hits.batch import HIT_FIELDS
from hits.recorder import HitRecorder
from resolver import stats as dpstats
from resolver.outcome import Kind

log = structlog.get_logger("betblock.workers")

SWAP_TIMEOUT = 10.0  # seconds every worker has to take a new snapshot (a 1M list loads in about 1)
START_TIMEOUT = 60.0  # seconds a worker has to load the policy and open its listeners at start
STATS_TIMEOUT = 1.0  # seconds a report of the workers' counters waits for each (else its last one)
STATS_EVERY = 1.0  # seconds between reports: /metrics shows counters at most this old
STOP_TIMEOUT = 10.0  # seconds the workers have to drain at SIGTERM; then they are killed
VERSIONS_KEPT = 16  # snapshots whose rules map hits of that version back (hits arrive late)
RCVBUF = 4 << 20  # as resolver.server.DnsServer: a burst queues instead of dropping


class WorkerError(BetblockError):
    """The workers could not be started."""


class _Worker:
    """One running worker process as the control plane sees it."""

    def __init__(self, slot: int, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.slot = slot
        self.proc = proc
        self.pid = proc.pid
        self.reader = reader
        self.writer = writer
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.version = 0  # the snapshot it has acknowledged
        self.waiting: dict[int, asyncio.Future[Any]] = {}  # seq -> its answer
        self.stats: dpstats.Stats | None = None  # its last report
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None  # reads its messages until it is gone


class Workers:
    """Binds, starts, supervises and drains ``count`` worker processes."""

    def __init__(
        self,
        settings: Settings,
        recorder: HitRecorder,
        count: int,
        log_format: str | None = None,
        show: Callable[[dpstats.Stats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.show = show  # where the workers' summed counters go after each report (for /metrics)
        self.recorder = recorder
        self.count = count
        self.log_format = log_format
        self.directory = settings.data_dir / "workers"
        self.slots: list[_Worker | None] = [None] * count
        self.sockets: list[list[tuple[socket.socket, socket.socket | None]]] = [[] for _ in range(count)]
        self.bound: list[tuple[str, int]] = []
        self.current: tuple[int, Path] | None = None  # the snapshot in force: version, hand-over file
        self.rules: OrderedDict[int, tuple[Rule | None, ...]] = OrderedDict()
        self.retired: dpstats.Stats = {"counters": {}, "gauges": {}}  # counts of workers that died
        self.restarts = 0
        self.unmapped = 0  # hits of a snapshot version no longer known (counted as lost)
        self.stopping = False
        self._seq = 0
        self._dead: asyncio.Queue[_Worker] = asyncio.Queue()
        self._fails = [0] * count  # quick deaths in a row per slot (the backoff)
        self._swap = asyncio.Lock()

    # -- sockets ------------------------------------------------------------------------

    def bind(self) -> list[tuple[str, int]]:
        """Bind every listen address once per worker with SO_REUSEPORT; the bound (host, port)s."""
        for host, port in self.settings.dns.listen_addresses():
            # Port 0 (tests): every socket must take the number the first one got, which
            # another socket may hold for TCP; pick again rather than fail (as DnsServer does).
            for attempt in range(20 if port == 0 else 1):
                try:
                    bound, group = self._bind_group(host, port)
                    break
                except OSError as exc:
                    if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                        self.close_sockets()
                        raise
            for slot, pair in enumerate(group):
                self.sockets[slot].append(pair)
            self.bound.append((host, bound))
            log.info("listening", address=host, port=bound, tcp=self.settings.dns.tcp, workers=self.count)
        return self.bound

    def _bind_group(self, host: str, port: int) -> tuple[int, list[tuple[socket.socket, socket.socket | None]]]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        made: list[socket.socket] = []

        def new(kind: int) -> socket.socket:
            s = socket.socket(family, kind)
            made.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            return s

        group: list[tuple[socket.socket, socket.socket | None]] = []
        try:
            for _ in range(self.count):
                u = new(socket.SOCK_DGRAM)
                u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                u.bind((host, port))
                port = u.getsockname()[1]  # port 0: the rest take the same number
                t = None
                if self.settings.dns.tcp:
                    t = new(socket.SOCK_STREAM)
                    t.bind((host, port))
                    t.listen(1024)  # connections queue here until a worker accepts them
                group.append((u, t))
        except OSError:
            for s in made:
                s.close()
            raise
        return port, group

    def close_sockets(self) -> None:
        for pairs in self.sockets:
            for u, t in pairs:
                u.close()
                if t is not None:
                    t.close()
            pairs.clear()

    # -- processes ----------------------------------------------------------------------

    async def start(self, snapshot: PolicySnapshot) -> None:
        """Start every worker with ``snapshot`` (the first one installed) and wait until each answers."""
        if self.current is None or self.current[0] != snapshot.version:
            await self._write(snapshot)
        for slot in range(self.count):
            await self._spawn(slot)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for w in list(self.slots):
                    if w is not None:
                        await w.ready
        except (TimeoutError, WorkerError) as exc:
            await self.stop()
            raise WorkerError(f"DNS workers did not start: {exc or 'timed out'}") from None

    async def _spawn(self, slot: int) -> None:
        assert self.current is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        socks = self.sockets[slot]
        fds = [theirs.fileno()] + [s.fileno() for pair in socks for s in pair if s is not None]
        try:
            # From the event loop's thread: the parent-death signal the worker asks for follows
            # the thread that started it.
            proc = subprocess.Popen(
                [sys.executable, "-m", "betblock.worker", str(theirs.fileno()), str(os.getpid())],
                pass_fds=fds, stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        w = _Worker(slot, proc, reader, writer)
        self.slots[slot] = w
        hello = {
            "slot": slot,
            "sections": Sections.dump(self.settings),  # what a worker is built from
            "log_format": self.log_format,
            "policy": str(self.current[1]),
            "sockets": [(u.fileno(), t.fileno() if t is not None else None) for u, t in socks],
            "hits_enabled": self.settings.hits.enabled,
            "hits_buffer": self.settings.hits.buffer_size,
        }
        channel.send(writer, ("hello", hello))
        w.task = asyncio.ensure_future(self._read(w))
        log.info("worker started", worker=slot, pid=proc.pid)

    async def _read(self, w: _Worker) -> None:
        """Every message of worker ``w`` until it is gone; then what its going means."""
        try:
            while True:
                msg = await channel.receive(w.reader)
                if msg is None:
                    break
                kind = msg[0]
                if kind == "hits":
                    self._hits(msg[1], msg[2], msg[3])
                elif kind in ("ack", "stats"):
                    if kind == "ack":
                        w.version = max(w.version, msg[2])
                    else:
                        w.stats = msg[2]
                    fut = w.waiting.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg[2])
                elif kind == "ready":
                    w.version = msg[2]
                    if not w.ready.done():
                        w.ready.set_result(msg[1])
                    log.info("worker answering", worker=w.slot, pid=w.pid, version=w.version)
                elif kind == "bye":
                    w.stats = msg[1]
        except Exception:
            log.exception("reading a worker's messages failed", worker=w.slot, pid=w.pid)
        finally:
            await self._gone(w)

    async def _gone(self, w: _Worker) -> None:
        w.writer.close()
        try:
            code = await asyncio.wait_for(asyncio.to_thread(w.proc.wait), 5.0)
        except TimeoutError:  # the channel closed but the process lingers: make sure
            w.proc.kill()
            code = await asyncio.to_thread(w.proc.wait)
        for fut in w.waiting.values():
            if not fut.done():
                fut.set_result(None)  # it answers nothing any more: nothing to wait for
        if w.stats is not None:  # keep its counts: the totals must not go down
            self.retired = dpstats.merge([self.retired, {"counters": w.stats["counters"], "gauges": {}}])
        if self.slots[w.slot] is w:
            self.slots[w.slot] = None
        if not w.ready.done():
            w.ready.set_exception(WorkerError(f"worker {w.slot} (pid {w.pid}) exited with {code} before answering"))
        if self.stopping:
            return
        lived = time.monotonic() - w.started
        self._fails[w.slot] = self._fails[w.slot] + 1 if lived < 10 else 0
        self.restarts += 1
        log.error("DNS worker died", worker=w.slot, pid=w.pid, exit=code, lived=round(lived, 1),
                  action="starting another; the others go on answering")
        self._dead.put_nowait(w)

    async def run(self) -> None:
        """Replace workers that die (after a backoff when they keep dying) and keep their
        counters fresh, until cancelled."""
        while True:
            try:
                async with asyncio.timeout(STATS_EVERY):
                    dead = await self._dead.get()
            except TimeoutError:
                await self.refresh_stats()
                continue
            fails = self._fails[dead.slot]
            if fails:
                await asyncio.sleep(min(5.0, 0.1 * 2 ** (fails - 1)))
            if not self.stopping and self.slots[dead.slot] is None:
                await self._spawn(dead.slot)

    def live(self) -> list[_Worker]:
        return [w for w in self.slots if w is not None and not w.writer.is_closing()]

    def _ask(self, w: _Worker, kind: str, *args: Any) -> asyncio.Future[Any]:
        self._seq += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        w.waiting[self._seq] = fut
        if not channel.send(w.writer, (kind, self._seq, *args)):
            fut.set_result(None)
        return fut

    async def _all(self, kind: str, timeout: float, *args: Any, starting: bool = True) -> tuple[list[_Worker], list[_Worker]]:
        """Send a request to every live worker (``starting``: also those still starting, which
        answer once they listen and get ``START_TIMEOUT`` for it); (those that answered, those
        that did not) within the bound."""
        asked = [(w, self._ask(w, kind, *args)) for w in self.live() if starting or w.ready.done()]
        started = [f for w, f in asked if w.ready.done()]
        if started:
            await asyncio.wait(started, timeout=timeout)
        if len(started) < len(asked):
            await asyncio.wait([f for _, f in asked], timeout=START_TIMEOUT)
        return [w for w, f in asked if f.done()], [w for w, f in asked if not f.done()]

    # -- policy, configuration, hits, counters ------------------------------------------

    async def _write(self, snapshot: PolicySnapshot) -> Path:
        path = await asyncio.to_thread(handover.write, snapshot, self.directory)
        self.rules[snapshot.version] = snapshot.rules  # before any worker can record a hit of it
        while len(self.rules) > VERSIONS_KEPT:
            self.rules.popitem(last=False)
        self.current = (snapshot.version, path)
        return path

    async def install(self, snapshot: PolicySnapshot) -> None:
        """Hand ``snapshot`` to every worker; return once each live one has it in force. A
        worker started meanwhile loads it at start (or gets it here too)."""
        async with self._swap:  # one swap at a time, in order
            path = await self._write(snapshot)
            started = time.perf_counter()
            _, late = await self._all("policy", SWAP_TIMEOUT, str(path), snapshot.version)
            for w in late:
                # It could go on answering from the old list: replace it (the new one loads this one).
                log.error("DNS worker did not take the new policy in time; replacing it",
                          worker=w.slot, pid=w.pid, version=snapshot.version, timeout=SWAP_TIMEOUT)
                w.proc.kill()
            if self.live():
                log.info("policy in force in every worker", version=snapshot.version,
                         seconds=round(time.perf_counter() - started, 3), workers=len(self.live()))
            if not late:
                handover.prune(self.directory, path)

    async def configure(self, settings: Settings) -> None:
        """SIGHUP: the client ACL and CNAME inspection of ``settings`` to every worker (and to
        every worker started from now on)."""
        self.settings = settings
        allow, cname = list(settings.acl.allow), settings.policy.cname_inspection
        answered, late = await self._all("config", SWAP_TIMEOUT, allow, cname)
        for w in late:
            log.error("DNS worker did not take the new configuration in time; replacing it", worker=w.slot, pid=w.pid)
            w.proc.kill()
        log.info("reload: workers reconfigured", workers=len(answered))

    def _hits(self, flat: list[Any], agg: dict[tuple[Any, ...], int], dropped: int) -> None:
        """A worker's batch: rule ids back to this process's rules, then into the hit log."""
        n = HIT_FIELDS
        try:
            versions = set(flat[6::n])
            if len(versions) == 1:
                rules = self.rules[versions.pop()]
                flat[4::n] = list(map(rules.__getitem__, flat[4::n]))
            elif versions:  # a batch across a swap
                rules_of = self.rules
                flat[4::n] = [rules_of[v][i] for i, v in zip(flat[4::n], flat[6::n])]
            mapped = {(k[0], k[1], k[2], k[3], self.rules[k[6]][k[4]], k[5], k[6]): c for k, c in agg.items()}
        except (KeyError, IndexError):  # a version older than VERSIONS_KEPT swaps: counted as lost
            lost = len(flat) // n + sum(agg.values())
            self.unmapped += lost
            self.recorder.record_batch([], {}, dropped + lost)
            log.error("hits of an unknown policy version; counted as lost", lost=lost)
            return
        self.recorder.record_batch(flat, mapped, dropped)

    async def refresh_stats(self) -> None:
        """Ask every worker for its counters and show their sum."""
        await self._all("stats", STATS_TIMEOUT, starting=False)  # one still starting has no counts yet
        if self.show is not None:
            self.show(self.dataplane_stats())

    def dataplane_stats(self) -> dpstats.Stats:
        """Every worker's counters summed (with those of workers that have died)."""
        return dpstats.merge([self.retired] + [w.stats for w in self.slots if w is not None and w.stats is not None])

    def levels(self) -> dict[str, int]:
        """Every live worker's levels (cache entries, connections, ...) summed, as of its last
        report; a worker that died holds nothing any more."""
        return dpstats.merge([w.stats for w in self.slots if w is not None and w.stats is not None])["gauges"]

    def metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("betblock_workers", "DNS worker processes answering now", value=len(self.live()))
        yield CounterMetricFamily("betblock_worker_restarts", "DNS worker processes replaced after they died", value=self.restarts)
        per = CounterMetricFamily("betblock_worker_answers", "DNS answers by worker process and outcome kind", labels=["worker", "kind"])
        for w in self.slots:
            if w is not None and w.stats is not None:
                counts = w.stats["counters"]["answers"]
                for kind in Kind:
                    per.add_metric([str(w.slot), kind.name.lower()], counts[kind] if kind < len(counts) else 0)
        yield per
        # Levels per worker too: the plain families carry their sum (``levels``), this how it splits.
        for name, key, doc in (
            ("betblock_worker_cache_entries", "cache_entries", "Answers held in each worker's cache"),
            ("betblock_worker_upstream_inflight", "inflight", "Distinct questions each worker has waiting on upstreams"),
            ("betblock_worker_tcp_connections", "tcp_connections", "Open client TCP connections per worker"),
        ):
            family = GaugeMetricFamily(name, doc, labels=["worker"])
            for w in self.slots:
                if w is not None and w.stats is not None:
                    family.add_metric([str(w.slot)], w.stats["gauges"].get(key, 0))
            yield family

    # -- shutdown -----------------------------------------------------------------------

    async def stop(self) -> None:
        """Drain every worker (they stop reading, answer what is in flight, send their last
        hits), within ``STOP_TIMEOUT``; kill what is left; release the sockets."""
        self.stopping = True
        workers = [w for w in self.slots if w is not None]
        for w in workers:
            channel.send(w.writer, ("stop",))
        tasks = [w.task for w in workers if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for w in workers:
                if w.task in pending:
                    log.error("DNS worker did not drain in time; killing it", worker=w.slot, pid=w.pid)
                    w.proc.kill()
            if pending:
                await asyncio.wait(pending)
        self.close_sockets()
        if self.current is not None:
            handover.prune(self.directory, Path())  # every hand-over file: the next start writes its own
