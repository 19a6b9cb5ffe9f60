#!/usr/bin/env python3
"""Deterministic benchmark data: the blocklist, its RPZ twin, the upstream zone, query files.

Owns every file under bench/data/. One seed gives byte-identical files on every machine, so
two runs (or two machines) measure the same names. A stamp file per data set records the
seed and FORMAT; a changed stamp rebuilds the set.

Files (SIZE is a tag such as 10k, 100k, 1m):
  allow.test.zone        the upstream's zone: N_ALLOWED A records under allow.test, TTL 1 day
  q-allowed.txt          every allow.test name once, shuffled (dnsperf input)
  blocklist-SIZE.txt     one listed name per line; a name blocks itself and every subdomain
  rpz-SIZE.zone          the same list for Unbound: "name CNAME ." and "*.name CNAME ."
  q-blocked-SIZE.txt     N_QUERIES queries: 70 % listed names, 30 % subdomains of listed names
  q-mix-SIZE.txt         N_QUERIES queries: 10 % drawn like q-blocked, 90 % allowed names
  miss.test.zone         a wildcard zone (*.miss.test A): every name under it exists
  q-miss.txt             N_MISS unique names under miss.test (each one a cache miss, once)
  q-miss-probe.txt       N_PROBE more unique names, asked one at a time for the miss latency

Standard library only; imports nothing from betblock (the benchmark must not trust the code
it measures to build its input).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
from pathlib import Path

FORMAT = 1  # bump whenever the output of a given seed changes
DATA_DIR = Path(__file__).resolve().parent / "data"
N_ALLOWED = 10_000
N_QUERIES = 100_000
ALLOWED_ZONE = "allow.test"
RPZ_ORIGIN = "rpz.local"
MISS_ZONE = "miss.test"
MISS_FORMAT = 1  # the miss set has its own stamp: adding it rebuilds nothing else
N_MISS = 400_000
N_PROBE = 2_000

# "test" is deliberately absent: no listed name can fall inside the upstream's zone.
TLDS = ("bet", "casino", "com", "net", "org", "xyz", "top", "win", "vip", "club",
        "online", "site", "io", "cc", "games", "app", "me", "info", "biz", "poker")
STEMS = ("lucky", "bet", "slot", "spin", "jackpot", "royal", "ace", "odds", "vegas", "bingo",
         "poker", "golden", "mega", "win", "king", "casino", "bonus", "roulette", "star", "777")
HOSTS = ("www", "m", "cdn", "api", "play", "pay", "login", "static", "mobile", "live")
LETTERS = string.ascii_lowercase
B36 = string.digits + string.ascii_lowercase


def parse_size(tag: str) -> int:
    """'10k' -> 10000, '1m' -> 1000000, '2.5m' -> 2500000, '750' -> 750."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", tag.strip().lower())
    if not m:
        raise ValueError(f"list size {tag!r}: use a number with an optional k or m, e.g. 100k")
    n = round(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)])
    if n < 1:
        raise ValueError(f"list size {tag!r} is below 1")
    return n


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, r = divmod(n, 36)
        digits = B36[r] + digits
        if not n:
            return digits


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choices(LETTERS, k=rng.randint(lo, hi)))


def listed_name(rng: random.Random, index: int) -> str:
    """A name like 'lucky-2bi.bet' or 'www.spinqzt-1k9.casino'.

    The index in base 36 after the only '-' of the registrable label makes every name unique
    without a set of a million strings. Label count: 60 % two, 30 % three, 10 % four.
    """
    stem = rng.choice(STEMS) if rng.random() < 0.6 else _word(rng, 3, 8)
    if rng.random() < 0.25:
        stem += _word(rng, 2, 4)
    labels = [f"{stem}-{_base36(index)}", rng.choice(TLDS)]
    roll = rng.random()
    extra = 0 if roll < 0.6 else 1 if roll < 0.9 else 2
    for _ in range(extra):
        labels.insert(0, rng.choice(HOSTS) if rng.random() < 0.6 else _word(rng, 2, 6))
    return ".".join(labels)


def blocked_query(rng: random.Random, listed: list[str]) -> str:
    """70 % a listed name as is, 30 % one label below it (must be blocked too)."""
    name = rng.choice(listed)
    if rng.random() < 0.3:
        name = (rng.choice(HOSTS) if rng.random() < 0.5 else _word(rng, 1, 7)) + "." + name
    return name


def _write_lines(path: Path, lines) -> None:
    # Write beside, then rename: an interrupted run never leaves a half file behind.
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="ascii") as f:
        f.writelines(lines)
    tmp.replace(path)


def _stamp_matches(path: Path, stamp: dict) -> bool:
    try:
        return json.loads(path.read_text()) == stamp
    except (OSError, ValueError):
        return False


def _allowed_names(out: Path, seed: int, stamp: dict) -> list[str]:
    """The allow.test names in q-allowed.txt order; builds the zone and the file if needed."""
    stamp_path = out / "gen-allowed.json"
    queries = out / "q-allowed.txt"
    if _stamp_matches(stamp_path, stamp) and queries.exists() and (out / f"{ALLOWED_ZONE}.zone").exists():
        return [line.split()[0] for line in queries.read_text().splitlines() if line]
    rng = random.Random(f"allowed/{seed}")
    labels: set[str] = set()
    while len(labels) < N_ALLOWED:
        label = f"{_word(rng, 4, 10)}{rng.randint(0, 99)}"
        if rng.random() < 0.25:
            label = f"{rng.choice(('www', 'mail', 'shop', 'news'))}.{label}"
        labels.add(label)
    ordered = sorted(labels)
    header = (f"$ORIGIN {ALLOWED_ZONE}.\n$TTL 86400\n"
              f"@ IN SOA ns.{ALLOWED_ZONE}. hostmaster.{ALLOWED_ZONE}. 1 3600 900 604800 86400\n"
              f"@ IN NS ns.{ALLOWED_ZONE}.\nns IN A 127.0.0.1\n")
    _write_lines(out / f"{ALLOWED_ZONE}.zone",
                 [header] + [f"{lb} IN A 198.18.{i // 250}.{i % 250 + 1}\n" for i, lb in enumerate(ordered)])
    names = [f"{lb}.{ALLOWED_ZONE}" for lb in ordered]
    rng.shuffle(names)
    _write_lines(queries, [f"{n} A\n" for n in names])
    _write_lines(stamp_path, [json.dumps(stamp, sort_keys=True) + "\n"])
    print(f"[gen_data] {ALLOWED_ZONE} zone and q-allowed.txt: {len(names):,} names", flush=True)
    return names


def _size_set(out: Path, tag: str, seed: int, allowed: list[str], stamp: dict) -> None:
    stamp_path = out / f"gen-{tag}.json"
    files = [out / f"{kind}-{tag}.{ext}" for kind, ext in
             (("blocklist", "txt"), ("rpz", "zone"), ("q-blocked", "txt"), ("q-mix", "txt"))]
    if _stamp_matches(stamp_path, stamp) and all(f.exists() for f in files):
        return
    n = stamp["names"]
    rng = random.Random(f"list/{seed}")
    listed = [listed_name(rng, i) for i in range(n)]
    _write_lines(files[0], [f"{d}\n" for d in listed])
    rpz_head = (f"$ORIGIN {RPZ_ORIGIN}.\n$TTL 300\n"
                f"@ IN SOA localhost. hostmaster.localhost. 1 3600 900 604800 300\n"
                f"@ IN NS localhost.\n")
    _write_lines(files[1], [rpz_head] + [f"{d} CNAME .\n*.{d} CNAME .\n" for d in listed])
    qrng = random.Random(f"queries/{seed}/{tag}")
    _write_lines(files[2], [f"{blocked_query(qrng, listed)} A\n" for _ in range(N_QUERIES)])
    mix = [f"{blocked_query(qrng, listed) if qrng.random() < 0.1 else qrng.choice(allowed)} A\n"
           for _ in range(N_QUERIES)]
    _write_lines(files[3], mix)
    _write_lines(stamp_path, [json.dumps(stamp, sort_keys=True) + "\n"])
    shape = [0, 0, 0]
    for d in listed:
        shape[min(d.count("."), 3) - 1] += 1
    print(f"[gen_data] {tag}: {n:,} listed names (2/3/4 labels: {shape[0]:,}/{shape[1]:,}/"
          f"{shape[2]:,}), {N_QUERIES:,} blocked and {N_QUERIES:,} mixed queries", flush=True)


def _miss_set(out: Path, seed: int) -> None:
    stamp = {"format": MISS_FORMAT, "seed": seed, "names": N_MISS, "probe": N_PROBE}
    stamp_path = out / "gen-miss.json"
    files = [out / f"{MISS_ZONE}.zone", out / "q-miss.txt", out / "q-miss-probe.txt"]
    if _stamp_matches(stamp_path, stamp) and all(f.exists() for f in files):
        return
    _write_lines(files[0], [f"$ORIGIN {MISS_ZONE}.\n$TTL 86400\n"
                            f"@ IN SOA ns.{MISS_ZONE}. hostmaster.{MISS_ZONE}. 1 3600 900 604800 86400\n"
                            f"@ IN NS ns.{MISS_ZONE}.\nns IN A 127.0.0.1\n* IN A 198.19.0.1\n"])
    rng = random.Random(f"miss/{seed}")
    # The index makes every name unique; the random prefix keeps them from sorting together.
    names = [f"{_word(rng, 3, 8)}-{_base36(i)}.{MISS_ZONE}" for i in range(N_MISS + N_PROBE)]
    _write_lines(files[1], [f"{n} A\n" for n in names[:N_MISS]])
    _write_lines(files[2], [f"{n}\n" for n in names[N_MISS:]])
    _write_lines(stamp_path, [json.dumps(stamp, sort_keys=True) + "\n"])
    print(f"[gen_data] {MISS_ZONE}: wildcard zone, {N_MISS:,} miss queries, {N_PROBE:,} probe names", flush=True)


def ensure(tags: list[str], seed: int = 42, out: Path = DATA_DIR) -> None:
    """Build (or keep, when the stamps match) the data for every size tag."""
    out.mkdir(parents=True, exist_ok=True)
    base = {"format": FORMAT, "seed": seed, "allowed": N_ALLOWED, "queries": N_QUERIES}
    allowed = _allowed_names(out, seed, base)
    _miss_set(out, seed)
    for tag in tags:
        _size_set(out, tag, seed, allowed, dict(base, names=parse_size(tag)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100k,1m", help="comma-separated size tags (default: 100k,1m)")
    ap.add_argument("--seed", type=int, default=42, help="data seed (default: 42)")
    ap.add_argument("--out", type=Path, default=DATA_DIR, help=f"output directory (default: {DATA_DIR})")
    a = ap.parse_args()
    try:
        tags = [t.strip().lower() for t in a.sizes.split(",") if t.strip()]
        for t in tags:
            parse_size(t)
    except ValueError as exc:
        print(f"gen_data: {exc}", file=sys.stderr)
        return 2
    ensure(tags, a.seed, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
