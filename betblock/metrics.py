"""Prometheus metrics at /metrics, read from the components' own counters at scrape time.

Owns the resolver side's metric names (one collector per component: the resolver must not import
prometheus_client) and the /metrics route, which serves the collectors it is handed (the feeds
and hits parts bring their own). Nothing here runs per packet: the pipeline counts answers by kind
in a list, the cache, upstream client and recorder keep plain integers, and a scrape turns them
into metric families. Each App has its own registry (tests run several).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from config.auth import PUBLIC, accepts
from config.settings import AgencySettings
from resolver.cache import AnswerCache
from resolver.outcome import Kind
from resolver.pipeline import LATENCY_BOUNDS, Pipeline
from resolver.server import TcpServer
from resolver.upstream import UpstreamClient

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Extra families from other owners (feeds status, hit store, ...), registered by the composition root.
ExtraMetrics = Callable[[], Iterable[Metric]]
# The data plane's levels (``resolver.stats.levels``): this process's, or with worker processes
# their sum, since the control plane's own cache, sockets and tables hold nothing then.
Levels = Callable[[], Mapping[str, int]]


def pipeline_metrics(pipeline: Pipeline, agencies: list[AgencySettings], levels: Levels) -> ExtraMetrics:
    """Answers by kind, questions in flight, the forward latency, the policy in force (with each
    of ``agencies``' mode in it), RRL."""

    def collect() -> Iterator[Metric]:
        now = levels()
        answers = CounterMetricFamily("betblock_answers", "DNS answers by outcome kind", labels=["kind"])
        for kind in Kind:
            answers.add_metric([kind.name.lower()], pipeline.counters.counts[kind])
        yield answers
        yield GaugeMetricFamily("betblock_upstream_inflight", "Distinct questions waiting on upstreams", value=now.get("inflight", 0))
        latency = pipeline.latency
        buckets, total = [], 0
        for bound, n in zip((*LATENCY_BOUNDS, float("inf")), list(latency.counts)):
            total += n
            buckets.append((floatToGoString(bound), total))
        yield HistogramMetricFamily(
            "betblock_forward_latency_seconds",
            "Time to answer queries that missed the cache (upstream wait included); blocked and cached answers are not timed",
            buckets=buckets,
            sum_value=latency.sum,
        )
        policy = pipeline.policy.snapshot
        yield GaugeMetricFamily("betblock_policy_version", "Version of the policy snapshot in force", value=policy.version)
        yield CounterMetricFamily(
            "betblock_observed",
            "Queries for names only agencies in observe mode list: hits recorded as would-block, answered as unlisted",
            value=pipeline.counters.observed,
        )
        # The mode each agency has in the policy in force (1), the other 0: what the resolver does
        # now, whichever way it was set (configuration or an admin's switch).
        mode = GaugeMetricFamily("betblock_agency_mode", "Agency mode in the policy in force (1) by agency and mode", labels=["agency", "mode"])
        for agency in agencies:
            observing = agency.id in policy.observing
            mode.add_metric([agency.id, "enforce"], 0 if observing else 1)
            mode.add_metric([agency.id, "observe"], 1 if observing else 0)
        yield mode
        yield GaugeMetricFamily("betblock_policy_entries", "Blocked names in the snapshot", value=policy.stats.get("entries", 0))
        rrl = pipeline.rrl
        if rrl is not None:
            yield CounterMetricFamily("betblock_rrl_limited", "UDP answers over a prefix's rate limit (slipped + dropped)", value=rrl.limited)
            yield CounterMetricFamily("betblock_rrl_slipped", "Limited UDP answers sent as empty TC=1 answers", value=rrl.slipped)
            yield CounterMetricFamily("betblock_rrl_dropped", "Limited UDP answers not sent", value=rrl.dropped)
            yield GaugeMetricFamily("betblock_rrl_prefixes", "Client prefixes with a rate-limit account (one table per worker)", value=now.get("rrl_prefixes", 0))
            yield CounterMetricFamily("betblock_rrl_evicted", "Rate-limit accounts evicted from a full table", value=rrl.evicted)

    return collect


def cache_metrics(cache: AnswerCache, levels: Levels) -> ExtraMetrics:
    def collect() -> Iterator[Metric]:
        yield GaugeMetricFamily("betblock_cache_entries", "Answers held in the cache (in every worker's cache)", value=levels().get("cache_entries", 0))
        yield CounterMetricFamily("betblock_cache_hits", "Cache lookups that found a live answer", value=cache.hits)
        yield CounterMetricFamily("betblock_cache_misses", "Cache lookups that went upstream", value=cache.misses)
        looked = cache.hits + cache.misses
        yield GaugeMetricFamily(
            "betblock_cache_hit_ratio", "Cache hits / lookups since start", value=cache.hits / looked if looked else 0.0
        )

    return collect


def upstream_metrics(upstream: UpstreamClient) -> ExtraMetrics:
    def collect() -> Iterator[Metric]:
        failures = CounterMetricFamily("betblock_upstream_failures", "Failed upstream attempts", labels=["server"])
        for server, count in upstream.failures.items():
            failures.add_metric([server], count)
        yield failures
        yield CounterMetricFamily(
            "betblock_upstream_ignored_replies",
            "Upstream replies ignored for a wrong address, ID or question (spoofing defence)",
            value=upstream.ignored_replies,
        )

    return collect


def recorder_metrics(stats: Callable[[], dict[str, int]]) -> ExtraMetrics:
    """The hit recorder's counters (``HitRecorder.stats``)."""

    def collect() -> Iterator[Metric]:
        rec = stats()
        yield CounterMetricFamily("betblock_hits_recorded", "Hits written one record each", value=rec["recorded"])
        yield CounterMetricFamily("betblock_hits_aggregated", "Hits folded into per-second counts under overload", value=rec["aggregated"])
        yield CounterMetricFamily("betblock_hits_dropped", "Hits lost because even aggregation was full", value=rec["dropped"])
        yield GaugeMetricFamily("betblock_hits_buffered", "Hits waiting for the next flush", value=rec["buffered"])

    return collect


def tcp_metrics(tcp: TcpServer, levels: Levels) -> ExtraMetrics:
    def collect() -> Iterator[Metric]:
        now = levels()
        yield GaugeMetricFamily("betblock_tcp_connections", "Open client TCP connections", value=now.get("tcp_connections", 0))
        yield CounterMetricFamily("betblock_tcp_rejected", "TCP connections closed at once over a cap, none idle to close", value=tcp.rejected)
        yield GaugeMetricFamily(
            "betblock_tcp_unread_waiting",
            "TCP connections not read now because their client is not reading its answers",
            value=now.get("tcp_unread_waiting", 0),
        )
        yield CounterMetricFamily("betblock_tcp_evicted", "Idle TCP connections closed to make room at a cap", value=tcp.evicted)
        yield CounterMetricFamily("betblock_tcp_unread", "TCP connections closed because the client did not read its answers", value=tcp.unread)

    return collect


def ready_metric(ready: Callable[[], bool]) -> ExtraMetrics:
    def collect() -> Iterator[Metric]:
        yield GaugeMetricFamily("betblock_ready", "1 once a snapshot is loaded and DNS listeners are up", value=1 if ready() else 0)

    return collect


class _Collectors(Collector):
    """The families of every collector handed in, in order, read at scrape time."""

    def __init__(self, collectors: Iterable[ExtraMetrics]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collect in self.collectors:
            yield from collect()


def mount_metrics(collectors: Iterable[ExtraMetrics]) -> Callable[[web.Application], None]:
    """An HTTP mount that serves the families of ``collectors`` (one per component) at /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collectors(collectors))

    @accepts(PUBLIC)  # scraped by Prometheus without a token, as before the auth layer
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    def mount(http_app: web.Application) -> None:
        http_app.router.add_get("/metrics", metrics)

    return mount
