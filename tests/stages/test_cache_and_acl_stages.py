"""The ACL and the cache as tables, each alone: which clients are served, which upstream
answers the cache keeps and for how long (RFC 2308 negative caching, never SERVFAIL or TC)."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from config.settings import CacheSettings
from resolver.acl import Acl
from resolver.cache import AnswerCache
from resolver.wire import parse_answer

ACL = [
    (["127.0.0.0/8"], "127.0.0.1", True),
    (["127.0.0.0/8"], "127.255.255.254", True),
    (["127.0.0.0/8"], "128.0.0.1", False),
    (["10.0.0.0/8", "2001:db8::/32"], "2001:db8:ffff::1", True),
    (["10.0.0.0/8", "2001:db8::/32"], "2001:db9::1", False),
    (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # a v4-mapped client is the v4 client
    ([], "127.0.0.1", False),
    (["0.0.0.0/0", "::/0"], "203.0.113.9", True),
]


@pytest.mark.parametrize(("networks", "client", "allowed"), ACL)
def test_acl(networks: list[str], client: str, allowed: bool) -> None:
    acl = Acl([ipaddress.ip_network(n) for n in networks])
    assert acl.allowed(client) is allowed
    assert acl.allowed(client) is allowed  # the memoised answer is the same


def _reply(rcode: int = dns.rcode.NOERROR, a_ttl: int | None = 300, soa: tuple[int, int] | None = None, tc: bool = False) -> bytes:
    q = dns.message.make_query("x.test.", "A")
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if tc:
        r.flags |= dns.flags.TC
    if a_ttl is not None:
        r.answer.append(dns.rrset.from_text("x.test.", a_ttl, "IN", "A", "192.0.2.1"))
    if soa is not None:
        ttl, minimum = soa
        r.authority.append(dns.rrset.from_text("test.", ttl, "IN", "SOA", f"ns.test. host.test. 1 3600 600 86400 {minimum}"))
    return r.to_wire()


# upstream reply -> cached?, lifetime (seconds) when cached
CACHE = [
    (_reply(a_ttl=300), True, 300),
    (_reply(a_ttl=0), False, None),  # TTL 0: use once, never keep
    (_reply(rcode=dns.rcode.NXDOMAIN, a_ttl=None, soa=(3600, 60)), True, 60),  # min(SOA TTL, minimum)
    (_reply(rcode=dns.rcode.NXDOMAIN, a_ttl=None, soa=(30, 600)), True, 30),
    (_reply(rcode=dns.rcode.NXDOMAIN, a_ttl=None, soa=(86400, 86400)), True, 3600),  # max_negative_ttl
    (_reply(a_ttl=None, soa=(120, 120)), True, 120),  # NODATA
    (_reply(rcode=dns.rcode.NXDOMAIN, a_ttl=None), False, None),  # negative without SOA
    (_reply(rcode=dns.rcode.SERVFAIL, a_ttl=None), False, None),
    (_reply(tc=True), False, None),
    (_reply(a_ttl=10**6), True, 86400),  # max_ttl
]


@pytest.mark.parametrize(("raw", "cacheable", "lifetime"), CACHE, ids=[f"case{i}" for i in range(len(CACHE))])
def test_cache_keeps_what_rfc_2308_allows(raw: bytes, cacheable: bool, lifetime: int | None) -> None:
    cache = AnswerCache(CacheSettings(max_negative_ttl=3600), clock=lambda: 1000.0)
    entry, ok = cache.entry_for(parse_answer(raw), 1000)
    assert ok is cacheable
    if cacheable:
        assert entry.remaining(1000) == lifetime


def test_cache_is_lru_and_bounded() -> None:
    cache = AnswerCache(CacheSettings(max_entries=2), clock=lambda: 1000.0)
    entry, _ = cache.entry_for(parse_answer(_reply()), 1000)
    cache.put(b"a", entry)
    cache.put(b"b", entry)
    assert cache.get(b"a", 1000) is entry  # a is now the most recent
    cache.put(b"c", entry)
    assert len(cache) == 2 and cache.get(b"b", 1000) is None and cache.get(b"a", 1000) is entry
