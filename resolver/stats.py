"""The data plane's counters as one plain dict, and the sum of several.

Owns ``collect`` (read a pipeline's and a server's counters: answers by kind, cache, upstream,
latency buckets, rate limiting, TCP) and ``merge`` (add up the dicts of several worker
processes). /metrics turns the result into metric families; a worker sends it to the control
plane as it is (plain ints, floats, lists and dicts). Counters only grow; gauges are a level now.

Must not import feeds or hits.
"""

from __future__ import annotations

from typing import Any

Stats = dict[str, dict[str, Any]]


def collect(pipeline: Any, server: Any) -> Stats:
    """The counters (``counters``) and levels (``gauges``) of one data plane."""
    cache, upstream, tcp, rrl = pipeline.cache, pipeline.upstream, server.tcp, pipeline.rrl
    counters: dict[str, Any] = {
        "answers": list(pipeline.counters.counts),
        "observed": getattr(pipeline.counters, "observed", 0),  # would-block queries (observe mode)
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "upstream_failures": dict(getattr(upstream, "failures", {})),
        "upstream_ignored": getattr(upstream, "ignored_replies", 0),
        "latency_counts": list(pipeline.latency.counts),
        "latency_sum": pipeline.latency.sum,
        "tcp_rejected": tcp.rejected,
        "tcp_evicted": tcp.evicted,
        "tcp_unread": tcp.unread,
    }
    gauges: dict[str, Any] = {
        "cache_entries": len(cache),
        "inflight": len(pipeline.inflight),
        "tcp_connections": len(tcp.connections),
        "tcp_unread_waiting": tcp.waiting_on_clients(),
    }
    if rrl is not None:
        counters.update(rrl_limited=rrl.limited, rrl_slipped=rrl.slipped, rrl_dropped=rrl.dropped, rrl_evicted=rrl.evicted)
        gauges["rrl_prefixes"] = len(rrl.table)
    return {"counters": counters, "gauges": gauges}


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = _add(out[key], value) if key in out else value
        return out
    if isinstance(a, list):
        longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
        return [x + (shorter[i] if i < len(shorter) else 0) for i, x in enumerate(longer)]
    return a + b


def merge(parts: list[Stats]) -> Stats:
    """The sum of several data planes' stats, counter by counter and level by level."""
    total: Stats = {"counters": {}, "gauges": {}}
    for part in parts:
        total = _add(total, part)
    return total
