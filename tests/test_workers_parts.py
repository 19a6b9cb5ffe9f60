"""The parts of the worker processes that need no process: the policy hand-over file, the
worker's hit batches and their way back into the hit recorder, and the sum of counters."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from betblock import channel, handover
from betblock.worker import HitBatcher
from betblock.workers import Workers
from config.settings import AgencySettings, Settings
from feeds.compile import AgencyList, compile_lists, to_wire
from feeds.snapshot import PolicySnapshot
from hits.batch import FlatHits
from hits.recorder import HitRecorder
from resolver import stats


def _snapshot(version: int, names: list[str]) -> PolicySnapshot:
    agency = AgencySettings(id="pl-mf", name="PL", action="nxdomain")
    return compile_lists([AgencyList(agency, [to_wire(n.encode()) for n in names])], [], 300, version=version).snapshot


def test_a_snapshot_survives_the_hand_over_file(tmp_path: Path) -> None:
    snap = _snapshot(7, [f"n{i}.bet" for i in range(70_000)] + ["casino.test"])  # more than one slice
    path = handover.write(snap, tmp_path / "w")
    back = handover.read(path)
    assert back.version == 7 and back.table == snap.table and back.rules == snap.rules and back.stats == snap.stats
    older = handover.write(_snapshot(6, ["a.test"]), tmp_path / "w")
    handover.prune(tmp_path / "w", path)
    assert path.exists() and not older.exists()


async def test_hit_batches_are_bounded_counted_and_sent_with_rule_ids(tmp_path: Path) -> None:
    snap = _snapshot(5, ["casino.test"])
    rule = snap.rules[1]
    assert rule is not None
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    their_reader, _their_writer = await asyncio.open_unix_connection(sock=b)
    batcher = HitBatcher(True, 100)
    batcher.writer = writer
    for i in range(100):
        batcher.record((1000.0 + i / 1000, "127.0.0.1", b"\x06casino\x04test\x00", 1, rule, b"\x06casino\x04test\x00", 5))
    for _ in range(3):  # over the bound: counted per second, not held one by one
        batcher.record((1001.5, "127.0.0.2", b"\x06casino\x04test\x00", 28, rule, b"\x06casino\x04test\x00", 5))
    batcher.flush()
    await writer.drain()
    msg = await channel.receive(their_reader)
    assert msg is not None and msg[0] == "hits"
    _, flat, agg, dropped = msg
    assert len(flat) == 700 and set(flat[4::7]) == {rule.id} and dropped == 0
    assert agg == {(1001, "127.0.0.2", b"\x06casino\x04test\x00", 28, rule.id, b"\x06casino\x04test\x00", 5): 3}
    assert batcher.sent == 103 and not batcher.buffer and not batcher.aggregated

    # The control plane maps the ids back to its rules and records the batch.
    settings = Settings(data_dir=tmp_path / "var")
    recorder = HitRecorder(settings.hits)
    workers = Workers(settings, recorder, 1)
    workers.rules[5] = snap.rules
    one = list(flat[:7])
    workers._hits(flat, agg, dropped)
    assert recorder.buffer.hits() == 100 and set(recorder.buffer[4::7]) == {rule}
    assert list(recorder.aggregated.values()) == [3] and next(iter(recorder.aggregated))[4] is rule
    workers.rules.clear()
    workers._hits(one, {}, 0)  # a version it no longer knows: counted as lost, never raised
    assert recorder.dropped == 1 and workers.unmapped == 1
    writer.close()
    reader.feed_eof()


def test_record_batch_appends_while_there_is_room_and_counts_beyond() -> None:
    settings = Settings()
    recorder = HitRecorder(settings.hits.model_copy(update={"buffer_size": 100}))
    hit = [1000.5, "127.0.0.1", b"\x01a\x00", 1, None, b"\x01a\x00", 1]
    recorder.record_batch(FlatHits(hit * 150), {}, dropped=2)
    assert recorder.buffer.hits() == 100 and sum(recorder.aggregated.values()) == 50 and recorder.dropped == 2


def test_counters_of_several_workers_add_up() -> None:
    one = {"counters": {"answers": [1, 2], "cache_hits": 3, "upstream_failures": {"a": 1}, "latency_sum": 0.5}, "gauges": {"inflight": 1}}
    two = {"counters": {"answers": [10, 20, 30], "cache_hits": 4, "upstream_failures": {"a": 2, "b": 1}, "latency_sum": 0.25}, "gauges": {"inflight": 2}}
    total = stats.merge([one, two])
    assert total == {
        "counters": {"answers": [11, 22, 30], "cache_hits": 7, "upstream_failures": {"a": 3, "b": 1}, "latency_sum": 0.75},
        "gauges": {"inflight": 3},
    }


def test_the_control_plane_shows_the_workers_sum_in_its_idle_counters(tmp_path: Path) -> None:
    from betblock.app import App

    app = App(Settings(data_dir=tmp_path / "var"), handle_signals=False)
    total = {
        "counters": {
            "answers": [5, 6, 7], "cache_hits": 3, "cache_misses": 4, "upstream_failures": {"192.0.2.1:53": 2},
            "upstream_ignored": 1, "latency_counts": [1] * 13, "latency_sum": 0.5, "tcp_rejected": 1, "tcp_evicted": 2,
            "tcp_unread": 3, "observed": 0,
        },
        "gauges": {},
    }
    stats.show(total, app.pipeline, app.server)
    assert app.pipeline.counters.counts[:3] == [5, 6, 7] and (app.cache.hits, app.cache.misses) == (3, 4)
    assert app.upstream.failures["192.0.2.1:53"] == 2 and app.pipeline.latency.sum == 0.5
    assert (app.server.tcp.rejected, app.server.tcp.evicted, app.server.tcp.unread) == (1, 2, 3)
