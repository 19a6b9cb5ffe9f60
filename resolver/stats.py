"""The data plane's counters as one plain dict, and the sum of several.

Owns ``collect`` (read a pipeline's and a server's counters: answers by kind, cache, upstream,
latency buckets, rate limiting, TCP), ``levels`` (its gauges: what it holds now), ``merge`` (add
up the dicts of several worker processes) and ``show`` (set the counters of an idle data plane to
such a sum). A worker sends ``collect``'s dict to the control plane as it is (plain ints, floats,
lists and dicts); the control plane shows the workers' sum in its own data plane's counters,
which answer nothing there, so /metrics reads them as it does in one process. Counters only grow;
gauges are a level now, which an idle data plane cannot be set to: /metrics reads every gauge
from a ``levels`` dict, this process's own or the workers' sum (``betblock.app``).

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
    if rrl is not None:
        counters.update(rrl_limited=rrl.limited, rrl_slipped=rrl.slipped, rrl_dropped=rrl.dropped, rrl_evicted=rrl.evicted)
    return {"counters": counters, "gauges": levels(pipeline, server)}


def levels(pipeline: Any, server: Any) -> dict[str, int]:
    """The levels of one data plane now: cache entries, questions in flight, open and unread
    TCP connections, rate-limit accounts (with RRL on). Each adds up across worker processes."""
    tcp, rrl = server.tcp, pipeline.rrl
    out = {
        "cache_entries": len(pipeline.cache),
        "inflight": len(pipeline.inflight),
        "tcp_connections": len(tcp.connections),
        "tcp_unread_waiting": tcp.waiting_on_clients(),
    }
    if rrl is not None:
        out["rrl_prefixes"] = len(rrl.table)
    return out


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


def show(total: Stats, pipeline: Any, server: Any) -> None:
    """Set the counters of ``pipeline`` and ``server`` (the control plane's own, which answer
    nothing while workers do) to ``total``. Levels (gauges) are not set: /metrics reads them
    from the workers' sum (``Workers.levels``)."""
    c = total["counters"]
    if not c:
        return
    counts = pipeline.counters.counts
    for i, n in enumerate(c["answers"][: len(counts)]):
        counts[i] = n
    if hasattr(pipeline.counters, "observed"):
        pipeline.counters.observed = c.get("observed", 0)
    cache, upstream, tcp, rrl = pipeline.cache, pipeline.upstream, server.tcp, pipeline.rrl
    cache.hits, cache.misses = c["cache_hits"], c["cache_misses"]
    upstream.failures.update(c["upstream_failures"])
    upstream.ignored_replies = c["upstream_ignored"]
    latency = pipeline.latency
    latency.counts[:] = c["latency_counts"]
    latency.sum = c["latency_sum"]
    tcp.rejected, tcp.evicted, tcp.unread = c["tcp_rejected"], c["tcp_evicted"], c["tcp_unread"]
    if rrl is not None and "rrl_limited" in c:
        rrl.limited, rrl.slipped, rrl.dropped, rrl.evicted = c["rrl_limited"], c["rrl_slipped"], c["rrl_dropped"], c["rrl_evicted"]
