"""URL sources against an aiohttp server on loopback: 500s and retries, slow and oversize bodies,
ETag and Last-Modified, changed lists, bad checksums and signatures. A failed fetch keeps the
last good list and shows in status and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from config.settings import SourceSettings
from feeds.compile import to_wire
from feeds.fetch import FetchError, fetch
from feeds.manager import FeedManager
from tests.feeds_plane.helpers import Clock, settings

SAMPLES = Path(__file__).resolve().parent.parent / "feeds" / "samples"


class Agency:
    """A loopback web server standing in for an agency's site; each path answers with the
    handler the test sets, and every request's headers are kept."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = asyncio.Event()  # lets stalled handlers finish at teardown
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.path, dict(request.headers)))
            return await self.routes[request.path](request)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.base = f"http://{host}:{port}"

    def serve(self, path: str, body: bytes, *, etag: str | None = None, last_modified: str | None = None) -> None:
        async def h(request: web.Request) -> web.Response:
            if etag is not None and request.headers.get("If-None-Match") == etag:
                return web.Response(status=304)
            if last_modified is not None and request.headers.get("If-Modified-Since") == last_modified:
                return web.Response(status=304)
            headers = {}
            if etag is not None:
                headers["ETag"] = etag
            if last_modified is not None:
                headers["Last-Modified"] = last_modified
            return web.Response(body=body, headers=headers)

        self.routes[path] = h

    def hits(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == path]


@pytest.fixture
async def agency() -> AsyncIterator[Agency]:
    a = Agency()
    await a.start()
    yield a
    a.release.set()
    assert a.runner is not None
    await a.runner.cleanup()


def source(url: str, **kw: Any) -> SourceSettings:
    kw.setdefault("retry_backoff", 0.01)
    return SourceSettings(kind="url", url=url, **kw)


async def test_retries_5xx_with_backoff_then_succeeds(agency: Agency) -> None:
    calls = 0

    async def flaky(_r: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503) if calls < 3 else web.Response(body=b"a.test\n")

    agency.routes["/list"] = flaky
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async with aiohttp.ClientSession() as s:
        got = await fetch(s, source(agency.base + "/list", retries=3, retry_backoff=1.5), sleep=sleep)
    assert got.body == b"a.test\n" and got.attempts == 3
    assert slept == [1.5, 3.0]  # exponential backoff


async def test_gives_up_after_retries_and_never_retries_a_404(agency: Agency) -> None:
    agency.routes["/down"] = lambda _r: _resp(status=500)
    agency.routes["/gone"] = lambda _r: _resp(status=404)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(FetchError, match="HTTP 500.*after 3 attempts"):
            await fetch(s, source(agency.base + "/down", retries=2))
        with pytest.raises(FetchError, match="HTTP 404"):
            await fetch(s, source(agency.base + "/gone", retries=2))
    assert len(agency.hits("/down")) == 3 and len(agency.hits("/gone")) == 1


async def _resp(**kw: Any) -> web.Response:
    return web.Response(**kw)


async def test_a_stalled_body_times_out(agency: Agency) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"a.test\n")
        await agency.release.wait()  # never sends the rest while the test runs
        return resp

    agency.routes["/slow"] = slow
    async with aiohttp.ClientSession() as s:
        with pytest.raises(FetchError, match="Timeout"):
            await fetch(s, source(agency.base + "/slow", retries=0, read_timeout=0.2))


async def test_oversize_bodies_are_cut_off(agency: Agency) -> None:
    big = b"x.test\n" * 400  # 2800 bytes

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no Content-Length: the cap is enforced while reading
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(big)
        return resp

    agency.serve("/declared", big)
    agency.routes["/chunked"] = chunked
    async with aiohttp.ClientSession() as s:
        with pytest.raises(FetchError, match="2800 bytes is over the cap of 1024"):
            await fetch(s, source(agency.base + "/declared", max_bytes=1024))
        with pytest.raises(FetchError, match="over the cap of 2048"):
            await fetch(s, source(agency.base + "/chunked", max_bytes=2048))
    assert len(agency.hits("/declared")) == 1  # not retried


class PollNode:
    def __init__(self, tmp_path: Path, src: dict[str, Any], **agency: Any) -> None:
        self.installed: list[Any] = []
        cfg = {"id": "ch-gespa", "sources": [{"kind": "url", "retry_backoff": 0.01, "retries": 1, **src}], **agency}
        self.m = FeedManager(settings(tmp_path, [cfg]), self.installed.append, clock=Clock())
        self.rt = next(iter(self.m.sources.values()))

    def blocks(self, name: str) -> bool:
        return self.installed[-1].match(to_wire(name.encode())) is not None


async def test_etag_and_last_modified_make_polls_cheap(tmp_path: Path, agency: Agency) -> None:
    agency.serve("/list", b"a.test\n", etag='"v1"')
    agency.serve("/lm", b"b.test\n", last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
    n = PollNode(tmp_path, {"url": agency.base + "/list"})
    await n.m.start()
    try:
        r = await n.m.refresh(n.rt)
        assert r is not None and r.status == "applied" and n.blocks("a.test")
        assert await n.m.refresh(n.rt) is None  # 304
        assert agency.hits("/list")[-1]["If-None-Match"] == '"v1"'
        assert n.rt.fetch.results == {"applied": 1, "not_modified": 1}
        agency.serve("/list", b"a.test\nc.test\n", etag='"v2"')  # the agency publishes a new list
        r = await n.m.refresh(n.rt)
        assert r is not None and r.status == "applied" and n.blocks("c.test") and n.rt.fetch.etag == '"v2"'

        lm = PollNode(tmp_path / "lm", {"url": agency.base + "/lm"})
        await lm.m.start()
        await lm.m.refresh(lm.rt)
        assert await lm.m.refresh(lm.rt) is None
        assert agency.hits("/lm")[-1]["If-Modified-Since"] == "Wed, 21 Oct 2015 07:28:00 GMT"
        await lm.m.aclose()
    finally:
        await n.m.aclose()


async def test_bad_signature_keeps_the_last_good_list_and_refetches(tmp_path: Path, agency: Agency) -> None:
    good = (SAMPLES / "swiss-gespa.txt").read_bytes()
    sign = (SAMPLES / "swiss-gespa.txt.sign").read_bytes()
    (tmp_path / "gespa.pub").write_bytes((SAMPLES / "swiss-gespa-TESTKEY.pub").read_bytes())
    agency.serve("/gespa.txt", good, etag='"g1"')
    agency.serve("/gespa.sign", sign)
    n = PollNode(
        tmp_path,
        {"url": agency.base + "/gespa.txt", "format": "ch-gespa", "control_url": agency.base + "/gespa.sign", "public_key": "gespa.pub"},
    )
    await n.m.start()
    try:
        r = await n.m.refresh(n.rt)
        assert r is not None and r.status == "applied" and n.blocks("spin-win-777.test")
        version = n.m.store.version("ch-gespa", r.version)  # type: ignore[union-attr, arg-type]
        assert version is not None and version["signature"] == "valid"

        tampered = good + b"innocent-bank.test\n"  # a line added without a new signature
        agency.serve("/gespa.txt", tampered, etag='"g2"')
        assert await n.m.refresh(n.rt) is None
        assert n.rt.fetch.failures == 1 and "signature" in (n.rt.fetch.last_error or "")
        assert not n.blocks("innocent-bank.test") and n.blocks("spin-win-777.test")
        assert n.rt.fetch.etag == '"g1"'  # not the failed body's: the next poll fetches it again
        status = n.m.status("ch-gespa")["agencies"][0]
        assert status["failing"] == [n.rt.key] and status["sources"][0]["last_error"]
        metrics = {m.name: m for collect in n.m.collectors for m in collect()}
        assert metrics["betblock_feed_failures"].samples[0].value == 1
        await n.m.refresh(n.rt)
        assert agency.hits("/gespa.txt")[-1].get("If-None-Match") == '"g1"'
    finally:
        await n.m.aclose()


async def test_checksum_mismatch_is_refused(tmp_path: Path, agency: Agency) -> None:
    data = (SAMPLES / "italy-adm.txt").read_bytes()
    agency.serve("/adm.txt", data)
    agency.serve("/adm.sha-256", (SAMPLES / "italy-adm.sha-256").read_bytes())
    n = PollNode(tmp_path, {"url": agency.base + "/adm.txt", "format": "it-adm", "control_url": agency.base + "/adm.sha-256"})
    await n.m.start()
    try:
        r = await n.m.refresh(n.rt)
        assert r is not None and r.status == "applied" and n.blocks("spin-win-777.test")
        assert n.m.store.version("ch-gespa", 1)["checksum"] == "ok"  # type: ignore[union-attr, index]
        agency.serve("/adm.txt", data.replace(b"spin-win-777.test", b"spin-win-778.test"))
        assert await n.m.refresh(n.rt) is None and "SHA-256 mismatch" in (n.rt.fetch.last_error or "")
        assert n.blocks("spin-win-777.test") and not n.blocks("spin-win-778.test")
    finally:
        await n.m.aclose()


async def test_unreachable_source_is_visible_and_retried_sooner(tmp_path: Path, agency: Agency) -> None:
    agency.routes["/list"] = lambda _r: _resp(status=502)
    n = PollNode(tmp_path, {"url": agency.base + "/list", "poll_interval": 3600}, deadline_hours=48)
    await n.m.start()
    poller = asyncio.create_task(n.m.scheduler.poll(n.rt))
    try:
        await asyncio.wait_for(_until(lambda: n.rt.fetch.failures >= 1), 5)
        assert n.rt.fetch.last_error and "HTTP 502" in n.rt.fetch.last_error
        assert n.m.status()["agencies"][0]["sources"][0]["overdue"] is True  # never fetched, deadline set
        agency.serve("/list", b"a.test\n")
        n.m.poke("ch-gespa")  # what POST /v1/feeds/{agency}/refresh does
        await asyncio.wait_for(_until(lambda: n.rt.fetch.failures == 0 and n.rt.version == 1), 5)
        assert n.blocks("a.test") and n.m.status()["agencies"][0]["sources"][0]["overdue"] is False
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await n.m.aclose()


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)
