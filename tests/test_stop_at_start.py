"""`betblock serve` as a real process: a stop signal at any moment of the start-up ends in the
orderly stop (exit 0, "stopped" logged), and a SIGHUP then neither kills the node nor is lost.

Each test signals the node as soon as a log line that precedes readiness appears: the first
line of all (written before the event loop runs), or the DNS listener's (DNS bound, the
workers and the warning page not yet started)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import dns.rcode

from tests.fakedns import FakeDns
from tests.procutil import START_SECONDS, Serve, first_answer, write_node


async def _until_line(node: Serve, starts: str) -> None:
    """Read the node's log until a record whose event starts with ``starts``; fails at its exit."""
    async with asyncio.timeout(START_SECONDS):
        while True:
            ready = await node._line()
            rec = json.loads(node.lines[-1])
            if str(rec.get("event", "")).startswith(starts):
                return
            assert not ready, f"ready before {starts!r}:\n{node.log()}"


async def _start(tmp_path: Path, upstream: FakeDns) -> Serve:
    cfg = write_node(tmp_path, upstream)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    return Serve(proc)


async def _stop_at(tmp_path: Path, starts: str) -> Serve:
    upstream = await FakeDns().start()
    node = await _start(tmp_path, upstream)
    try:
        await _until_line(node, starts)
        node._drain = asyncio.create_task(node._drain_rest())  # a full pipe would block the node
        code = await node.stop(signal.SIGTERM, seconds=START_SECONDS)
    finally:
        await node.stop()
        await upstream.stop()
    assert code == 0, node.log()
    assert node.events("stopped"), node.log()
    return node


async def test_sigterm_before_the_event_loop_stops_in_order(tmp_path: Path) -> None:
    # The first line: the command line says where the admin page is, before the loop starts.
    await _stop_at(tmp_path, "admin page at")


async def test_sigterm_once_dns_listens_stops_in_order(tmp_path: Path) -> None:
    await _stop_at(tmp_path, "listening")


async def test_sighup_during_start_up_reloads_once_ready(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    node = await _start(tmp_path, upstream)
    try:
        await _until_line(node, "admin page at")
        node.proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(START_SECONDS):
            while not await node._line():
                pass
        node._drain = asyncio.create_task(node._drain_rest())
        assert (await first_answer(node.dns_port, "bad.test")).rcode() == dns.rcode.NXDOMAIN
    finally:
        code = await node.stop(signal.SIGTERM)
        await upstream.stop()
    assert code == 0, node.log()
    assert node.events("stopped"), node.log()
