"""The composition root: settings -> snapshot -> resolver -> listeners, run under one TaskGroup.

Owns the wiring of every part and the process lifecycle: start-up (lists compiled before the
listeners open, so no listed name is ever answered unblocked), SIGHUP (lists recompiled off the
event loop and swapped), SIGTERM/SIGINT (listeners closed, queries in flight finished, hits
flushed; handled from the first moment of ``run``, and before it held by ``betblock.signals``,
so a stop signal during start-up stops the node once the first snapshot is in, without opening
DNS). With ``dns.workers`` > 0 the DNS answering runs in worker processes that
``betblock.workers`` starts and supervises (each wires its own data plane in
``betblock.worker``); this process keeps the control plane. Nothing else wires components together.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from betblock import access, compliance, dataplane, signals as held_signals
from betblock.authlimit import FailureLimiter
from betblock.auth import Authenticator
from betblock.portal import Portal
from betblock.http import HttpMount, HttpServer, build_app, connection_limit, http_metrics, raise_nofile_limit
from betblock.metrics import (
    ExtraMetrics, cache_metrics, mount_metrics, pipeline_metrics, ready_metric, recorder_metrics, tcp_metrics, upstream_metrics,
)
from betblock.review import ManagerView
from betblock.warning import Provenance, WarningPage
from betblock.workers import WorkerError, Workers
from config.settings import ConfigError, Settings, load_settings
from feeds import api as feeds_api
from feeds.manager import FeedManager
from feeds.store import StoreProblem
from feeds.snapshot import PolicySnapshot
from hits import api as hits_api
from hits.service import HitLog
from hits.store import StoreError
from resolver.acl import Acl
from resolver.server import DnsServer
from resolver import stats
from xfr.service import XfrService

log = structlog.get_logger("betblock.app")

# Sections a SIGHUP does not apply (listeners, sockets, stores and the feed sources are built
# at start); ``policy`` and every list and policy file are re-read.
RESTART_SECTIONS = ("dns", "upstream", "cache", "rrl", "agencies", "hits", "http", "warning_page", "log", "data_dir", "umask")
RESTART_SECTIONS += ("xfr",)  # the transfer listener and its zones are built at start


class App:
    """One betblock node. ``start`` makes it answer; ``stop`` drains it."""

    def __init__(
        self,
        settings: Settings,
        *,
        handle_signals: bool = True,
        http_mounts: Iterable[HttpMount] = (),
        clock: Callable[[], float] = time.time,
        config_path: Path | None = None,
        workers: int = 0,
        log_format: str | None = None,
        settle_heap: bool = False,
    ) -> None:
        self.settings = settings
        # ``betblock serve`` freezes the heap at each install (``dataplane.settle_heap``); the
        # tests' in-process nodes share the test runner's heap and leave it alone.
        self.settle_heap = settle_heap
        self.config_path = config_path  # re-read on SIGHUP when set
        self.handle_signals = handle_signals
        # The hit log: store (opened in run), writer thread, recorder, retention job.
        self.hitlog = HitLog(settings)
        self.recorder = self.hitlog.recorder
        plane = dataplane.build(settings, self.recorder)
        self.cache, self.upstream, self.rrl, self.pipeline = plane.cache, plane.upstream, plane.rrl, plane.pipeline
        self.server = DnsServer(settings.dns, self.pipeline.answer)
        # With worker processes (``dns.workers`` > 0, ``betblock serve``'s default) they answer
        # DNS and the parts above only hold this process's view of the policy; 0 answers here.
        self.workers = (
            Workers(settings, self.recorder, workers, log_format, show=lambda total: stats.show(total, self.pipeline, self.server))
            if workers else None
        )
        # The policy as RPZ zones for a fleet (off unless [xfr] enabled): every installed
        # snapshot is also published there.
        self.xfr = XfrService(settings, clock) if settings.xfr.enabled else None
        # The feeds control plane: sources, store, guardrails, compile; it installs snapshots.
        self.feeds = FeedManager(settings, self._install, clock=clock)
        if self.workers is not None:
            # A compiled snapshot is in force (reported by the API, published to the fleet) only
            # once every worker answers from it.
            self.feeds.builder.handover = self.workers.install
        if self.xfr is not None:  # a NOTIFY for a zone an xfr source follows polls it now
            self.xfr.server.on_notify = self.feeds.notify
        # Owners add their HTTP routes here (feeds: agency API; hits: admin API and page).
        self.http_mounts: list[HttpMount] = list(http_mounts)
        # Owners add metric families here (feed status, hit store); read at scrape time.
        self.extra_metrics: list[ExtraMetrics] = [self.hitlog.metrics, *self.feeds.collectors]
        # Failed authentications per client address, shared by every API route.
        self.auth_limiter = FailureLimiter(settings.http.auth_max_failures, settings.http.auth_lockout_max)
        self.extra_metrics.append(http_metrics(lambda: {"api": self.http, "warning_page": self.warning}, self.auth_limiter))
        if self.xfr is not None:
            self.extra_metrics.append(self.xfr.metrics)
        if self.workers is not None:
            # This process's data-plane counters show the workers' sum (``stats.show``), its
            # levels are read from theirs (``Workers.levels``); this adds what is per worker:
            # answers, cache, TCP, how many run, restarts.
            self.extra_metrics.append(self.workers.metrics)
        # "Why is this name blocked?": one service for the API, the page and the tests.
        self.lookup = self.feeds.lookup
        # One auth layer for every route: admin and agency tokens, page sessions, declared roles.
        self.auth = Authenticator(
            settings.http.admin_token, [(a.id, a.token_sha256) for a in settings.agencies if a.token_sha256], clock
        )
        self.http_mounts.append(self.auth.mount)
        self.http_mounts.append(feeds_api.mount(self.feeds, max_body_bytes=settings.http.max_body_bytes))
        self.http_mounts.append(
            hits_api.mount(
                self.hitlog.store,
                auth=self.auth,
                lookup=self.lookup,
                feed_status=self.feed_status,
                recorder_stats=self.recorder.stats,
                retention_days=settings.hits.retention_days,
                health=self.hitlog.health,
                feeds_view=ManagerView(self.feeds),
                privacy=settings.hits.privacy,
            )
        )
        # The agency portal: each agency's own feed, compliance and hits (reads feeds and hits).
        self.http_mounts.append(Portal(self.feeds, self.hitlog.store, self.auth, clock).mount)
        self.http_mounts.append(
            compliance.mount(self.feeds, lambda: compliance.query_address(*self.server.bound[0]))
        )
        # Levels (cache entries, connections, ...): with workers their sum, as the counters.
        levels = self.workers.levels if self.workers is not None else lambda: stats.levels(self.pipeline, self.server)
        node_metrics = [
            pipeline_metrics(self.pipeline, settings.agencies, levels), cache_metrics(self.cache, levels),
            upstream_metrics(self.upstream), recorder_metrics(self.recorder.stats), tcp_metrics(self.server.tcp, levels),
            ready_metric(lambda: self.ready.is_set()),
        ]
        self.http_mounts.append(mount_metrics([*node_metrics, *self.extra_metrics]))
        self.http: HttpServer | None = None
        self.warning: HttpServer | None = None
        # (agency id, listed name) -> legal reference and dates, for the warning page; set by feeds.
        self.provenance: Provenance | None = self.feeds.provenance
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Future[None]] = set()
        self._hup_pending = False  # a SIGHUP during start-up: the reload runs once ready

    def _install(self, snapshot: PolicySnapshot) -> None:
        self.pipeline.install(snapshot)
        if self.xfr is not None:
            self.xfr.publish(snapshot)
        if self.settle_heap:
            dataplane.settle_heap()

    async def load_policy(self) -> PolicySnapshot:
        """Install the first snapshot: the one saved by the last run when it still holds, else
        the lists in the feed store plus the local files, compiled in a thread."""
        return await self.feeds.start()

    def degraded(self) -> dict[str, object]:
        """What failed without stopping DNS, for /readyz."""
        hits = self.hitlog.health()
        return {"hits": hits} if hits is not None else {}

    def feed_status(self) -> list[dict[str, object]]:
        """Per agency: configuration, entries in force, last fetch, failures, quarantine."""
        status = self.feeds.status()
        rows: list[dict[str, object]] = []
        for a in status["agencies"]:
            sources = a["sources"]
            rows.append(
                {
                    "id": a["id"],
                    "name": a["name"],
                    "jurisdiction": a["jurisdiction"],
                    "precedence": a["precedence"],
                    "action": a["action"],
                    "sources": len(sources),
                    "entries": a["entries"],
                    # The oldest good fetch of its sources: the one a deadline runs out on first.
                    "last success": "never"
                    if any(s["last_success"] is None for s in sources)
                    else min((s["last_success"] for s in sources), default=""),
                    "failing": ", ".join(a["failing"]),
                    "quarantined": ", ".join(f"v{q['version']}" for q in a["quarantined"]),
                }
            )
        return rows

    async def reload(self) -> None:
        """SIGHUP: re-read the configuration file (when the node was started from one) and
        apply its ``policy`` section; re-read the allowlist, protected names and list files;
        recompile and swap. Queries go on being answered by the snapshot in force meanwhile.
        Other changed sections are named in one log line: they take effect at the next start."""
        async with self._reload_lock:
            if self.config_path is not None:
                try:
                    new = await asyncio.to_thread(load_settings, self.config_path)
                    new = access.with_admin_token(new)[0]  # the same token as at start
                except (ConfigError, OSError) as exc:
                    log.error("reload: configuration refused; keeping the current one", error=str(exc))
                else:
                    before = (self.settings.acl, self.settings.policy.cname_inspection)
                    self._apply(new)
                    after = (self.settings.acl, self.settings.policy.cname_inspection)
                    if self.workers is not None and after != before:
                        await self.workers.configure(self.settings)
            await self.feeds.reload()

    def _hangup(self) -> None:
        if not self.ready.is_set():
            self._hup_pending = True  # a reload now would race the first compile: after it
            return
        task = asyncio.ensure_future(self._reload_logged())
        self._reloads.add(task)  # referenced until done; reloads queue on the reload lock
        task.add_done_callback(self._reloads.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # a bug in a reload must not take the node down: the old lists stay
            log.exception("reload failed; the snapshot in force stays")

    def _apply(self, new: Settings) -> None:
        """Take the reloadable part of a re-read configuration: the client ACL and the policy section."""
        fixed = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(self.settings, name)]
        if fixed:
            log.warning("reload: these settings changed and need a restart", sections=fixed)
        if new.acl != self.settings.acl:
            # An ISP adds subscriber ranges without a restart; the memo starts empty.
            self.pipeline.set_acl(Acl(new.acl.networks()))
            self.settings = self.settings.model_copy(update={"acl": new.acl})
            log.info("reload: client ACL applied", allow=new.acl.allow)
        if new.policy == self.settings.policy:
            return
        self.settings = self.settings.model_copy(update={"policy": new.policy})
        self.feeds.apply_policy(new.policy)
        self.pipeline.set_cname_inspection(new.policy.cname_inspection)
        log.info("reload: policy settings applied")

    async def run(self) -> None:
        """Serve until ``stopping`` is set; then drain and flush."""
        # Signals first, before any listener opens: a SIGTERM at any moment of the start-up ends
        # in the orderly stop (at the next safe point) instead of the default action.
        loop = asyncio.get_running_loop()
        signals = held_signals.HANDLED if self.handle_signals else ()
        if signals:
            loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
            loop.add_signal_handler(signal.SIGINT, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
            for sig in held_signals.take():  # those that came before the loop (the cli held them)
                if sig == signal.SIGHUP:
                    self._hangup()
                else:
                    self.stopping.set()
        try:
            await self._run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _run(self) -> None:
        # HTTP first: /healthz answers and /readyz says 503 while the first snapshot compiles
        # (other routes answer 503 until ready); DNS opens only once the lists are in force.
        self.http_limit = connection_limit(self.settings.http.max_connections, raise_nofile_limit())
        if self.settings.http.enabled:
            self.http = HttpServer(
                self.settings.http.address(),
                build_app(
                    self.settings.http, ready=self.ready.is_set, mounts=self.http_mounts,
                    degraded=self.degraded, limiter=self.auth_limiter,
                ),
                self.settings.http,
                limit=self.http_limit,
            )
            await self.http.start()
        try:
            await self._start_serving()
        except BaseException:
            for http in (self.http, self.warning):
                if http is not None:
                    await http.close()
            raise
        await self._serve()

    async def _start_serving(self) -> None:
        await self.load_policy()
        await self.hitlog.open()  # schema migrated before the first hit can arrive; a damaged store only fails the hit log
        if self.stopping.is_set():
            # A stop signal during start-up (the compile can take minutes at 10M names): the
            # first safe point. DNS never opens; ``_serve`` runs the orderly stop at once.
            return
        if self.workers is not None:
            self.server.bound.extend(self.workers.bind())  # where DNS answers (the compliance self-test asks there)
            await self.workers.start(self.pipeline.policy.snapshot)
        else:
            await self.server.start()
        if self.xfr is not None:
            await self.xfr.start(self.pipeline.policy.snapshot)  # zones before its listener opens
        if self.settings.warning_page.enabled:
            page = WarningPage(
                self.settings.warning_page,
                self.settings.agencies,
                lambda: self.pipeline.policy.snapshot,
                self.provenance,
            )
            self.warning = HttpServer(
                self.settings.warning_page.address(), page.app(), self.settings.http,
                limit=self.http_limit, name="warning_page",
            )
            await self.warning.start()

    async def _serve(self) -> None:
        if self.stopping.is_set():
            log.info("stopping before ready: a stop signal came during start-up")
        else:
            self.ready.set()
            log.info("ready", upstreams=[f"{h}:{p}" for h, p in self.upstream.servers])
            if self._hup_pending:
                self._hangup()
        try:
            async with asyncio.TaskGroup() as tg:
                recorder = tg.create_task(self.recorder.run())
                retention = tg.create_task(self.hitlog.retention())
                feeds = tg.create_task(self.feeds.run())  # polls, file watches, date timer
                rrl = tg.create_task(self.rrl.run()) if self.rrl is not None else None  # its clock
                xfr = tg.create_task(self.xfr.run()) if self.xfr is not None else None  # zones follow installs
                workers = tg.create_task(self.workers.run()) if self.workers is not None else None  # restarts
                await self.stopping.wait()
                feeds.cancel()
                await self.feeds.interrupt()  # big store writes and saves: stopped, not waited for
                if rrl is not None:
                    rrl.cancel()
                for http in (self.http, self.warning):
                    if http is not None:
                        await http.close()
                if self.workers is not None and workers is not None:
                    workers.cancel()
                    await self.workers.stop()  # they drain and send their last hits first
                else:
                    await self.server.close()
                    self.upstream.close()  # after the queries in flight had their chance to finish
                if xfr is not None:
                    xfr.cancel()
                    await self.xfr.close()  # type: ignore[union-attr]
                retention.cancel()
                recorder.cancel()  # its finally-block writes every buffered hit
        finally:
            await self.hitlog.close()  # after the recorder's final flush
            self.feeds.close()
            log.info("stopped", **self.recorder.stats())

    def stop(self) -> None:
        self.stopping.set()


class _AbandonAtExit(ThreadPoolExecutor):
    """The event loop's executor for ``asyncio.to_thread`` in ``betblock serve``: each call in a
    daemon thread of its own, and no waiting for them at exit.

    By the time the process exits after SIGTERM, everything that must not be lost is done (the
    workers drained, the hits written, the feed store's work in flight interrupted and rolled
    back by ``StoreGate.close``). What may still run in a thread is derived work whose result
    nobody awaits any more: compiling or parsing millions of names, writing a policy table
    (files appear by rename only, so a half-done one never replaces a whole one). A pool would
    join those threads at exit, so SIGTERM would wait for a 10M-name compile; here the process
    ends as after a crash, which every file it writes survives (the feed store's transactions,
    temporary files renamed into place)."""

    def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> Future[object]:  # type: ignore[override]
        future: Future[object] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name="betblock-thread", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # nothing to join: see the class docstring


def serve(settings: Settings, config_path: Path | None = None, log_format: str | None = None) -> int:
    """Run one node until SIGTERM/SIGINT, DNS answered by ``dns.workers`` worker processes (or
    in this process with 0); SIGHUP re-reads ``config_path``."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        runner = asyncio.run
    else:
        runner = uvloop.run

    nodes: list[App] = []  # the node outlives the loop: see the end

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(_AbandonAtExit())
        nodes.append(App(settings, config_path=config_path, workers=settings.dns.worker_count(), log_format=log_format,
                         settle_heap=True))
        await nodes[0].run()

    # State files (the hit log holds subscriber addresses) are private unless configured otherwise.
    os.umask(int(settings.umask, 8))
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.error("cannot start", error=f"data_dir {settings.data_dir}: {exc}")
        return 1

    try:
        runner(main())
    except (OSError, StoreError, StoreProblem, WorkerError) as exc:
        log.error("cannot start", error=str(exc))
        return 1
    # Stopped: hits written, stores closed, log lines flushed line by line. Exit without
    # freeing the node's objects one by one: with 10M names (the compiled table, the lists)
    # that took longer than everything SIGTERM does before it (14 s on a loaded 2-core VM).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

