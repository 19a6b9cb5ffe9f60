"""Prometheus metrics at /metrics, read from the components' own counters at scrape time.

Owns the metric names and the collector. Nothing here runs per packet: the pipeline counts
answers by kind in a list, the cache, upstream client and recorder keep plain integers, and a
scrape turns them into metric families. Each App has its own registry (tests run several).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from config.auth import PUBLIC, accepts
from resolver.outcome import Kind
from resolver.pipeline import LATENCY_BOUNDS

if TYPE_CHECKING:
    from betblock.app import App

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Extra families from other owners (feeds status, hit store, ...), registered by the composition root.
ExtraMetrics = Callable[[], Iterable[Metric]]


class AppCollector(Collector):
    """Everything one node knows about itself, as metric families."""

    def __init__(self, app: App, extra: Iterable[ExtraMetrics] = ()) -> None:
        self.app = app
        self.extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        app = self.app
        pipeline = app.pipeline
        answers = CounterMetricFamily("betblock_answers", "DNS answers by outcome kind", labels=["kind"])
        for kind in Kind:
            answers.add_metric([kind.name.lower()], pipeline.counters.counts[kind])
        yield answers

        cache = app.cache
        yield GaugeMetricFamily("betblock_cache_entries", "Answers held in the cache", value=len(cache))
        yield CounterMetricFamily("betblock_cache_hits", "Cache lookups that found a live answer", value=cache.hits)
        yield CounterMetricFamily("betblock_cache_misses", "Cache lookups that went upstream", value=cache.misses)
        looked = cache.hits + cache.misses
        yield GaugeMetricFamily(
            "betblock_cache_hit_ratio", "Cache hits / lookups since start", value=cache.hits / looked if looked else 0.0
        )

        failures = CounterMetricFamily("betblock_upstream_failures", "Failed upstream attempts", labels=["server"])
        for server, count in app.upstream.failures.items():
            failures.add_metric([server], count)
        yield failures
        yield CounterMetricFamily(
            "betblock_upstream_ignored_replies",
            "Upstream replies ignored for a wrong address, ID or question (spoofing defence)",
            value=app.upstream.ignored_replies,
        )
        yield GaugeMetricFamily("betblock_upstream_inflight", "Distinct questions waiting on upstreams", value=len(pipeline.inflight))
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
        yield GaugeMetricFamily("betblock_policy_entries", "Blocked names in the snapshot", value=policy.stats.get("entries", 0))

        rec = app.recorder.stats()
        yield CounterMetricFamily("betblock_hits_recorded", "Hits written one record each", value=rec["recorded"])
        yield CounterMetricFamily("betblock_hits_aggregated", "Hits folded into per-second counts under overload", value=rec["aggregated"])
        yield CounterMetricFamily("betblock_hits_dropped", "Hits lost because even aggregation was full", value=rec["dropped"])
        yield GaugeMetricFamily("betblock_hits_buffered", "Hits waiting for the next flush", value=rec["buffered"])

        rrl = pipeline.rrl
        if rrl is not None:
            yield CounterMetricFamily("betblock_rrl_limited", "UDP answers over a prefix's rate limit (slipped + dropped)", value=rrl.limited)
            yield CounterMetricFamily("betblock_rrl_slipped", "Limited UDP answers sent as empty TC=1 answers", value=rrl.slipped)
            yield CounterMetricFamily("betblock_rrl_dropped", "Limited UDP answers not sent", value=rrl.dropped)
            yield GaugeMetricFamily("betblock_rrl_prefixes", "Client prefixes with a rate-limit account", value=len(rrl.table))
            yield CounterMetricFamily("betblock_rrl_evicted", "Rate-limit accounts evicted from a full table", value=rrl.evicted)

        tcp = app.server.tcp
        yield GaugeMetricFamily("betblock_tcp_connections", "Open client TCP connections", value=len(tcp.connections))
        yield CounterMetricFamily("betblock_tcp_rejected", "TCP connections closed at once over a cap, none idle to close", value=tcp.rejected)
        yield GaugeMetricFamily(
            "betblock_tcp_unread_waiting",
            "TCP connections not read now because their client is not reading its answers",
            value=tcp.waiting_on_clients(),
        )
        yield CounterMetricFamily("betblock_tcp_evicted", "Idle TCP connections closed to make room at a cap", value=tcp.evicted)
        yield CounterMetricFamily("betblock_tcp_unread", "TCP connections closed because the client did not read its answers", value=tcp.unread)
        yield GaugeMetricFamily("betblock_ready", "1 once a snapshot is loaded and DNS listeners are up", value=1 if app.ready.is_set() else 0)
        for extra in self.extra:
            yield from extra()


def mount_metrics(app: App) -> Callable[[web.Application], None]:
    """An HTTP mount that serves the node's metrics at /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    collector = AppCollector(app, app.extra_metrics)
    registry.register(collector)

    @accepts(PUBLIC)  # scraped by Prometheus without a token, as before the auth layer
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    def mount(http_app: web.Application) -> None:
        http_app.router.add_get("/metrics", metrics)

    return mount
