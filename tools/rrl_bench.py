"""Micro-benchmark: what response rate limiting costs per UDP packet (`make bench-rrl`).

Calls ``Pipeline.answer`` in process (no sockets: the syscalls would hide a difference of tens
of nanoseconds) on the two synchronous paths, a repeated blocked question (the per-snapshot
memo) and a cached answer, once without a limiter and once with one for a client that is not exempt
and stays under the limit, in alternating rounds. Also times ``RateLimiter.check`` alone, a flood
from one prefix (limited, dropped), and a spoofed flood where every packet comes from a new /24
(memo misses and table evictions). Prints ns per packet, best of several rounds, and the ratio
to the run without a limiter measured in the same process.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import CacheSettings, HitsSettings, RrlSettings  # noqa: E402
from feeds.compile import AgencyList, compile_snapshot, to_wire  # noqa: E402
from config.settings import AgencySettings  # noqa: E402
from hits.recorder import HitRecorder  # noqa: E402
from resolver.acl import Acl  # noqa: E402
from resolver.cache import AnswerCache  # noqa: E402
from resolver.pipeline import Pipeline  # noqa: E402
from resolver.rrl import RateLimiter  # noqa: E402
from resolver.wire import parse_answer  # noqa: E402

N = 100_000
ROUNDS = 5
CLIENT = "198.51.100.7"


def query(name: bytes, qid: int = 1) -> bytes:
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"


def pipeline(rrl: RateLimiter | None) -> Pipeline:
    p = Pipeline(
        acl=Acl([ipaddress.ip_network("0.0.0.0/0")]),
        cache=AnswerCache(CacheSettings()),
        upstream=None,  # type: ignore[arg-type]  # never reached: only synchronous paths run
        recorder=HitRecorder(HitsSettings(buffer_size=1 << 22)),
        udp_size=1232,
        deadline=1.0,
        max_inflight=10,
        rrl=rrl,
    )
    agency = AgencySettings(id="pl", action="nxdomain")
    p.install(compile_snapshot([AgencyList(agency, [to_wire(b"casino.test")])], [], 300, version=1))
    # One cached answer for allowed.test A.
    name = to_wire(b"allowed.test")
    reply = struct.pack(">HHHHHH", 1, 0x8180, 1, 1, 0, 0) + name + b"\x00\x01\x00\x01"
    reply += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 86400, 4) + b"\xc0\x00\x02\x0a"
    entry, _ = p.cache.entry_for(parse_answer(reply), p.cache.now())
    p.cache.put(name + b"\x00\x01\x00\x01\x00", entry)
    return p


def best(fn, packets: list[bytes], clients: list[str]) -> float:  # type: ignore[no-untyped-def]
    """ns per call, best of ROUNDS."""
    return pair(fn, None, packets, clients)[0]


def pair(fn_a, fn_b, packets: list[bytes], clients: list[str]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """ns per call of two variants, best of ROUNDS each, in alternating rounds so that load from
    elsewhere on the machine weighs on both alike."""
    out: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(ROUNDS):
        for i, fn in enumerate((fn_a, fn_b)):
            if fn is None:
                continue
            t = time.perf_counter()
            for data, client in zip(packets, clients):
                fn(data, client, True)
            out[i].append((time.perf_counter() - t) / len(packets) * 1e9)
    return min(out[0]), min(out[1], default=0.0)


def main() -> None:
    blocked = [query(to_wire(b"www.casino.test"), i & 0xFFFF) for i in range(N)]
    cached = [query(to_wire(b"allowed.test"), i & 0xFFFF) for i in range(N)]
    one = [CLIENT] * N
    spoofed = [f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1" for i in range(N)]
    big = RrlSettings(responses_per_second=10**9, exempt=[])
    rows = []
    for label, packets in (("blocked (memo)", blocked), ("cached", cached)):
        base, with_rrl = pair(pipeline(None).answer, pipeline(RateLimiter(big)).answer, packets, one)
        rows.append((f"{label}, no limiter", base, base))
        rows.append((f"{label}, limiter, under the limit", with_rrl, base))
    limited = RateLimiter(RrlSettings(responses_per_second=1, exempt=[]))
    base = rows[0][1]
    rows.append(("one prefix over the limit (dropped/slipped)", best(pipeline(limited).answer, blocked, one), base))
    spoof = RateLimiter(RrlSettings(responses_per_second=1000, exempt=[], table_size=100_000))
    no, yes = pair(pipeline(None).answer, pipeline(spoof).answer, blocked, spoofed)
    rows.append(("spoofed: a new /24 per packet, no limiter", no, no))
    rows.append(("spoofed: a new /24 per packet, limiter", yes, no))
    check = RateLimiter(big)
    nothing, checked = pair(lambda d, c, u: None, lambda d, c, u: check.check(c), blocked, one)
    rows.append(("RateLimiter.check alone, one client (loop cost taken off)", checked - nothing, None))
    print(f"{'path':58} {'ns/packet':>10} {'ratio to the same path without':>32}")
    for label, ns, ref in rows:
        print(f"{label:58} {ns:10.0f} {(f'{ns / ref:.2f}' if ref else ''):>32}")

if __name__ == "__main__":
    main()
