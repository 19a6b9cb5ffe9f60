"""Operating signals and readiness: ``betblock serve`` as a real process reloads its lists and
its policy settings on SIGHUP while answering a continuous stream of queries (none lost), and
exits 0 on SIGTERM; /readyz is 503 until the first snapshot is installed, 200 after."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from betblock.app import App
from config.settings import Settings
from tests.dnsutil import ask_patiently
from tests.fakedns import FakeDns
from tests.procutil import Serve, node_toml, until


SINKHOLE = "198.51.100.99"


async def _ask(port: int, name: str, timeout: float = 2.0) -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=timeout)


def _config(tmp_path: Path, port: int, upstream: FakeDns, policy: str = "") -> str:
    return node_toml(tmp_path, port, upstream, f"""[hits]
store = "none"
[policy]
{policy}
[[agencies]]
id = "pl-mf"
action = "redirect"  # a sinkhole no upstream gives: the fake upstream answers NXDOMAIN for unknown names
redirect_ipv4 = ["198.51.100.99"]
# Only SIGHUP reads the file in this test: the watcher's own check is an hour away.
sources = [{{kind = "file", path = "list.txt", poll_interval = 3600}}]
""")


async def test_sighup_reloads_lists_and_policy_under_continuous_queries_and_sigterm_exits_0(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    upstream.add("ok.test", "A", "192.0.2.7")
    upstream.add("casino.test", "A", "192.0.2.66")
    listed = ["casino.test"]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(_config(tmp_path, 0, upstream))
    node = await Serve.start(cfg)  # every listener on port 0: the node's log says which it got
    proc, port = node.proc, node.dns_port

    async def sinkholed(name: str) -> bool:
        r = await ask_patiently(port, name)  # a late answer on a loaded machine is not a wrong one
        assert r is not None, f"no answer for {name}"
        return bool(r.answer) and r.answer[0][0].address == SINKHOLE

    try:
        async def up() -> bool:
            try:
                return await sinkholed("casino.test")
            except dns.exception.Timeout:
                return False

        await until(up, "the server to answer")

        sent = answered = 0
        bad: list[str] = []
        stop = asyncio.Event()

        async def stream() -> None:
            # One query after another, each with its own 2 s deadline: a query dropped during
            # a reload shows up as a timeout.
            nonlocal sent, answered
            names = ("casino.test", "ok.test", "www.casino.test", "new0.test")
            while not stop.is_set():
                name = names[sent % len(names)]
                sent += 1
                try:
                    r = await _ask(port, name)
                except dns.exception.Timeout:
                    bad.append(f"{name}: no answer")
                    continue
                answered += 1
                if r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    bad.append(f"{name}: {dns.rcode.to_text(r.rcode())}")

        streamer = asyncio.create_task(stream())
        for i in range(3):
            name = f"new{i}.test"
            listed.append(name)
            (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
            before = sent
            proc.send_signal(signal.SIGHUP)

            assert not await sinkholed(name)

            async def blocked(n: str = name) -> bool:
                return await sinkholed(n)

            await until(blocked, f"{name} to be blocked after SIGHUP")
            await until(lambda b=before: sent > b + 20, "queries during the reload")

        # A configuration the node cannot read is refused; the node goes on answering.
        cfg.write_text("this is = not toml [")
        proc.send_signal(signal.SIGHUP)
        assert await sinkholed("casino.test")
        # Before the file changes again: the reload must have read this one.
        await until(lambda: "configuration refused" in node.log(), "the bad configuration to be refused")
        # The policy section is re-read: an operator's allowlist entry unblocks a listed name.
        cfg.write_text(_config(tmp_path, 0, upstream, policy='allowlist = ["casino.test"]'))
        proc.send_signal(signal.SIGHUP)

        async def allowed() -> bool:
            r = await ask_patiently(port, "casino.test")
            assert r is not None, "no answer for casino.test"
            return r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.66"

        await until(allowed, "casino.test to be allowlisted after SIGHUP")
        assert await sinkholed("new2.test")  # the rest stays blocked

        stop.set()
        await streamer
        assert bad == [] and answered == sent and sent > 60, (sent, answered, bad[:5])

        assert await node.stop(signal.SIGTERM) == 0, node.log()[-2000:]
        assert "configuration refused" in node.log()
    finally:
        await node.stop()
        await upstream.stop()


async def test_readyz_is_503_until_the_first_snapshot_is_installed(tmp_path: Path) -> None:
    (tmp_path / "pl.txt").write_text("casino.test\n")
    settings = Settings(
        dns={"listen": ["127.0.0.1:0"]},
        http={"listen": "127.0.0.1:0", "admin_token": "ready-admin-token-0123456789"},
        warning_page={"enabled": False},
        upstream={"servers": ["127.0.0.1:9"]},
        hits={"store": "none"},
        agencies=[{"id": "pl-mf", "lists": ["pl.txt"]}],
        base_dir=tmp_path,
        data_dir=tmp_path / "var",
    )
    app = App(settings, handle_signals=False)
    gate = asyncio.Event()
    start = app.feeds.start

    async def held_start() -> Any:  # the first compile waits for the test
        await gate.wait()
        return await start()

    app.feeds.start = held_start  # type: ignore[method-assign]
    task = asyncio.create_task(app.run())
    try:
        await until(lambda: app.http is not None and app.http.bound is not None, "the HTTP listener")
        assert app.http is not None and app.http.bound is not None
        base = "http://%s:%d" % app.http.bound
        auth = {"Authorization": "Bearer ready-admin-token-0123456789"}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{base}/readyz") as r:
                assert (r.status, (await r.json())["status"]) == (503, "starting")
            async with s.get(f"{base}/v1/feeds", headers=auth) as r:
                assert r.status == 503  # nothing but health and metrics before the lists are in force
            async with s.get(f"{base}/metrics") as r:
                assert "betblock_ready 0.0" in await r.text()
            assert app.server.bound == []  # and no DNS listener: nothing answered unblocked

            gate.set()
            await asyncio.wait_for(app.ready.wait(), 10)
            async with s.get(f"{base}/readyz") as r:
                assert (r.status, (await r.json())["status"]) == (200, "ready")
            async with s.get(f"{base}/v1/feeds", headers=auth) as r:
                assert r.status == 200
            async with s.get(f"{base}/metrics") as r:
                assert "betblock_ready 1.0" in await r.text()
        r = await _ask(app.server.bound[0][1], "casino.test")
        assert r.rcode() == dns.rcode.NXDOMAIN
    finally:
        app.stop()
        gate.set()
        await asyncio.wait_for(task, 10)
