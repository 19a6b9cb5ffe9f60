"""Fuzzing: random and mutated packets never crash the pipeline or the live server.

In process, ``Pipeline.answer`` gets random, mutated and structured packets (and, when it forwards,
a fuzzed upstream reply to the same question): it never raises, never calls its own-failure path,
and returns bytes, None or a coroutine whose answer fits the UDP limit. Over real sockets, a burst
of such packets over UDP and TCP leaves the server answering valid queries.

300 examples per test by default; FUZZ_EXAMPLES=20000 for a longer hunt (about two minutes).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import struct
from typing import Any

import dns.message
import dns.rcode
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config.settings import AgencySettings, CacheSettings, HitsSettings
from feeds.compile import AgencyList, compile_snapshot, to_wire
from hits.recorder import HitRecorder
from resolver.acl import Acl
from resolver.cache import AnswerCache
from resolver.outcome import Kind
from resolver.pipeline import Pipeline
from resolver.upstream import UpstreamError, _matches
from tests.conftest import port_of
from tests.dnsutil import RawTcp, RawUdp, query

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


# -- packet strategies ---------------------------------------------------------------------


def _seeds() -> list[bytes]:
    """Valid queries of every shape the server handles, to mutate."""
    out = []
    for name, rdtype, kw in [
        ("www.casino.test", "A", {}),
        ("casino.test", "AAAA", {"edns": True}),
        ("redirect.test", "A", {"do": True}),
        ("redirect.test", "TXT", {"edns": True, "payload": 512}),
        ("allowed.test", "A", {}),
        ("alias.test", "A", {"edns": True}),
        ("allowed.test", "HTTPS", {"edns": 1}),
        ("x.y.z.nodata.test", "MX", {}),
    ]:
        out.append(query(name, rdtype, **kw).to_wire())
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw: Any) -> bytes:
    """A valid query with a few bytes replaced, inserted or removed, or cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "cut", "count"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[pos:]
        elif kind == "count" and len(data) >= 12:
            field = draw(st.sampled_from([2, 4, 6, 8, 10]))  # flags or one of the counts
            struct.pack_into(">H", data, field, draw(st.integers(0, 0xFFFF)))
    return bytes(data)


@st.composite
def structured(draw: Any) -> bytes:
    """A header with random fields and a question of random labels, pointers and tails."""
    head = struct.pack(
        ">HHHHHH",
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.sampled_from([0, 1, 1, 1, 2, 0xFFFF])),
        draw(st.sampled_from([0, 0, 1, 3])),
        draw(st.sampled_from([0, 0, 1])),
        draw(st.sampled_from([0, 1, 1, 2, 0xFFFF])),
    )
    labels = draw(
        st.lists(
            st.one_of(
                st.binary(min_size=1, max_size=63).map(lambda b: bytes((len(b),)) + b),
                st.sampled_from([b"\x06casino\x04test", b"\x08redirect", b"\xc0\x0c", b"\x40", b"\xff"]),
            ),
            max_size=6,
        )
    )
    tail = draw(st.binary(max_size=40))
    return head + b"".join(labels) + b"\x00" + tail


@st.composite
def well_formed(draw: Any) -> bytes:
    """A query that parses: random flags (QR and opcode clear), names from a small set so that
    blocked, allowlisted, cached and forwarded paths all come up, any type, optional OPT."""
    flags = draw(st.integers(0, 0xFFFF)) & ~0xF800
    labels = draw(st.lists(st.sampled_from(["www", "Casino", "casino", "ok", "redirect", "a", "nodata", "refused"]), max_size=3))
    name = ".".join(labels + [draw(st.sampled_from(["casino.test", "redirect.test", "allowed.test", "x.test", "test"]))])
    qtype = draw(st.sampled_from([1, 28, 5, 6, 15, 16, 65, 255, 0, 41, 0xFFFF]))
    qclass = draw(st.sampled_from([1, 1, 1, 3, 255, 0]))
    opt = b""
    if draw(st.booleans()):
        do = draw(st.sampled_from([0, 0x8000]))
        opt = b"\x00" + struct.pack(">HHBBHH", 41, draw(st.integers(0, 0xFFFF)), 0, 0, do, 0)
    head = struct.pack(">HHHHHH", draw(st.integers(0, 0xFFFF)), flags, 1, 0, 0, 1 if opt else 0)
    return head + to_wire(name.lower().encode()) + struct.pack(">HH", qtype, qclass) + opt


PACKETS = st.one_of(st.binary(max_size=600), mutated(), structured(), well_formed())


_PTR = b"\xc0\x0c"  # the question name


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


# What an upstream reply holds and how it is damaged, drawn before the question is known (the
# question depends on the packet), then applied to it by ``build_reply``.
REPLY_RECIPES = st.fixed_dictionaries(
    {
        "records": st.sets(st.sampled_from(["a", "cname", "soa", "txt", "opt"]), max_size=4)
        | st.sampled_from([{"a"}, {"soa"}, {"a", "opt"}]),  # plainly cacheable
        "ttl": st.integers(0, 2**32 - 1),
        "minimum": st.integers(0, 2**32 - 1),
        "txt": st.integers(0, 255),
        "rcode": st.sampled_from([0, 0, 0, 2, 3, 5]),
        "flags": st.sampled_from([0, 0, 0x0200, 0x0400]),
        "damage": st.lists(  # often none: a reply that is cached, then served from the cache
            st.tuples(st.sampled_from(["set", "cut", "count", "flags"]), st.integers(0, 2**16), st.integers(0, 0xFFFF)),
            max_size=3,
        )
        | st.just([]),
    }
)


def build_reply(recipe: dict[str, Any], question: bytes, qid: int) -> bytes:
    """A reply to ``question`` (wire name + type + class) built from ``recipe``; the damage only
    touches what follows the question (the ID, QR and question are what the upstream client
    checks before it accepts a reply)."""
    answers, auth, extra = [], [], []
    pick = recipe["records"]
    if "cname" in pick:
        answers.append(_rr(_PTR, 5, recipe["ttl"], to_wire(b"www.casino.test")))
    if "a" in pick:
        answers.append(_rr(_PTR, 1, recipe["ttl"], b"\xc0\x00\x02\x01"))
    if "txt" in pick:
        answers.append(_rr(_PTR, 16, 60, bytes((recipe["txt"],)) + b"x" * recipe["txt"]))
    if "soa" in pick:
        timers = struct.pack(">IIIII", 1, 2, 3, 4, recipe["minimum"])
        auth.append(_rr(b"\x04test\x00", 6, recipe["ttl"], _PTR + _PTR + timers))
    if "opt" in pick:
        extra.append(b"\x00" + struct.pack(">HHIH", 41, 4096, 0, 0))
    flags = 0x8180 | recipe["rcode"] | recipe["flags"]
    head = struct.pack(">HHHHHH", qid, flags, 1, len(answers), len(auth), len(extra))
    wire = bytearray(head + question + b"".join(answers + auth + extra))
    start = 12 + len(question)
    for kind, where, value in recipe["damage"]:
        if kind == "set" and len(wire) > start:
            wire[start + where % (len(wire) - start)] = value & 0xFF
        elif kind == "cut":
            del wire[start + where % (len(wire) - start + 1) :]
        elif kind == "count":
            struct.pack_into(">H", wire, (6, 8, 10)[where % 3], value % 41)
        elif kind == "flags":
            struct.pack_into(">H", wire, 2, 0x8000 | (value & 0x7FFF))
    return bytes(wire)


# -- in process ----------------------------------------------------------------------------


class StubUpstream:
    """Answers with whatever the test drew; a reply to another question is ignored, as the real
    client does (it would time out; here it fails at once)."""

    servers = [("127.0.0.1", 9)]

    def __init__(self, recipes: list[dict[str, Any]]) -> None:
        self.recipes = recipes
        self.calls = 0

    async def resolve(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool = False) -> bytes:
        recipe = self.recipes[self.calls % len(self.recipes)]
        self.calls += 1
        question = name + struct.pack(">HH", qtype, qclass)
        reply = build_reply(recipe, question, 0x4242)
        if not _matches(reply, 0x4242, question):
            raise UpstreamError("no matching reply")
        return reply


class CountingPipeline(Pipeline):
    """Counts calls of the own-failure path: any is a bug found by the fuzzer."""

    failed = 0

    def _failed(self, data: bytes, q: Any) -> bytes:
        type(self).failed += 1
        return super()._failed(data, q)


def make_snapshot() -> Any:
    agencies = [
        AgencySettings(id="nx", action="nxdomain"),
        AgencySettings(id="red", action="redirect", redirect_ipv4=[ipaddress.IPv4Address(f"198.51.100.{i}") for i in range(1, 40)]),
        AgencySettings(id="nd", action="nodata"),
        AgencySettings(id="ref", action="refused"),
    ]
    names = {"nx": [b"casino.test"], "red": [b"redirect.test"], "nd": [b"nodata.test"], "ref": [b"refused.test"]}
    return compile_snapshot(
        [AgencyList(a, [to_wire(n) for n in names[a.id]]) for a in agencies], [to_wire(b"ok.casino.test")], 300, version=7
    )


SNAPSHOT = make_snapshot()


def make_pipeline(recipes: list[dict[str, Any]]) -> tuple[CountingPipeline, StubUpstream]:
    """A fresh pipeline per example, so that every example is reproducible."""
    stub = StubUpstream(recipes)
    pipeline = CountingPipeline(
        acl=Acl([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]),
        cache=AnswerCache(CacheSettings(max_entries=64)),
        upstream=stub,  # type: ignore[arg-type]
        recorder=HitRecorder(HitsSettings(buffer_size=100)),
        udp_size=1232,
        deadline=1.0,
        max_inflight=100,
    )
    pipeline.install(SNAPSHOT)
    return pipeline, stub


def check_reply(data: bytes, resp: bytes, udp: bool) -> None:
    assert len(resp) >= 12
    assert resp[:2] == data[:2], "the client's ID"
    assert resp[2] & 0x80, "QR set"
    if udp:
        assert len(resp) <= 1232, len(resp)


def test_pipeline_answer_fuzz() -> None:
    CountingPipeline.failed = 0
    seen = {"bytes": 0, "none": 0, "coroutine": 0}
    totals = {k: 0 for k in ("dropped", "formerr", "notimp", "refused", "blocked", "cached", "forwarded", "servfail", "minimal_any")}

    def _q(name: bytes, qtype: int) -> bytes:
        return struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + to_wire(name) + struct.pack(">HH", qtype, 1)

    # Rare kinds made certain whatever the draw: a reply whose ANCOUNT overruns it (SERVFAIL)
    # and an ANY question (minimal_any).
    overrun = {"records": {"a"}, "ttl": 60, "minimum": 60, "txt": 0, "rcode": 0, "flags": 0, "damage": [("count", 0, 40)]}

    @FUZZ
    @example(packets=[_q(b"allowed.test", 1), _q(b"x.test", 255)], again=False, client="127.0.0.1", udp=True, recipes=[overrun])
    @given(
        packets=st.lists(PACKETS, min_size=1, max_size=3),
        again=st.booleans(),
        client=st.sampled_from(["127.0.0.1", "127.0.0.1", "::1", "10.0.0.1", "not-an-address"]),
        udp=st.booleans(),
        recipes=st.lists(REPLY_RECIPES, min_size=1, max_size=2),
    )
    def run(packets: list[bytes], again: bool, client: str, udp: bool, recipes: list[dict[str, Any]]) -> None:
        pipeline, _stub = make_pipeline(recipes)
        if again:  # the same questions once more, with another ID: the cached path
            packets += [b"\xab\xcd" + data[2:] for data in packets]
        for data in packets:
            res = pipeline.answer(data, client, udp)
            if res is None:
                seen["none"] += 1
                continue
            if isinstance(res, bytes):
                seen["bytes"] += 1
                check_reply(data, res, udp)
                continue
            assert inspect.iscoroutine(res), type(res)
            seen["coroutine"] += 1
            resp = asyncio.run(res)
            assert resp is None or isinstance(resp, bytes)
            if resp is not None:
                check_reply(data, resp, udp)
            assert not pipeline.inflight
        counted = pipeline.counters.snapshot()
        for k in totals:  # not stale: it needs an expired entry and time passing (test_serve_stale)
            totals[k] += counted[k]

    run()
    assert CountingPipeline.failed == 0, "the pipeline's own-failure path ran: a bug"
    assert all(seen.values()), seen  # every kind of result was exercised
    # The cached path is rare here (it needs a cacheable reply to a repeated question): see
    # test_pipeline_cache_fuzz.
    missing = [k for k, v in totals.items() if not v and k != "cached"]
    assert not missing, totals


def test_pipeline_cache_fuzz() -> None:
    """A forwarded question asked again, with another ID and letter case: when the reply was
    cached, the second answer is synchronous, with the client's ID and question bytes."""
    cached = 0

    @FUZZ
    @given(data=well_formed(), recipe=REPLY_RECIPES, qid=st.integers(0, 0xFFFF), upper=st.integers(0, 2**64), udp=st.booleans())
    def run(data: bytes, recipe: dict[str, Any], qid: int, upper: int, udp: bool) -> None:
        nonlocal cached
        pipeline, stub = make_pipeline([recipe])
        res = pipeline.answer(data, "127.0.0.1", udp)
        if not inspect.iscoroutine(res):
            return  # blocked or refused: nothing to cache
        first = asyncio.run(res)
        assert isinstance(first, bytes)
        check_reply(data, first, udp)
        name_end = data.index(b"\x00", 12) + 1
        # Same question, another ID, letters upper-cased where ``upper`` has a bit set.
        name = bytes(b - 32 if 97 <= b <= 122 and upper >> (i % 64) & 1 else b for i, b in enumerate(data[12:name_end]))
        again = struct.pack(">H", qid) + data[2:12] + name + data[name_end:]
        res = pipeline.answer(again, "127.0.0.1", udp)
        if len(pipeline.cache) == 0:
            assert inspect.iscoroutine(res), "nothing cached, so asked upstream again"
            res.close()
            return
        if isinstance(res, bytes) and pipeline.counters.counts[Kind.CACHED]:
            cached += 1
            check_reply(again, res, udp)
            assert res[12:name_end] == name, "the client's letter case"
            assert stub.calls == 1

    run()
    assert CountingPipeline.failed == 0
    assert cached >= 3, f"only {cached} examples reached the cached path"  # typically 10-50


# -- live server ---------------------------------------------------------------------------


def draw_packets(n: int = EXAMPLES) -> list[bytes]:
    """Let hypothesis generate ``n`` packets (it runs synchronously; nothing here awaits)."""
    out: list[bytes] = []

    @FUZZ
    @given(PACKETS)
    def collect(data: bytes) -> None:
        out.append(data)

    collect()
    return out[:n]


async def _answered(read: Any, q: dns.message.Message) -> dns.message.Message:
    """Read replies until the one to ``q`` (same ID and question) arrives."""
    async with asyncio.timeout(5):
        while True:
            raw = await read()
            try:
                r = dns.message.from_wire(raw)
            except Exception:  # a reply to a fuzzed packet: not ours
                continue
            if r.id == q.id and r.question == q.question:
                return r


async def _probe(send: Any, read: Any) -> None:
    for name, rcode in (("www.casino.test", dns.rcode.NXDOMAIN), ("allowed.test", dns.rcode.NOERROR)):
        q = query(name, edns=True)
        send(q.to_wire())
        r = await _answered(read, q)
        assert r.rcode() == rcode, name


BURST = 100


async def test_live_server_survives_fuzz(node, upstream):
    app = await node(upstream={"deadline": 0.5, "attempt_timeout": 0.2})
    failed: list[bytes] = []
    real_failed = app.pipeline._failed

    def counting_failed(data: bytes, q: Any) -> bytes:
        failed.append(data)
        return real_failed(data, q)

    app.pipeline._failed = counting_failed  # type: ignore[method-assign]
    packets = draw_packets()
    assert len(packets) >= EXAMPLES // 2
    port = port_of(app)

    # Bursts of BURST packets, each followed by valid queries that must be answered (bursts, not
    # all at once, so that socket buffers never overflow and lose the probe's answer).
    sock = await RawUdp.open(port)
    try:
        for i in range(0, len(packets), BURST):
            for data in packets[i : i + BURST]:
                sock.send(data)
            await _probe(sock.send, sock.recv)
    finally:
        sock.close()

    conn = await RawTcp.open(port)
    try:
        for i in range(0, len(packets), BURST):
            for data in packets[i : i + BURST]:
                conn.send(data)
            await conn.writer.drain()
            await _probe(conn.send, conn.recv)
    finally:
        await conn.close()

    # A stream that is not DNS at all: garbage, a frame longer than what follows, then EOF.
    junk = await RawTcp.open(port)
    junk.send_raw(b"".join(packets[:20]) + b"\xff\xff" + b"\x00" * 100)
    await junk.writer.drain()
    await junk.close()

    # Still answering, over both transports, on fresh sockets.
    sock = await RawUdp.open(port)
    try:
        await _probe(sock.send, sock.recv)
    finally:
        sock.close()
    conn = await RawTcp.open(port)
    try:
        await _probe(conn.send, conn.recv)
    finally:
        await conn.close()
    assert failed == [], "the pipeline's own-failure path ran"
    counts = app.pipeline.counters.snapshot()
    assert counts["dropped"] and counts["formerr"], counts
