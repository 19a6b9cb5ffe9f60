"""Figures for the feeds control plane, each measured in a fresh process (run with the venv's
python from the repository root; writes under a temporary directory, touches no network):

  compile   1M entries from 3 agencies (plain lists, 30 % of the names listed by two agencies)
            compiled into one snapshot: seconds and the process's peak RSS
  ingest    the same three lists as file sources into an empty store: parse, guard, store
            (SQLite), compile, save the snapshot; then a restart from the saved snapshot
  put       a node serving those 1M entries plus a push agency: time from sending a PUT to
            the first sinkholed answer for a name it adds, over UDP from another process
  parse     1M plain lines (the old timed test's data) parsed by feeds.formats.plain: CPU
            seconds, best of 3, and as a ratio to the peer measured in the same run, a bare
            decode-split-strip-lower of the same bytes (the floor any plain parser pays)
  swap      the same node under dnsperf load (blocked names, plus the pushed ones) while the
            push agency replaces its list 10 times: queries sent, answered and lost

    .venv/bin/python tools/feeds_figures.py [compile|ingest|parse|put|swap|all] [--names 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry a parent's peak
    across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_lists(total: int, out: Path) -> list[Path]:
    """Three plain lists of ``total`` entries in all; 30 % of the names are on two lists.
    Written by a child process, so that generating them does not count in our peak RSS."""
    paths = [out / f"agency{i}.txt" for i in range(3)]
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tools.feeds_figures import _write_lists; _write_lists({total}, {str(out)!r})"
    subprocess.run([sys.executable, "-c", code], check=True)
    return paths


def _write_lists(total: int, out_dir: str) -> None:
    out = Path(out_dir)
    rng = random.Random(7)
    letters = string.ascii_lowercase
    tlds = ["bet", "casino", "com", "net", "pl", "it", "cz", "io", "win", "online"]
    unique = int(total / 1.3)
    names = [f"{''.join(rng.choices(letters, k=rng.randint(4, 12)))}-{i}.{rng.choice(tlds)}" for i in range(unique)]
    shares = [0.45, 0.35, 0.20]
    start = 0
    buckets: list[list[str]] = []
    for share in shares:
        n = int(unique * share)
        buckets.append(names[start : start + n])
        start += n
    # 30 % of the entries are names another agency lists too.
    dup = total - sum(len(b) for b in buckets)
    for i in range(dup):
        buckets[(i % 2) + 1].append(buckets[0][i % len(buckets[0])])
    for i, bucket in enumerate(buckets):
        (out / f"agency{i}.txt").write_text("\n".join(bucket) + "\n")


def settings_for(tmp: Path, paths: list[Path], push: bool = False, token_hash: str = "") -> object:
    from config.settings import Settings

    agencies = [
        {"id": f"agency{i}", "precedence": 30 - 10 * i, "action": "nxdomain", "lists": [str(p)]}
        for i, p in enumerate(paths)
    ]
    if push:
        agencies.append({"id": "pusher", "precedence": 50, "token_sha256": token_hash, "sources": [{"kind": "push"}]})
    return Settings(agencies=agencies, base_dir=tmp, data_dir=tmp / "var")


def cmd_compile(total: int) -> None:
    from config.settings import AgencySettings
    from feeds.compile import AgencyList, compile_lists, read_plain
    from feeds.lists import SourceList

    tmp = Path(tempfile.mkdtemp())
    paths = make_lists(total, tmp)
    base = peak_rss_mb()
    lists = []
    for i, p in enumerate(paths):
        parsed = read_plain(p.read_bytes())
        sl = SourceList.build(parsed.names, ())
        del parsed
        lists.append(AgencyList(AgencySettings(id=f"agency{i}", precedence=30 - 10 * i), sl.plain, ()))
    held = peak_rss_mb()
    t0 = time.perf_counter()
    c0 = time.process_time()
    compiled = compile_lists(lists, [], 300)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    snap = compiled.snapshot
    print(f"compile: {sum(len(al.names) for al in lists)} entries from 3 agencies -> {len(snap.table)} names, "
          f"{len(snap.rules) - 1} rules; {wall:.2f} s wall, {cpu:.2f} s CPU; peak RSS {peak_rss_mb():.0f} MB "
          f"(interpreter+imports {base:.0f} MB, lists held {held:.0f} MB)")
    shutil.rmtree(tmp)


def cmd_ingest(total: int) -> None:
    from feeds.manager import FeedManager

    tmp = Path(tempfile.mkdtemp())
    paths = make_lists(total, tmp)
    s = settings_for(tmp, paths)

    async def first() -> None:
        m = FeedManager(s, lambda _snap: None)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        snap = await m.start()
        t1 = time.perf_counter()
        await m.flush()
        t2 = time.perf_counter()
        m.close()
        print(f"ingest: 3 file sources, empty store -> first snapshot installed in {t1 - t0:.2f} s "
              f"({len(snap.table)} names, compile {m.builder.compile_seconds:.2f} s); store and snapshot file written "
              f"in the background in {t2 - t1:.2f} s more; "
              f"peak RSS {peak_rss_mb():.0f} MB; store {(tmp / 'var' / 'feeds.sqlite').stat().st_size >> 20} MB")

    asyncio.run(first())
    # A restart in a fresh process: the saved snapshot.
    code = (
        "import asyncio, time, resource, sys; sys.path.insert(0, %r)\n"
        "from tools.feeds_figures import settings_for, peak_rss_mb\n"
        "from feeds.manager import FeedManager\n"
        "from pathlib import Path\n"
        "s = settings_for(Path(%r), [Path(p) for p in %r])\n"
        "async def main():\n"
        "    m = FeedManager(s, lambda _s: None)\n"
        "    t0 = time.perf_counter(); snap = await m.start(); t1 = time.perf_counter()\n"
        "    print(f'restart: saved snapshot installed in {t1 - t0:.2f} s ({len(snap.table)} names, compiles: {m.compiles}); '\n"
        "          f'peak RSS {peak_rss_mb():.0f} MB')\n"
        "    t0 = time.perf_counter(); await m._load_state(); t1 = time.perf_counter()\n"
        "    print(f'restart: store read in the background in {t1 - t0:.2f} s; peak RSS {peak_rss_mb():.0f} MB')\n"
        "asyncio.run(main())\n"
    ) % (str(ROOT), str(tmp), [str(p) for p in paths])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    shutil.rmtree(tmp)


def _node_config(tmp: Path, paths: list[Path], token: str) -> tuple[Path, int, int]:
    import socket

    from config.auth import sha256_hex

    with socket.socket() as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        http_port, dns_port = a.getsockname()[1], b.getsockname()[1]
    cfg = tmp / "betblock.toml"
    agencies = "".join(
        f'[[agencies]]\nid = "agency{i}"\nprecedence = {30 - 10 * i}\nlists = ["{p}"]\n' for i, p in enumerate(paths)
    )
    cfg.write_text(
        f'data_dir = "{tmp / "var"}"\n[dns]\nlisten = ["127.0.0.1:{dns_port}"]\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
        f'[warning_page]\nenabled = false\n[upstream]\nservers = ["UPSTREAM"]\n[hits]\nstore = "none"\n[log]\nlevel = "warning"\n'
        f'{agencies}[[agencies]]\nid = "pusher"\nprecedence = 50\ntoken_sha256 = "{sha256_hex(token)}"\nchurn_floor = 100000\n'
        f'[[agencies.sources]]\nkind = "push"\n'
    )
    return cfg, http_port, dns_port


def cmd_swap(total: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    paths = make_lists(total, tmp)
    token = "figures-token"
    cfg, http_port, dns_port = _node_config(tmp, paths, token)
    # Queries: listed names (blocked on the fast path) and 1 % pushed names, which flip
    # between blocked and forwarded as the lists change.
    listed = paths[0].read_text().split()[:20000]
    pushed = [f"p{i}.push.test" for i in range(200)]
    qfile = tmp / "queries.txt"
    qfile.write_text("".join(f"{n} A\n" for n in listed) + "".join(f"{pushed[i % 200]} A\n" for i in range(200)))
    try:
        asyncio.run(_swap(cfg, http_port, dns_port, token, qfile, pushed))
    finally:
        shutil.rmtree(tmp)


async def _swap(cfg: Path, http_port: int, dns_port: int, token: str, qfile: Path, pushed: list[str]) -> None:
    import re

    import aiohttp

    from tests.fakedns import FakeDns

    upstream = FakeDns()
    await upstream.start()
    cfg.write_text(cfg.read_text().replace("UPSTREAM", upstream.address))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg), cwd=ROOT)
    try:
        async with aiohttp.ClientSession() as s:
            await _ready(s, http_port)
            url = f"http://127.0.0.1:{http_port}/v1/feeds/pusher"
            auth = {"Authorization": f"Bearer {token}"}
            async with s.put(url, data="\n".join(pushed[::2]).encode(), headers=auth) as r:
                assert r.status == 200, await r.text()
            perf = await asyncio.create_subprocess_exec(
                "dnsperf", "-s", "127.0.0.1", "-p", str(dns_port), "-d", str(qfile), "-l", "25", "-c", "4",
                "-Q", "15000", "-t", "2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            await asyncio.sleep(2)  # load first, then swap under it
            times = []
            for k in range(10):
                body = "\n".join(pushed[(k + 1) % 2 :: 2]).encode()  # alternate halves: every name flips
                t0 = time.perf_counter()
                async with s.put(url, data=body, headers=auth) as r:
                    assert r.status == 200, await r.text()
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(1.5)
            out = (await perf.communicate())[0].decode()
        sent = re.search(r"Queries sent:\s+(\d+)", out)
        done = re.search(r"Queries completed:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        qps = re.search(r"Queries per second:\s+([\d.]+)", out)
        lat = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", out)
        print(f"swap: 10 PUTs of the push list under dnsperf load ({qps.group(1) if qps else '?'} qps over 25 s): "
              f"sent {sent.group(1) if sent else '?'}, completed {done.group(1) if done else '?'}, "
              f"lost {lost.group(1) if lost else '?'}; latency avg {float(lat.group(1)) * 1000 if lat else 0:.2f} ms, "
              f"max {float(lat.group(3)) * 1000 if lat else 0:.0f} ms; PUT answered in {min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms")
    finally:
        proc.terminate()
        await proc.wait()
        await upstream.stop()


async def _ready(s: object, http_port: int) -> None:
    import aiohttp

    deadline = time.monotonic() + 120
    while True:
        try:
            async with s.get(f"http://127.0.0.1:{http_port}/readyz") as r:  # type: ignore[attr-defined]
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("server did not become ready")
        await asyncio.sleep(0.2)


def cmd_put(total: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    paths = make_lists(total, tmp)
    token = "figures-token"
    cfg, http_port, dns_port = _node_config(tmp, paths, token)
    try:
        asyncio.run(_with_upstream(cfg, http_port, dns_port, token))
    finally:
        shutil.rmtree(tmp)


async def _with_upstream(cfg: Path, http_port: int, dns_port: int, token: str) -> None:
    from tests.fakedns import FakeDns

    upstream = FakeDns()
    await upstream.start()
    cfg.write_text(cfg.read_text().replace("UPSTREAM", upstream.address))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg), cwd=ROOT)
    try:
        await _put_figures(http_port, dns_port, token, proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
        await upstream.stop()


def _rss(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            yield_ = line.split()
            _RSS[yield_[0]] = int(yield_[1]) // 1024
    return f"RSS {_RSS.get('VmRSS:')} MB (peak {_RSS.get('VmHWM:')} MB)"


_RSS: dict[str, int] = {}


async def _put_figures(http_port: int, dns_port: int, token: str, pid: int) -> None:
    import aiohttp
    import dns.asyncquery
    import dns.message

    async with aiohttp.ClientSession() as s:
        await _ready(s, http_port)
        print(f"put: server ready, {_rss(pid)}")
        names = [f"seed{i}.push.test" for i in range(50)]
        for round_ in range(5):
            name = f"new{round_}.push.test"
            names.append(name)
            body = ("\n".join(names) + "\n").encode()
            q = dns.message.make_query(name, "A", use_edns=0)
            t0 = time.perf_counter()
            put = asyncio.ensure_future(
                s.put(f"http://127.0.0.1:{http_port}/v1/feeds/pusher", data=body, headers={"Authorization": f"Bearer {token}"})
            )
            first = None
            while first is None:
                r = await dns.asyncquery.udp(q, "127.0.0.1", port=dns_port, timeout=2)
                if any(o.otype == 15 and o.code == 16 for o in r.options):  # EDE 16 "Censored": sinkholed
                    first = time.perf_counter() - t0
            resp = await put
            done = time.perf_counter() - t0
            print(f"put: round {round_}: PUT {resp.status} answered after {done * 1000:.0f} ms; "
                  f"first sinkholed answer after {first * 1000:.0f} ms"
                  + (" (waited for the start-up store write)" if round_ == 0 and done > 1 else ""))
            resp.release()
        print(f"put: server after the PUTs, {_rss(pid)}")


def cmd_parse(total: int) -> None:
    from feeds.formats import plain

    tlds = ["com", "net", "bet", "example", "pl", "it", "cz", "ch"]
    data = "\n".join(f"mirror-{i}.casino-{i % 977}.{tlds[i % 8]}" for i in range(total)).encode()

    def floor() -> int:
        return len([line.strip().lower() for line in data.decode().splitlines()])

    def ours() -> int:
        result = plain.parse(data)
        assert not result.rejects
        return len(result.entries)

    def best(fn: object) -> float:
        times = []
        for _ in range(3):
            t0 = time.process_time()
            n = fn()  # type: ignore[operator]
            times.append(time.process_time() - t0)
            assert n == total
        return min(times)

    peer, us = best(floor), best(ours)
    print(f"parse {total:,} plain lines: {us:.2f} s CPU; peer (decode, split, strip, lower): {peer:.2f} s; ratio {us / peer:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["compile", "ingest", "parse", "put", "swap", "all"], default="all", nargs="?")
    p.add_argument("--names", type=int, default=1_000_000)
    args = p.parse_args()
    steps = ["compile", "ingest", "parse", "put", "swap"] if args.what == "all" else [args.what]
    for step in steps:
        if len(steps) > 1:
            subprocess.run([sys.executable, __file__, step, "--names", str(args.names)], check=True)
        else:
            {"compile": cmd_compile, "ingest": cmd_ingest, "parse": cmd_parse, "put": cmd_put, "swap": cmd_swap}[step](args.names)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
