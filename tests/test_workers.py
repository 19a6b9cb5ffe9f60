"""The default configuration: `betblock serve` answers DNS in worker processes (dns.workers).

Real processes on 127.0.0.1, dnspython as the client. Each query comes from a fresh socket (a
new source port), so SO_REUSEPORT's hash of the source spreads them over both workers; which
worker answered is read from /metrics (``betblock_worker_answers``, per worker slot).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import dns.exception
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from tests.dnsutil import RawTcp, RawUdp, ede, query, tcp, udp
from tests.fakedns import FakeDns
from tests.feeds_plane.helpers import TOKENS, push_agency
from tests.procutil import Serve

ADMIN = "admin-token-for-worker-tests-0123"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WORKERS = 2


def _env(**settings: str) -> dict[str, str]:
    """The environment of a node with workers; ``settings``: BETBLOCK_* overrides by their names."""
    env = dict(os.environ)
    env.pop("BETBLOCK_DNS__WORKERS", None)  # tests/conftest.py sets 0 for every other test
    env.update(settings)
    return env


def _config(tmp_path: Path, upstream: FakeDns, *, acl: str = '["127.0.0.0/8"]', hits: str = "") -> str:
    token = push_agency("pl-mf")["token_sha256"]
    return f"""
data_dir = "{tmp_path / 'var'}"
[dns]
listen = ["127.0.0.1:0"]
workers = {WORKERS}
[acl]
allow = {acl}
[http]
listen = "127.0.0.1:0"
admin_token = "{ADMIN}"
[warning_page]
enabled = false
[upstream]
servers = ["{upstream.address}"]
[hits]
jsonl_path = "{tmp_path / 'hits.jsonl'}"
flush_interval = 0.2
{hits}
[[agencies]]
id = "pl-mf"
action = "nxdomain"
token_sha256 = "{token}"
sources = [{{kind = "file", path = "{tmp_path / 'list.txt'}", poll_interval = 3600}}, {{kind = "push", format = "plain"}}]
"""


async def _start(tmp_path: Path, upstream: FakeDns, env: dict[str, str] | None = None, **kw: Any) -> tuple[Serve, Path]:
    (tmp_path / "list.txt").write_text("casino.test\n")
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(_config(tmp_path, upstream, **kw))
    node = await Serve.start(cfg, env=_env(**(env or {})), seconds=120.0)
    return node, cfg


def _events(node: Serve, event: str) -> list[dict[str, Any]]:
    out = []
    for line in list(node.lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == event:
            out.append(rec)
    return out


async def _until(cond: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll a condition until it holds, or fail after ``seconds`` (a bound, not a measurement)."""
    deadline = time.monotonic() + seconds
    while True:
        held = cond()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _metrics(node: Serve) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{node.http_port}/metrics") as r:
            text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _metrics_when(node: Serve, cond: Callable[[dict[tuple[str, tuple[tuple[str, str], ...]], float]], bool], what: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics once ``cond`` holds for it: the workers report their counters every second."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    async def check() -> bool:
        nonlocal found
        found = await _metrics(node)
        try:
            return cond(found)
        except KeyError:
            return False

    await _until(check, what)
    return found


def _per_worker(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], kind: str | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), value in m.items():
        d = dict(labels)
        if name == "betblock_worker_answers_total" and (kind is None or d["kind"] == kind):
            out[d["worker"]] = out.get(d["worker"], 0) + value
    return out


def _total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], kind: str) -> float:
    return m[("betblock_answers_total", (("kind", kind),))]


async def _ask_many(port: int, names: list[str], timeout: float = 10.0) -> list[dns.message.Message]:
    """Ask each name from its own socket (its own source port), 20 at a time."""
    out: list[dns.message.Message] = []
    for i in range(0, len(names), 20):
        out += await asyncio.gather(*(udp(port, query(n, edns=True), timeout=timeout) for n in names[i : i + 20]))
    return out


async def _hits_total(node: Serve) -> int:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(f"http://127.0.0.1:{node.http_port}/v1/hits", params={"limit": "1000"}) as r:
            body = await r.json()
    return sum(h["count"] for h in body["hits"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent may not have reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _per_worker_level(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == f"betblock_worker_{name}")


async def test_both_workers_answer_metrics_add_up_and_hits_reach_the_log(tmp_path: Path, upstream: FakeDns) -> None:
    # Loopback is not exempt from rate limiting here, so each worker keeps an account for it
    # (a level to sum); the deadline and TCP idle time outlast a report or two of the levels.
    levels_env = {"BETBLOCK_RRL__EXEMPT": "[]", "BETBLOCK_UPSTREAM__DEADLINE": "60", "BETBLOCK_DNS__TCP_IDLE_TIMEOUT": "300"}
    node, _ = await _start(tmp_path, upstream, env=levels_env)
    try:
        started = _events(node, "worker started")
        pids = {r["pid"] for r in started}
        assert len(started) == WORKERS and len(pids) == WORKERS and node.proc.pid not in pids
        names = ["casino.test", "allowed.test"] * 100
        answers = await _ask_many(node.dns_port, names)
        assert [a.rcode() for a in answers] == [dns.rcode.NXDOMAIN, dns.rcode.NOERROR] * 100

        m = await _metrics_when(node, lambda m: sum(_per_worker(m).values()) == 200, "the workers' counters of 200 answers")
        blocked = _per_worker(m, "blocked")
        everything = _per_worker(m)
        assert set(everything) == {"0", "1"} and all(v > 0 for v in everything.values()), everything  # both took queries
        assert _total(m, "blocked") == sum(blocked.values()) == 100
        answered = sum(_total(m, k) for k in ("cached", "forwarded"))
        assert answered == 100 and sum(everything.values()) == 200
        assert m[("betblock_workers", ())] == WORKERS
        # Levels are the workers' sum, not the idle control plane's zero: the caches hold
        # allowed.test, and each worker has an account for 127.0.0.0/24.
        assert m[("betblock_cache_entries", ())] == _per_worker_level(m, "cache_entries") >= 1
        assert m[("betblock_rrl_prefixes", ())] == WORKERS

        # Every blocked answer, from either worker, is a hit in the control plane's log.
        async def all_hits() -> bool:
            return await _hits_total(node) == 100

        await _until(all_hits, "100 hits in /v1/hits")

        # An open TCP connection and a question waiting on a silent upstream show as levels too.
        conn = await RawTcp.open(node.dns_port)
        waiting = await RawUdp.open(node.dns_port)
        try:
            conn.send(query("allowed.test").to_wire())
            await conn.recv()
            upstream.behaviour.silent = True
            waiting.send(query("slow.test").to_wire())
            m = await _metrics_when(
                node, lambda m: m[("betblock_tcp_connections", ())] == 1 and m[("betblock_upstream_inflight", ())] == 1,
                "the open connection and the waiting question in /metrics",
            )
            assert _per_worker_level(m, "tcp_connections") == 1 and _per_worker_level(m, "upstream_inflight") == 1
        finally:
            upstream.behaviour.silent = False  # the next attempt is answered: nothing left to drain
            waiting.close()
            await conn.close()
        assert await node.stop(signal.SIGTERM) == 0, node.log()[-3000:]
        assert not any(_alive(p) for p in pids)
        assert '"level": "error"' not in node.log(), node.log()[-3000:]
    finally:
        await node.stop()


async def test_sigterm_drains_the_workers_and_flushes_their_last_hits(tmp_path: Path, upstream: FakeDns) -> None:
    # Hits are written only by the shutdown flush: every hit still buffered in a worker must
    # reach the control plane before it writes them.
    node, _ = await _start(tmp_path, upstream, hits="")
    try:
        pids = [r["pid"] for r in _events(node, "worker started")]
        answers = await _ask_many(node.dns_port, [f"n{i}.casino.test" for i in range(120)])
        assert all(a.rcode() == dns.rcode.NXDOMAIN for a in answers)
        assert await node.stop(signal.SIGTERM) == 0, node.log()[-3000:]
        assert not any(_alive(p) for p in pids)
        assert len(_events(node, "worker stopped")) == WORKERS
        lines = (tmp_path / "hits.jsonl").read_text().splitlines()
        assert sum(json.loads(line)["count"] for line in lines) == 120
    finally:
        await node.stop()


async def test_a_killed_worker_is_replaced_while_the_other_answers(tmp_path: Path, upstream: FakeDns) -> None:
    node, _ = await _start(tmp_path, upstream)
    control = node.proc.pid
    try:
        victim = _events(node, "worker started")[0]
        assert victim["worker"] == 0
        # The control plane is held (SIGSTOP) while worker 0 is killed, so no replacement can
        # come before the queries below: the other worker answers on its own meanwhile.
        os.kill(control, signal.SIGSTOP)
        try:
            os.kill(victim["pid"], signal.SIGKILL)
            await _until(lambda: not _alive(victim["pid"]), "worker 0 to die")
            asked = [asyncio.create_task(udp(node.dns_port, query("casino.test"), timeout=60.0)) for _ in range(20)]
            done, _ = await asyncio.wait(asked, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            assert first.exception() is None and first.result().rcode() == dns.rcode.NXDOMAIN
        finally:
            os.kill(control, signal.SIGCONT)
        try:
            await _until(lambda: len(_events(node, "worker answering")) > WORKERS, "a replacement worker")
        except AssertionError:
            raise AssertionError(node.log()[-4000:]) from None
        # Queries that queued on worker 0's socket meanwhile are answered by its replacement,
        # which inherits the very socket: none is lost.
        answers = await asyncio.gather(*asked)
        assert all(a.rcode() == dns.rcode.NXDOMAIN for a in answers)
        replacement = _events(node, "worker started")[-1]
        assert replacement["worker"] == 0 and replacement["pid"] != victim["pid"]
        assert _events(node, "DNS worker died")[0]["pid"] == victim["pid"]

        answers = await _ask_many(node.dns_port, ["allowed.test"] * 60)
        assert all(a.rcode() == dns.rcode.NOERROR for a in answers)
        m = await _metrics_when(node, lambda m: _per_worker(m).get("0", 0) > 0, "the replacement's counters")
        assert m[("betblock_worker_restarts_total", ())] == 1  # the replacement takes queries (above)
        assert await node.stop(signal.SIGTERM) == 0
    finally:
        await node.stop()


async def test_no_query_lost_and_no_stale_block_across_ten_swaps_with_two_workers(tmp_path: Path, upstream: FakeDns) -> None:
    probes = [f"p{i}.swap.test" for i in range(20)]
    for i, p in enumerate(probes):
        upstream.add(p, "A", f"192.0.2.{i + 1}", ttl=300)

    def listed(k: int) -> list[str]:
        return [p for i, p in enumerate(probes) if i % 10 != k % 10]  # each swap unblocks two, blocks two

    node, _ = await _start(tmp_path, upstream)
    try:
        base = f"http://127.0.0.1:{node.http_port}"
        stop = asyncio.Event()
        sent = 0
        lost: list[str] = []

        async def load(offset: int) -> None:
            nonlocal sent
            i = offset
            while not stop.is_set():
                i += 1
                sent += 1
                try:
                    await udp(node.dns_port, query(probes[i % len(probes)], edns=True), timeout=5.0)
                except dns.exception.Timeout:
                    lost.append(probes[i % len(probes)])

        async with aiohttp.ClientSession() as s:
            async def put(k: int) -> None:
                body = ("\n".join(["casino.test", *listed(k)]) + "\n").encode()
                headers = {"Authorization": f"Bearer {TOKENS['pl-mf']}"}
                async with s.put(f"{base}/v1/feeds/pl-mf", data=body, headers=headers) as r:
                    doc = await r.json()
                    assert r.status == 200 and doc["status"] == "applied", doc

            await put(0)
            streams = [asyncio.create_task(load(j * 5)) for j in range(4)]
            try:
                for k in range(1, 11):
                    before = sent
                    await put(k)
                    # Reported applied: every worker answers from the new list, whichever the
                    # source port lands on.
                    unblocked = sorted(set(listed(k - 1)) - set(listed(k)))
                    blocked = sorted(set(listed(k)) - set(listed(k - 1)))
                    got = await _ask_many(node.dns_port, unblocked * 10 + blocked * 10)
                    for name, msg in zip(unblocked * 10 + blocked * 10, got):
                        is_blocked = any(code == 16 for code, _ in ede(msg))
                        assert is_blocked == (name in blocked), f"swap {k}: {name} answered from a stale list"
                    await _until(lambda b=before: sent > b + 20, "queries under load during the swap")
            finally:
                stop.set()
                await asyncio.gather(*streams)
        assert lost == [] and sent > 200, (len(lost), sent)
        assert len(_events(node, "policy in force in every worker")) >= 11
        m = await _metrics_when(node, lambda m: len(_per_worker(m)) == WORKERS, "both workers' counters")
        assert all(v > 0 for v in _per_worker(m).values())
        assert await node.stop(signal.SIGTERM) == 0
    finally:
        await node.stop()


async def test_sighup_acl_change_reaches_every_worker(tmp_path: Path, upstream: FakeDns) -> None:
    node, cfg = await _start(tmp_path, upstream)
    try:
        answers = await _ask_many(node.dns_port, ["allowed.test"] * 40)
        answers += await asyncio.gather(*(tcp(node.dns_port, query("casino.test")) for _ in range(10)))
        assert [a.rcode() for a in answers] == [dns.rcode.NOERROR] * 40 + [dns.rcode.NXDOMAIN] * 10  # TCP too
        cfg.write_text(_config(tmp_path, upstream, acl='["10.0.0.0/8"]'))
        node.proc.send_signal(signal.SIGHUP)
        await _until(lambda: bool(_events(node, "reload: workers reconfigured")), "the workers to take the new ACL")
        assert _events(node, "reload: workers reconfigured")[0]["workers"] == WORKERS
        answers = await _ask_many(node.dns_port, ["allowed.test"] * 60)
        assert {dns.rcode.to_text(a.rcode()) for a in answers} == {"REFUSED"}
        m = await _metrics_when(node, lambda m: sum(_per_worker(m, "refused").values()) == 60, "60 refused in the counters")
        refused = _per_worker(m, "refused")
        assert len(refused) == WORKERS and all(v > 0 for v in refused.values()), refused
        assert await node.stop(signal.SIGTERM) == 0
    finally:
        await node.stop()


async def test_workers_exit_when_the_control_plane_is_killed(tmp_path: Path, upstream: FakeDns) -> None:
    node, _ = await _start(tmp_path, upstream)
    pids = [r["pid"] for r in _events(node, "worker started")]
    try:
        assert all(_alive(p) for p in pids)
        node.proc.kill()
        await node.proc.wait()
        await _until(lambda: not any(_alive(p) for p in pids), "the workers to exit")
    finally:
        await node.stop()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


async def test_each_compile_writes_the_table_once_the_hand_over_links_the_saved_file(tmp_path: Path, upstream: FakeDns) -> None:
    node, _ = await _start(tmp_path, upstream)
    var = tmp_path / "var"

    def linked() -> list[Path]:
        """The hand-over files that are the saved snapshot itself (one inode, two names)."""
        saved = (var / "snapshot.marshal").stat().st_ino
        return [p for p in (var / "workers").glob("policy-*.table") if p.stat().st_ino == saved]

    try:
        first = linked()  # the start's compile
        assert [p.name for p in first] == [f"policy-{_events(node, 'policy installed')[0]['version']}.table"], node.log()
        async with aiohttp.ClientSession() as s:
            async with s.put(f"http://127.0.0.1:{node.http_port}/v1/feeds/pl-mf", data=b"casino.test\nother.test\n",
                             headers={"Authorization": f"Bearer {TOKENS['pl-mf']}"}) as r:
                doc = await r.json()
                assert r.status == 200 and doc["status"] == "applied", doc
        after = linked()  # a compile and swap while running
        assert len(after) == 1 and after != first, node.log()
        assert (await udp(node.dns_port, query("other.test"))).rcode() == dns.rcode.NXDOMAIN
        assert await node.stop(signal.SIGTERM) == 0
    finally:
        await node.stop()
