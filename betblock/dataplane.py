"""The data plane's parts built from the settings: one recipe for the single-process node
(``betblock.app.App``) and each worker process (``betblock.worker``), so a pipeline setting
reaches both modes alike; ``Sections``, the settings a worker is sent and rebuilds; and
``settle_heap``, which both call once the parts and a policy are in place.

Imported by the workers: nothing here may pull in the settings loader, the hit log's recorder,
SQL, HTTP or the feeds compiler (tests/test_imports.py).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, get_type_hints

from config import sections
from resolver.acl import Acl
from resolver.cache import AnswerCache
from resolver.pipeline import HitSink, Pipeline
from resolver.rrl import RateLimiter
from resolver.upstream import UpstreamClient

if TYPE_CHECKING:
    from config.settings import Settings


@dataclass(frozen=True, slots=True)
class Sections:
    """The sections of ``Settings`` a data plane is built from: what a worker process is sent
    (as JSON-ready dicts, ``dump``) and rebuilds (``load``) without the whole settings tree."""

    dns: sections.DnsSettings
    acl: sections.AclSettings
    upstream: sections.UpstreamSettings
    cache: sections.CacheSettings
    rrl: sections.RrlSettings
    policy: sections.PolicySettings
    log: sections.LogSettings

    @staticmethod
    def dump(settings: Settings) -> dict[str, dict[str, Any]]:
        return {f.name: getattr(settings, f.name).model_dump(mode="json") for f in fields(Sections)}

    @classmethod
    def load(cls, dumped: dict[str, dict[str, Any]]) -> Sections:
        return cls(**{name: section.model_validate(dumped[name]) for name, section in get_type_hints(cls).items()})


@dataclass
class DataPlane:
    cache: AnswerCache
    upstream: UpstreamClient
    rrl: RateLimiter | None
    pipeline: Pipeline


def build(settings: Settings | Sections, recorder: HitSink) -> DataPlane:
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


def settle_heap() -> None:
    """Collect once, then move every object alive now out of the garbage collector's sight.

    Why: the objects a node holds for hours (modules, the policy and its rules, the control
    plane's sets and dicts) sit in the collector's oldest generation, and every full
    collection walks all of them again, element by element for a big set. Answers allocate
    objects that live about a second (the per-second memo), which keeps triggering full
    collections: measured with ``bench/icount.py`` (100k list, one process), 15 % of a cached
    answer's instructions went to the collector, 62,000 instead of 76,000 per query once
    frozen. Frozen objects are still freed by reference counting; only a reference cycle among
    them would outlive its use, which is why this collects first (so nothing cyclic and dead
    is frozen) and is called again at every policy install (unfreeze, collect, freeze), so the
    old snapshot's objects are not kept frozen. The collection costs tens of ms on a big heap,
    once per install, not per query.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
