"""The data plane's parts built from the settings: one recipe for the single-process node
(``betblock.app.App``) and each worker process (``betblock.worker``), so a pipeline setting
reaches both modes alike."""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from hits.recorder import HitRecorder
from resolver.acl import Acl
from resolver.cache import AnswerCache
from resolver.pipeline import Pipeline
from resolver.rrl import RateLimiter
from resolver.upstream import UpstreamClient


@dataclass
class DataPlane:
    cache: AnswerCache
    upstream: UpstreamClient
    rrl: RateLimiter | None
    pipeline: Pipeline


def build(settings: Settings, recorder: HitRecorder) -> DataPlane:
    """Cache, upstream client, rate limiter and the pipeline over them; ``recorder`` takes the hits."""
    cache = AnswerCache(settings.cache)
    upstream = UpstreamClient(
        settings.upstream.addresses(),
        settings.upstream.attempt_timeout,
        settings.dns.edns_udp_size,
        ports=settings.upstream.ports,
        port_reuse=settings.upstream.port_reuse,
    )
    rrl = RateLimiter(settings.rrl) if settings.rrl.enabled else None
    pipeline = Pipeline(
        acl=Acl(settings.acl.networks()),
        cache=cache,
        upstream=upstream,
        recorder=recorder,
        udp_size=settings.dns.edns_udp_size,
        deadline=settings.upstream.deadline,
        max_inflight=settings.upstream.max_inflight,
        cname_inspection=settings.policy.cname_inspection,
        rrl=rrl,
    )
    return DataPlane(cache, upstream, rrl, pipeline)
