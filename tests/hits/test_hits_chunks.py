"""JSON lines are written in slices: a batch larger than one slice, with aggregated rows after
a full buffer, comes out whole, in order, with every count."""

from __future__ import annotations

import io
import json

from config.settings import HitsSettings
from feeds.snapshot import Rule
from hits.recorder import _CHUNK, HitRecorder

RULE = Rule(id=1, agencies=("pl-mf",), agency_name="PL", action="nxdomain")


def test_a_batch_larger_than_a_slice_is_written_whole() -> None:
    out = io.BytesIO()
    n = _CHUNK * 2 + 123
    rec = HitRecorder(HitsSettings(buffer_size=n, jsonl_path="-", store="none"), stream=out)
    for i in range(n):
        name = b"\x06n%05d\x04test\x00" % i
        rec.record((1_790_000_000.0 + i / 1000, "192.0.2.1", name, 1, RULE, name, 7))
    for _ in range(5):  # the buffer is full: these are aggregated into one row
        rec.record((1_790_000_100.5, "192.0.2.9", b"\x03www\x04bad1\x04test\x00", 1, RULE, b"\x04bad1\x04test\x00", 7))
    rec.write(*rec.take())
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == n + 1
    assert [x["name"] for x in lines[:3]] == ["n00000.test", "n00001.test", "n00002.test"]
    assert lines[n - 1]["name"] == "n%05d.test" % (n - 1)
    assert lines[-1]["name"] == "www.bad1.test" and lines[-1]["count"] == 5
    assert sum(x["count"] for x in lines) == n + 5
    assert rec.recorded == n and rec.aggregated_count == 5
