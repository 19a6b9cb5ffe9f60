#!/usr/bin/env python3
"""`make torture`: hostile load and faults against real `betblock serve` processes, on loopback.

Owns the attacks and faults of issue 8 as one bounded run (about three minutes) that prints one
table, attack or fault -> figure -> target, and with ``--readme`` writes it into README.md
between the torture-table markers. Every process it starts and every packet it sends stays on
127.0.0.0/8 (Linux routes all of it to lo, so attackers can have addresses of their own).

Not part of ``make test``: the figures depend on the machine. Rows:

  unread      RSS growth under one TCP client that pipelines queries and never reads, 20 s
  slowloris   legitimate TCP answered from 127.0.0.1 during a 1,000-connection slowloris
  http-idle   forwarded queries answered with 1,100 idle HTTP connections under ulimit -n 1024
  kill9       hits lost on kill -9 at 10k blocked queries/s
  reload      queries lost across 10 SIGHUPs and 10 list swaps under load
  tamper      tamper cases detected by `betblock hits verify`
  rrl         a 1 MB flood from one address: answers per second against the configured rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dns.edns  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
from dnslib import QTYPE, RR, A, DNSRecord, TXT  # noqa: E402

MIB = 1 << 20
BLOCKED = "bad.test"
FORWARD_ADDR = "192.0.2.1"


# -- a fake upstream --------------------------------------------------------------------------


class Upstream:
    """An authoritative server on 127.0.0.1 in a thread: A 192.0.2.1 for any name, and an 8 KB
    TXT at big.test; UDP and TCP."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reply(self, data: bytes) -> bytes:
        req = DNSRecord.parse(data)
        rep = req.reply()
        name = str(req.q.qname).rstrip(".").lower()
        if name == "big.test" and req.q.qtype == QTYPE.TXT:
            for i in range(32):
                rep.add_answer(RR(req.q.qname, QTYPE.TXT, rdata=TXT(f"{i:03d}" + "x" * 240), ttl=3600))
        elif req.q.qtype == QTYPE.A:
            rep.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(FORWARD_ADDR), ttl=3600))
        return rep.pack()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        up = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                try:
                    self.t.sendto(up.reply(data), addr)
                except Exception:
                    pass

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    size = struct.unpack(">H", await reader.readexactly(2))[0]
                    out = up.reply(await reader.readexactly(size))
                    writer.write(struct.pack(">H", len(out)) + out)
            except Exception:
                writer.close()

        async def start() -> None:
            t, _ = await self.loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            self.port = t.get_extra_info("sockname")[1]
            await asyncio.start_server(tcp, "127.0.0.1", self.port)

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()


# -- a betblock node ----------------------------------------------------------------------------


class Node:
    """`betblock serve` with a config of its own in ``work``; DNS and HTTP ports read from its log."""

    def __init__(self, work: Path, upstream: Upstream, extra: str = "", nofile: tuple[int, int] | None = None) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        (work / "list.txt").write_text(f"{BLOCKED}\n")
        self.config = work / "betblock.toml"
        self.config.write_text(
            f"""data_dir = "{work / 'var'}"
[dns]
listen = ["127.0.0.1:0"]
[http]
listen = "127.0.0.1:0"
[warning_page]
enabled = false
[upstream]
servers = ["{upstream.address}"]
{extra}
[[agencies]]
id = "pl-mf"
action = "nxdomain"
lists = ["{work / 'list.txt'}"]
"""
        )
        self.nofile = nofile
        self.lines: list[dict[str, Any]] = []
        self.port = self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()

    def start(self) -> Node:
        nofile = self.nofile
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "betblock.cli", "serve", "--config", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60) or not self.port:
            self.kill()
            raise RuntimeError("betblock did not start: " + json.dumps(self.lines[-5:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "text", "text": raw.decode(errors="replace")}
            self.lines.append(line)
            ev = line.get("event")
            if ev == "listening":
                self.port = line["port"]
            elif ev == "http listening" and not self.http_port:
                self.http_port = line["port"]
            elif ev == "ready":
                self._ready.set()
        self._ready.set()

    def count(self, event: str) -> int:
        return sum(1 for line in self.lines if line.get("event") == event)

    def rss(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metrics(self) -> dict[str, float]:
        out = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line and not line.startswith("#"):
                        key, _, value = line.rpartition(" ")
                        try:
                            out[key] = float(value)
                        except ValueError:
                            pass
        except OSError:
            pass
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cli(self, group: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "betblock.cli", group, "--config", str(self.config), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )


# -- wire helpers -----------------------------------------------------------------------------


def query(name: str, qtype: str = "A", qid: int = 0, pad: int = 0) -> bytes:
    options = [dns.edns.GenericOption(12, b"\0" * pad)] if pad else None
    q = dns.message.make_query(name, qtype, use_edns=0 if pad else None, options=options)
    q.id = qid
    return q.to_wire()


def frame(msg: bytes) -> bytes:
    return struct.pack(">H", len(msg)) + msg


def tcp_ask(port: int, name: str, source: str = "127.0.0.1", timeout: float = 2.0) -> dns.message.Message:
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(frame(query(name, qid=random.randrange(65536))))
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return dns.message.from_wire(buf[2 : 2 + struct.unpack(">H", buf[:2])[0]])


def take_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the rows ---------------------------------------------------------------------------------

Result = tuple[str, bool]  # the figure, and whether it meets the target


def unread(work: Path, up: Upstream, seconds: float = 20.0) -> Result:
    with_node = Node(work, up).start()
    try:
        s = socket.create_connection(("127.0.0.1", with_node.port))
        s.sendall(frame(query("big.test", "TXT", 1)))
        s.settimeout(5)
        s.recv(65536)
        s.close()
        time.sleep(0.5)
        base = with_node.rss()
        data = frame(query("big.test", "TXT", 7, pad=1000)) * 4096
        s = socket.create_connection(("127.0.0.1", with_node.port))
        s.setblocking(False)
        sent = peak = 0
        off = 0
        end = time.monotonic() + seconds
        next_sample = 0.0
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                peak = max(peak, with_node.rss() - base)
                next_sample = now + 0.25
            _, w, _ = select.select([], [s], [], 0.25)
            if w:
                try:
                    n = s.send(data[off : off + 65536])
                except BlockingIOError:
                    continue
                except OSError:
                    break  # closed by the server
                sent += n
                off = (off + n) % len(data)
        peak = max(peak, with_node.rss() - base)
        s.close()
        time.sleep(2)
        after = with_node.rss() - base
    finally:
        with_node.kill()
    return (
        f"+{peak / MIB:.1f} MiB peak, +{after / MIB:.1f} MiB 2 s after close ({sent / MIB:.0f} MiB of queries taken)",
        peak <= 32 * MIB,
    )


def slowloris(work: Path, up: Upstream, seconds: float = 20.0, n: int = 1000) -> Result:
    take_fd_limit()
    node = Node(work, up).start()
    stop = threading.Event()
    held = [0]

    def attack() -> None:
        # 1,000 connections from 1,000 different /24s, each sending one byte every 4 s and
        # reconnecting when closed: no per-prefix cap helps, only the global one.
        sources = [f"127.{2 + i // 250}.{i % 250}.1" for i in range(n)]
        socks: dict[int, socket.socket] = {}
        due = {i: time.monotonic() + 4 * random.random() for i in range(n)}

        def connect(i: int) -> None:
            s = socket.socket()
            s.setblocking(False)
            s.bind((sources[i], 0))
            try:
                s.connect(("127.0.0.1", node.port))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                return
            socks[i] = s

        for i in range(n):
            connect(i)
        while not stop.is_set():
            now = time.monotonic()
            for i in list(socks):
                if due[i] <= now:
                    due[i] = now + 4
                    try:
                        socks[i].send(b"\x00")
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        socks.pop(i).close()
            r, _, _ = select.select(list(socks.values())[:1000], [], [], 0.05)
            for s in r:
                try:
                    if s.recv(4096):
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                i = next(k for k, v in socks.items() if v is s)
                socks.pop(i).close()
            for i in range(n):
                if i not in socks:
                    connect(i)
            held[0] = len(socks)
        for s in socks.values():
            s.close()

    t = threading.Thread(target=attack, daemon=True)
    t.start()
    try:
        time.sleep(2)  # let the attack take every slot first
        asked = answered = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            asked += 1
            try:
                if tcp_ask(node.port, BLOCKED, "127.0.0.1").rcode() == dns.rcode.NXDOMAIN:
                    answered += 1
            except OSError:
                pass
            time.sleep(0.05)
        m = node.metrics()
    finally:
        stop.set()
        t.join(10)
        node.kill()
    evicted = int(m.get("betblock_tcp_evicted_total", 0))
    return (
        f"{answered}/{asked} answered ({100 * answered / max(asked, 1):.0f} %); {evicted} slow connections closed to make room",
        answered == asked,
    )


def http_idle(work: Path, up: Upstream, conns: int = 1100, queries: int = 300) -> Result:
    take_fd_limit()
    node = Node(work, up, extra="deadline = 2.0", nofile=(1024, 1024)).start()
    held: list[socket.socket] = []
    try:
        for _ in range(conns):
            try:
                held.append(socket.create_connection(("127.0.0.1", node.http_port), timeout=2))
            except OSError:
                pass
        time.sleep(1)
        answered = 0
        for i in range(queries):
            try:
                r = dns.query.udp(dns.message.make_query(f"f{i}.forward.test", "A"), "127.0.0.1", port=node.port, timeout=3)
            except Exception:
                continue
            if r.rcode() == dns.rcode.NOERROR and r.answer and r.answer[0][0].address == FORWARD_ADDR:
                answered += 1
    finally:
        for s in held:
            s.close()
        node.kill()
    return (
        f"{answered}/{queries} answered ({100 * answered / queries:.0f} %) with {len(held)} HTTP connections opened",
        answered == queries,
    )


def _stored_hits(node: Node) -> int | None:
    out = node.cli("hits", "export", "--format", "ndjson")
    if out.returncode != 0:
        return None
    return sum(json.loads(line).get("count", 1) for line in out.stdout.splitlines() if line.strip())


def kill9(work: Path, up: Upstream, rate: int = 10000, seconds: float = 5.0) -> Result:
    node = Node(work, up).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.connect(("127.0.0.1", node.port))
    s.setblocking(False)
    wires = [query(f"w{i}.{BLOCKED}", qid=i) for i in range(1000)]
    answered = sent = 0
    start = time.monotonic()
    tick = 0.01
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            while sent < rate * elapsed:
                try:
                    s.send(wires[sent % 1000])
                except BlockingIOError:
                    break
                sent += 1
            while True:
                try:
                    s.recv(4096)
                except BlockingIOError:
                    break
                answered += 1
            time.sleep(tick)
        node.proc.kill()  # type: ignore[union-attr]  # while the load runs
        node.proc.wait()  # type: ignore[union-attr]
        while True:  # answers already in our buffer were given before the kill
            try:
                s.recv(4096)
            except (BlockingIOError, ConnectionRefusedError):
                break
            answered += 1
    finally:
        s.close()
        node.kill()
    stored = _stored_hits(node)
    achieved = answered / seconds
    if stored is None:
        return "hits store unreadable after kill -9", False
    lost = max(answered - stored, 0)
    return (
        f"{lost} of {answered} lost = {lost / max(achieved, 1):.2f} s worth (at {achieved / 1000:.1f}k blocked q/s)",
        lost <= achieved,
    )


def reload(work: Path, up: Upstream, rounds: int = 10, qps: int = 2000) -> Result:
    names = [f"listed{i}.test" for i in range(200)]
    listfile = work / "swap.txt"
    work.mkdir(parents=True, exist_ok=True)
    listfile.write_text("\n".join(names) + "\n")
    node = Node(
        work, up,
        extra=f"""[hits]
flush_interval = 0.1
[[agencies]]
id = "it-adm"
action = "nxdomain"
[[agencies.sources]]
kind = "file"
path = "{listfile}"
poll_interval = 0.2
""",
    ).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.connect(("127.0.0.1", node.port))
    s.setblocking(False)
    outstanding: dict[int, float] = {}
    lost = sent = 0
    updates = node.count("update applied")
    qid = 0
    try:
        tcp_ask(node.port, "cached.test")  # forwarded once, then from the cache
        start = time.monotonic()
        events = [(1 + i, "hup" if i % 2 == 0 else "swap") for i in range(2 * rounds)]
        duration = 2 * rounds + 3
        while (elapsed := time.monotonic() - start) < duration:
            if events and elapsed >= events[0][0]:
                _, what = events.pop(0)
                if what == "hup":
                    node.signal(signal.SIGHUP)
                else:
                    names.append(f"new{len(names)}.test")
                    listfile.write_text("\n".join(names) + "\n")
            while sent < qps * min(elapsed, duration - 2.5) and sent < qps * duration:
                qid = (qid + 1) & 0xFFFF
                if qid in outstanding:
                    break
                name = random.choice((BLOCKED, "cached.test", random.choice(names)))
                try:
                    s.send(query(name, qid=qid))
                except BlockingIOError:
                    break
                outstanding[qid] = time.monotonic()
                sent += 1
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                outstanding.pop(struct.unpack(">H", data[:2])[0], None)
            now = time.monotonic()
            for q, t in list(outstanding.items()):
                if now - t > 2.0:
                    del outstanding[q]
                    lost += 1
            time.sleep(0.005)
        lost += len(outstanding)
        swaps = node.count("update applied") - updates
        code = node.stop()
    finally:
        s.close()
        node.kill()
    return (
        f"{lost} of {sent} unanswered ({rounds} SIGHUPs, {rounds} list swaps, {swaps} applied; exit {code})",
        lost == 0,
    )


def _tamper_cases() -> list[tuple[str, Callable[[Path], None]]]:
    def sql(statements: str) -> Callable[[Path], None]:
        def apply(db: Path) -> None:
            conn = sqlite3.connect(db)
            try:
                conn.executescript(statements)
                conn.commit()
            finally:
                conn.close()

        return apply

    def truncate(db: Path) -> None:
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        db.write_bytes(b"")

    def half(db: Path) -> None:
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])

    last_batch = "(SELECT id FROM batches ORDER BY id DESC LIMIT 1 OFFSET {n})"
    return [
        ("one hit's name changed", sql("UPDATE hits SET name = (SELECT max(id) FROM names) WHERE id = (SELECT min(id) FROM hits WHERE name <> (SELECT max(id) FROM names));")),
        ("one hit deleted", sql("DELETE FROM hits WHERE id = (SELECT min(id) FROM hits);")),
        ("last batch deleted", sql(
            f"DELETE FROM hits WHERE id >= (SELECT first_hit FROM batches WHERE id = {last_batch.format(n=0)});"
            f"DELETE FROM batches WHERE id >= {last_batch.format(n=0)};")),
        ("last 20 batches deleted", sql(
            f"DELETE FROM hits WHERE id >= (SELECT first_hit FROM batches WHERE id = {last_batch.format(n=19)});"
            f"DELETE FROM batches WHERE id >= {last_batch.format(n=19)};")),
        ("first 10 batches deleted, 10th hash as anchor", sql(
            "INSERT INTO meta (key, value) VALUES ('anchor', (SELECT hex(hash) FROM batches ORDER BY id LIMIT 1 OFFSET 9))"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
            "DELETE FROM hits WHERE id <= (SELECT last_hit FROM batches ORDER BY id LIMIT 1 OFFSET 9);"
            "DELETE FROM batches WHERE id <= (SELECT id FROM batches ORDER BY id LIMIT 1 OFFSET 9);")),
        ("every hit and batch deleted", sql("DELETE FROM hits; DELETE FROM batches;")),
        ("hits.sqlite truncated to 0 bytes", truncate),
        ("hits.sqlite cut in half", half),
        ("name index rows deleted", sql("DELETE FROM name_hits WHERE n = (SELECT n FROM name_hits LIMIT 1);")),
        ("batch time bounds edited", sql(
            "UPDATE batches SET max_ts = max_ts + 3600000"
            " WHERE id = (SELECT id FROM batches ORDER BY id LIMIT 1 OFFSET (SELECT count(*) / 2 FROM batches));")),
        ("daily roll-up edited", sql("UPDATE daily_name SET hits = hits + 1000;")),
        ("networks edited", sql("UPDATE nets SET net = '198.51.100.0/24';")),
    ]


def tamper(work: Path, up: Upstream) -> Result:
    # The reload row's node, stopped cleanly: its hit log has a few hundred batches. Each case
    # edits it in place (a store is known by its path) and is then undone from a copy.
    node_dir = work.parent / "reload"
    var = node_dir / "var"
    if not (var / "hits.sqlite").exists():
        return "no hit log from the reload row to tamper with", False
    pristine = work / "pristine"
    shutil.copytree(var, pristine)
    config = node_dir / "betblock.toml"

    def verify(cfg: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "betblock.cli", "hits", "--config", str(cfg), "verify"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )

    first = verify(config)
    if first.returncode != 0:
        return f"the untouched log fails verify: {' '.join(first.stdout.split())[:120]}", False
    detected, missed = 0, []
    cases = _tamper_cases()
    for what, apply in cases:
        shutil.rmtree(var)
        shutil.copytree(pristine, var)
        try:
            apply(var / "hits.sqlite")
        except sqlite3.Error as exc:
            missed.append(f"{what} (not applied: {exc})")
            continue
        if verify(config).returncode != 0:
            detected += 1
        else:
            missed.append(what)
    # A mistyped path must not create an empty log and call it intact.
    wrong = work / "mistyped.toml"
    wrong.write_text(config.read_text().replace(str(var), str(work / "nothere")))
    if verify(wrong).returncode != 0 and not (work / "nothere" / "hits.sqlite").exists():
        detected += 1
    else:
        missed.append("verify on a mistyped path")
    total = len(cases) + 1
    figure = f"{detected} of {total} detected"
    if missed:
        figure += "; missed: " + ", ".join(missed)
    return figure, detected == total


def _rrl() -> float | None:
    """The configured UDP response rate limit per client prefix, if this build has one."""
    from config.settings import Settings

    field = Settings.model_fields.get("rrl")
    if field is None or field.default_factory is None:
        return None
    section = field.default_factory()  # type: ignore[call-arg]
    return float(section.responses_per_second) if section.enabled else None


def rrl(work: Path, up: Upstream, megabytes: float = 1.0, seconds: float = 5.0) -> Result:
    limit = _rrl()
    # Loopback is exempt by default (local tools ask from it): this flood must not be.
    node = Node(work, up, extra="[rrl]\nexempt = []" if limit is not None else "").start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.connect(("127.0.0.1", node.port))
    s.setblocking(False)
    wire = query(BLOCKED, qid=1)
    total = int(megabytes * 1_000_000 / len(wire))
    full = slipped = sent = 0
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds + 1:
            while sent < total * min(elapsed / seconds, 1):
                try:
                    s.send(wire)
                except BlockingIOError:
                    break
                sent += 1
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                if data[2] & 0x02:
                    slipped += 1
                else:
                    full += 1
            time.sleep(0.005)
    finally:
        s.close()
        node.kill()
    rate = full / seconds
    fig = f"{sent} queries ({sent * len(wire) / 1e6:.1f} MB) in {seconds:.0f} s: {rate:.0f} full answers/s, {slipped} TC=1"
    if limit is None:
        return fig + "; no rate limit in this build", False
    # Met when the flood got no more full answers than the configured rate; the rest is dropped
    # or slips as TC=1 (how many depends on the limiter's window, as in BIND).
    return fig + f"; configured rrl.responses_per_second = {limit:g}", rate <= limit


ROWS: list[tuple[str, str, str, Callable[[Path, Upstream], Result]]] = [
    ("unread", "RSS growth, one TCP client pipelining queries for an 8 KB answer and never reading, 20 s", "≤ 32 MiB", unread),
    ("slowloris", "legitimate TCP from 127.0.0.1 answered during a 1,000-connection slowloris (1 byte / 4 s, 1,000 /24s)", "100 %", slowloris),
    ("http-idle", "forwarded queries answered with 1,100 idle HTTP connections under ulimit -n 1024", "100 %", http_idle),
    ("kill9", "hits lost on kill -9 at 10k blocked q/s", "≤ 1 s worth", kill9),
    ("reload", "queries lost across 10 SIGHUPs and 10 list swaps under load (2k q/s)", "0", reload),
    ("tamper", "tamper cases detected by `betblock hits verify`", "all", tamper),
    ("rrl", "a 1 MB UDP flood of one question from one address (over 5 s)", "full answers at most the configured rate", rrl),
]


def table(results: list[tuple[str, str, str, bool]]) -> str:
    lines = ["| attack or fault | figure | target | met |", "|---|---|---|---|"]
    lines += [f"| {what} | {fig} | {target} | {'yes' if ok else '**no**'} |" for what, fig, target, ok in results]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="*", help="run only these rows (default: all)")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = ap.parse_args()
    wanted = args.rows or [r[0] for r in ROWS]
    up = Upstream()
    results = []
    with tempfile.TemporaryDirectory(prefix="betblock-torture-") as tmp:
        for key, what, target, run in ROWS:
            if key not in wanted:
                continue
            print(f"... {key}", file=sys.stderr, flush=True)
            try:
                fig, ok = run(Path(tmp) / key, up)
            except Exception as exc:  # one broken row must not hide the others
                fig, ok = f"error: {type(exc).__name__}: {exc}", False
            results.append((what, fig, target, ok))
    out = table(results)
    print(out)
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        stamp = f"<!-- torture-table:start -->\nMeasured by `make torture` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores).\n\n"
        text = re.sub(r"<!-- torture-table:start -->\n.*?(<!-- torture-table:end -->)", lambda m: stamp + out + "\n" + m.group(1), text, flags=re.S)
        readme.write_text(text)
    return 0 if all(r[3] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
