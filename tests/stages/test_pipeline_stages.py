"""The pipeline's stage order as a table, with the upstream stubbed (as CoreDNS tests a plugin
with the next one replaced): for each case, which stage answers and whether the next stages
were reached. Real ACL, real snapshot and sinkholes, real cache; no sockets."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from config.settings import AgencySettings, CacheSettings, HitsSettings
from feeds.compile import AgencyList, compile_snapshot, to_wire
from hits.recorder import HitRecorder
from resolver.acl import Acl
from resolver.cache import AnswerCache
from resolver.pipeline import Pipeline


@dataclass
class StubUpstream:
    """The next stage: records what reached it and answers from a table (A 192.0.2.1)."""

    asked: list[tuple[bytes, int]] = field(default_factory=list)
    fail: bool = False

    async def resolve(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        self.asked.append((name, qtype))
        if self.fail:
            from resolver.upstream import UpstreamError

            raise UpstreamError("stub upstream down")
        text = ".".join(label.decode() for label in _labels(name)) + "."
        q = dns.message.make_query(text, qtype)
        r = dns.message.make_response(q)
        r.flags |= 0x0080  # RA, as a recursive upstream sets it
        if qtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(text, 300, "IN", "A", "192.0.2.1"))
        return r.to_wire()


def _labels(wire: bytes) -> list[bytes]:
    out, i = [], 0
    while wire[i]:
        out.append(wire[i + 1 : i + 1 + wire[i]])
        i += wire[i] + 1
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pipeline(allow: list[str], listed: list[str], **agency: Any) -> tuple[Pipeline, StubUpstream, Clock]:
    up = StubUpstream()
    clock = Clock()
    p = Pipeline(
        acl=Acl([ipaddress.ip_network(n) for n in allow]),
        cache=AnswerCache(CacheSettings(), clock=clock),
        upstream=up,  # type: ignore[arg-type]
        recorder=HitRecorder(HitsSettings(store="none")),
        udp_size=1232,
        deadline=2.0,
        max_inflight=100,
    )
    settings = AgencySettings(**{"id": "pl-mf", "action": "nxdomain", **agency})
    p.install(compile_snapshot([AgencyList(settings, [to_wire(n.encode()) for n in listed])], [], 300))
    return p, up, clock


async def _ask(p: Pipeline, name: str, client: str = "127.0.0.1", qtype: str = "A", udp: bool = True) -> dns.message.Message | None:
    res: Any = p.answer(dns.message.make_query(name, qtype).to_wire(), client, udp)
    if res is not None and not isinstance(res, bytes):
        res = await res
    return None if res is None else dns.message.from_wire(res)


# client, name, expected rcode, which stage answered, upstream reached?
CASES = [
    ("198.51.100.7", "casino.test", dns.rcode.REFUSED, "refused", False),  # ACL before policy
    ("198.51.100.7", "clean.test", dns.rcode.REFUSED, "refused", False),
    ("127.0.0.1", "casino.test", dns.rcode.NXDOMAIN, "blocked", False),  # policy before cache/upstream
    ("127.0.0.1", "www.casino.test", dns.rcode.NXDOMAIN, "blocked", False),
    ("127.0.0.1", "casino.test.example", dns.rcode.NOERROR, "forwarded", True),  # a suffix is not a match
    ("127.0.0.1", "clean.test", dns.rcode.NOERROR, "forwarded", True),
]


@pytest.mark.parametrize(("client", "name", "rcode", "stage", "upstream_reached"), CASES)
async def test_each_stage_answers_or_hands_on(client: str, name: str, rcode: int, stage: str, upstream_reached: bool) -> None:
    p, up, _ = _pipeline(["127.0.0.0/8"], ["casino.test"])
    before = p.counters.snapshot()
    r = await _ask(p, name, client)
    assert r is not None and r.rcode() == rcode
    assert r.flags & 0x0080, "RA on every answer"
    after = p.counters.snapshot()
    assert after[stage] == before[stage] + 1
    assert bool(up.asked) is upstream_reached


async def test_the_second_ask_is_answered_by_the_cache_and_never_reaches_the_upstream() -> None:
    p, up, clock = _pipeline(["127.0.0.0/8"], [])
    first = await _ask(p, "clean.test")
    assert first is not None and up.asked == [(to_wire(b"clean.test"), 1)]
    clock.now += 100
    second = await _ask(p, "clean.test")
    assert second is not None and len(up.asked) == 1
    assert p.counters.snapshot()["cached"] == 1
    assert second.answer[0].ttl == 200  # TTL decreased by the time spent in the cache


async def test_a_failing_upstream_gives_servfail_and_nothing_is_cached() -> None:
    p, up, _ = _pipeline(["127.0.0.0/8"], [])
    up.fail = True
    r = await _ask(p, "clean.test")
    assert r is not None and r.rcode() == dns.rcode.SERVFAIL
    up.fail = False
    r = await _ask(p, "clean.test")
    assert r is not None and r.rcode() == dns.rcode.NOERROR and len(up.asked) == 2


async def test_identical_questions_in_flight_reach_the_upstream_once() -> None:
    p, up, _ = _pipeline(["127.0.0.0/8"], [])
    pending = [p.answer(dns.message.make_query("clean.test", "A").to_wire(), "127.0.0.1", True) for _ in range(5)]
    answers = await asyncio.gather(*pending)  # type: ignore[arg-type]
    assert all(dns.message.from_wire(a).rcode() == dns.rcode.NOERROR for a in answers)
    assert len(up.asked) == 1


async def test_a_swapped_snapshot_decides_the_very_next_query_even_over_a_cached_answer() -> None:
    p, up, _ = _pipeline(["127.0.0.0/8"], [])
    assert (await _ask(p, "clean.test")).rcode() == dns.rcode.NOERROR  # type: ignore[union-attr]
    agency = AgencySettings(id="pl-mf", action="nxdomain")
    p.install(compile_snapshot([AgencyList(agency, [to_wire(b"clean.test")])], [], 300))
    assert (await _ask(p, "clean.test")).rcode() == dns.rcode.NXDOMAIN  # type: ignore[union-attr]
    assert len(up.asked) == 1


# The sinkhole stage: agency action and question type -> rcode, answer section, authority type.
SINKS = [
    ({"action": "nxdomain"}, "A", dns.rcode.NXDOMAIN, [], "SOA"),
    ({"action": "nxdomain"}, "MX", dns.rcode.NXDOMAIN, [], "SOA"),
    ({"action": "nodata"}, "A", dns.rcode.NOERROR, [], "SOA"),
    ({"action": "refused"}, "A", dns.rcode.REFUSED, [], None),
    ({"action": "redirect", "redirect_ipv4": ["192.0.2.80"]}, "A", dns.rcode.NOERROR, ["192.0.2.80"], None),
    ({"action": "redirect", "redirect_ipv4": ["192.0.2.80"]}, "AAAA", dns.rcode.NOERROR, [], "SOA"),
    ({"action": "redirect", "redirect_ipv4": ["192.0.2.80"], "redirect_ipv6": ["2001:db8::80"]}, "AAAA", dns.rcode.NOERROR, ["2001:db8::80"], None),
    ({"action": "redirect", "redirect_ipv4": ["192.0.2.80"]}, "TXT", dns.rcode.NOERROR, [], "SOA"),
]


@pytest.mark.parametrize(("agency", "qtype", "rcode", "addresses", "authority"), SINKS)
async def test_sinkhole_answers_per_action(agency: dict[str, Any], qtype: str, rcode: int, addresses: list[str], authority: str | None) -> None:
    p, up, _ = _pipeline(["127.0.0.0/8"], ["casino.test"], **agency)
    r = await _ask(p, "www.casino.test", qtype=qtype)
    assert r is not None and r.rcode() == rcode
    assert [rd.to_text() for rrset in r.answer for rd in rrset] == addresses
    assert [dns.rdatatype.to_text(rrset.rdtype) for rrset in r.authority] == ([authority] if authority else [])
    assert up.asked == []
