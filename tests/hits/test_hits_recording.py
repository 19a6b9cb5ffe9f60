"""Recording: client privacy modes, aggregation under a burst, drops counted, JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from config.settings import HitsSettings, Settings
from hits.privacy import ClientPrivacy
from hits.query import Filters
from hits.recorder import HitRecorder
from hits.service import HitLog
from hits.sqlite import SqliteStore
from hits.writer import HitWriter, name_text
from tests.hits.conftest import T0, hit
from tests.procutil import until


@pytest.mark.parametrize(
    ("mode", "address", "client", "network"),
    [
        ("full", "192.0.2.77", "192.0.2.77", "192.0.2.0/24"),
        ("full", "2001:db8:1:2345::9", "2001:db8:1:2345::9", "2001:db8:1:2300::/56"),
        ("truncate", "192.0.2.77", "192.0.2.0/24", "192.0.2.0/24"),
        ("truncate", "2001:db8:1:2345::9", "2001:db8:1:2300::/56", "2001:db8:1:2300::/56"),
        ("none", "192.0.2.77", "", ""),
    ],
)
def test_privacy_modes(mode: str, address: str, client: str, network: str) -> None:
    assert ClientPrivacy(mode).apply(address) == (client, network)  # type: ignore[arg-type]


def test_truncate_prefixes_are_configurable() -> None:
    p = ClientPrivacy("truncate", ipv4_prefix=16, ipv6_prefix=48)
    assert p.client("192.0.2.77") == "192.0.0.0/16"
    assert p.client("2001:db8:1:2::9") == "2001:db8:1::/48"


def test_hash_links_a_client_without_storing_it() -> None:
    a = ClientPrivacy("hash", secret=b"k1")
    b = ClientPrivacy("hash", secret=b"k2")
    h1 = a.client("192.0.2.77")
    assert h1 == a.client("192.0.2.77") and len(h1) == 32
    assert h1 != a.client("192.0.2.78")
    assert h1 != b.client("192.0.2.77")  # keyed: without the secret nobody can test a guess
    assert "192" not in h1
    with pytest.raises(ValueError):
        ClientPrivacy("hash")
    with pytest.raises(ValueError, match="hash_secret"):
        Settings(hits={"privacy": "hash"})


@pytest.mark.parametrize("mode", ["full", "truncate", "hash", "none"])
async def test_privacy_applies_to_store_and_json_lines(tmp_path: Path, mode: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        hits={"privacy": mode, "hash_secret": "s3cret", "jsonl_path": str(tmp_path / "h.jsonl"), "node": "n1"},
    )
    log = HitLog(settings)
    await log.open()
    try:
        for i in range(3):
            log.recorder.record(hit(T0 + i, "192.0.2.77", "casino.test"))
        await log.recorder.flush()
        stored = {h["client"] for h in (await log.store.page(Filters()))[0]}  # type: ignore[union-attr]
        stored_db = await log.store.fetch("SELECT client, net FROM clients")  # type: ignore[union-attr]
    finally:
        await log.close()
    lines = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {x["client"] for x in lines} == stored
    (value,) = stored
    expected = {"full": "192.0.2.77", "truncate": "192.0.2.0/24", "none": ""}.get(mode)
    if mode == "hash":
        assert len(value) == 32 and value == ClientPrivacy("hash", secret=b"s3cret").client("192.0.2.77")
    else:
        assert value == expected
    if mode != "full":  # the address itself is nowhere in the store
        assert all("192.0.2.77" not in c and "192.0.2.77" not in n for c, n in stored_db)


async def test_burst_is_aggregated_not_lost(tmp_path: Path) -> None:
    """A flood beyond the buffer becomes counts per (second, client, name, type, entry)."""
    store = SqliteStore(tmp_path / "h.sqlite")
    await store.open()
    rec = HitRecorder(HitsSettings(buffer_size=100), writer=HitWriter(store, ClientPrivacy("full"), "n"))
    try:
        sent = 0
        for sec in range(3):
            for i in range(4000):
                rec.record(hit(T0 + sec + i / 10000, f"192.0.2.{i % 4}", f"w{i % 5}.casino.test", listed="casino.test"))
                sent += 1
        assert rec.buffer.hits() == 100 and rec.dropped == 0
        await rec.flush()
        stats = rec.stats()
        assert stats["recorded"] + stats["aggregated"] == sent and stats["dropped"] == 0
        rows = await store.fetch("SELECT COUNT(*), SUM(cnt) FROM hits")
        assert rows[0][1] == sent  # every hit is in the store, as a row or in a count
        assert rows[0][0] <= 100 + 3 * 4 * 5  # the buffer, then one row per (second, client, name)
        assert (await store.status())["hits"] == sent
    finally:
        rec.close()
        await store.close()


async def test_what_even_aggregation_cannot_hold_is_counted_and_logged(tmp_path: Path) -> None:
    rec = HitRecorder(HitsSettings(buffer_size=100, flush_interval=0.01), stream=io.BytesIO())
    for i in range(100 + 400 + 37):  # buffer, aggregation table (4x buffer), then drops
        rec.record(hit(T0, "192.0.2.1", f"n{i}.casino.test", listed="casino.test"))
    assert rec.dropped == 37
    with capture_logs() as logs:
        await rec.flush()

        task = asyncio.create_task(rec.run())
        try:
            await until(lambda: any(e["event"] == "hits dropped" for e in logs), "the 'hits dropped' line", 15, every=0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert any(e["event"] == "hits dropped" and e["dropped"] == 37 for e in logs)
    rec.close()


async def test_a_failed_store_write_is_kept_and_retried(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.sqlite")
    await store.open()
    writer = HitWriter(store, ClientPrivacy("full"), "n")
    rec = HitRecorder(HitsSettings(), writer=writer)
    real = store.write_batch
    calls = {"n": 0}

    def flaky(batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return real(batch)

    store.write_batch = flaky  # type: ignore[method-assign]
    try:
        rec.record(hit(T0, "192.0.2.1", "a.test"))
        await rec.flush()
        assert rec.store_errors == 1 and (await store.status())["rows"] == 0
        rec.record(hit(T0 + 1, "192.0.2.1", "b.test"))
        await rec.flush()
        assert [h["name"] for h in (await store.page(Filters()))[0]] == ["b.test", "a.test"]
        assert await store.verify() == (2, None)
    finally:
        rec.close()
        await store.close()


def test_name_text_escapes_odd_bytes() -> None:
    assert name_text(b"\x03www\x06casino\x04test\x00") == "www.casino.test"
    assert name_text(b"\x03a=b\x04te.t\x00") == "a\\061b.te\\046t"
    assert name_text(b"\x00") == "."


async def test_shutdown_flush_writes_every_buffered_hit(tmp_path: Path) -> None:
    import asyncio

    settings = Settings(data_dir=tmp_path, hits={"flush_interval": 3600})
    log = HitLog(settings)
    await log.open()
    task = asyncio.create_task(log.recorder.run())
    for i in range(250):
        log.recorder.record(hit(T0 + i, "192.0.2.1", "casino.test"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        assert (await log.store.status())["hits"] == 250  # type: ignore[union-attr]
    finally:
        await log.close()




def test_csv_cells_never_start_a_formula() -> None:
    from hits.query import csv_rows

    row = {"id": 1, "time": "t", "node": "n", "client": "=cmd()", "name": "-x.casino.test", "qtype": "A",
           "listed": "casino.test", "agency": "pl-mf", "agencies": ["pl-mf"], "action": "redirect", "policy_version": 1, "count": 1}
    assert csv_rows([row]).decode().split(",")[3:5] == ["'=cmd()", "'-x.casino.test"]


def test_json_lines_fields_counts_and_odd_names() -> None:
    from tests.hits.conftest import CZ, PL_IT

    rec = HitRecorder(HitsSettings(node="n1"), stream=io.BytesIO(), privacy=ClientPrivacy("truncate"))
    odd = (T0 + 2, "198.51.100.7", b'\x04a"\\b\x04test\x00', 28, CZ, b"\x04test\x00", 8)
    batch = [hit(T0 + 0.25, "192.0.2.77", "www.casino.test", listed="casino.test"), odd]
    agg = {(int(T0) + 1, "192.0.2.77", *hit(0, "", "bet.test", 65, PL_IT)[2:]): 40}
    for _ in range(2):  # the second time from the memoised texts
        lines = [json.loads(x) for x in rec.format(batch, agg)]
        assert lines == [
            {"node": "n1", "client": "192.0.2.0/24", "qtype": "A", "agency": "pl-mf", "agencies": ["pl-mf"], "action": "redirect",
             "policy_version": 7, "ts": T0 + 0.25, "name": "www.casino.test", "listed": "casino.test", "count": 1},
            {"node": "n1", "client": "198.51.100.0/24", "qtype": "AAAA", "agency": "cz-mf", "agencies": ["cz-mf"], "action": "nxdomain",
             "policy_version": 8, "ts": T0 + 2, "name": "a\\034\\092b.test", "listed": "test", "count": 1},  # the store's text too
            {"node": "n1", "client": "192.0.2.0/24", "qtype": "HTTPS", "agency": "pl-mf", "agencies": ["pl-mf", "it-adm"], "action": "redirect",
             "policy_version": 7, "ts": float(int(T0) + 1), "name": "bet.test", "listed": "bet.test", "count": 40},
        ]
