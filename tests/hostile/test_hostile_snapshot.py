"""A damaged saved snapshot (``data_dir/snapshot.marshal``) never crashes ``betblock serve`` and
never loads as another policy: it is rejected with one clear log line and the policy is
compiled from the feed store (issue 8, item 3).

Through a real process and real files: one changed byte, a renamed table key and a half-cut file
each start a node that enforces the pushed list; many seeded bit flips of the same file are each
either rejected or load the identical policy.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from feeds import persist
from tests.fakedns import FakeDns
from tests.hostile.feednode import FeedNode, enforced_data

NAMES = [f"casino{i}.test" for i in range(200)] + ["kasyno.test"]


def _wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


@pytest.fixture(scope="module")
def enforced_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory of a node that enforced ``NAMES``, made once per module."""
    return enforced_data(tmp_path_factory.mktemp("saved"), NAMES, "kasyno.test")


@pytest.fixture
async def saved(tmp_path: Path, enforced_once: Path) -> tuple[FeedNode, bytes]:
    """A node that enforced ``NAMES`` and stopped: its data dir (a copy of ``enforced_once``)
    holds a good snapshot."""
    upstream = await FakeDns().start()
    node = FeedNode.over(enforced_once, tmp_path, upstream)
    good = node.snapshot.read_bytes()
    assert _wire("kasyno.test") in good
    return node, good


def _rejection_lines(node: FeedNode) -> list[dict[str, object]]:
    return [e for e in node.events() if "snapshot" in str(e.get("event")) and e.get("level") == "error"]


def _damage(good: bytes, how: str) -> bytes:
    if how == "one byte":
        data = bytearray(good)
        at = random.Random(8).randrange(64, len(good))
        data[at] ^= 0x5A
        return bytes(data)
    if how == "renamed key":  # the listed name becomes another of the same length
        assert good.count(_wire("kasyno.test")) == 1
        return good.replace(_wire("kasyno.test"), _wire("kasynp.test"))
    return good[: len(good) // 2]


@pytest.mark.parametrize("how", ["one byte", "renamed key", "half"])
async def test_a_damaged_snapshot_is_rejected_in_one_line_and_the_store_decides(
    saved: tuple[FeedNode, bytes], how: str
) -> None:
    node, good = saved
    node.snapshot.write_bytes(_damage(good, how))
    await node.start()
    try:
        await node.ready()
        for name in ("kasyno.test", "casino0.test", "www.casino199.test"):
            assert await node.sinkholed(name), name
        assert not await node.sinkholed("kasynp.test")
        lines = _rejection_lines(node)
        assert len(lines) == 1, node.text()
        assert "compil" in str(lines[0]) and "Traceback" not in node.text()
    finally:
        await node.stop()
    # The next run saved a good one again.
    assert persist.load(node.snapshot, persist.fingerprint(_settings(node)), time.time()) is not None


def _settings(node: FeedNode):  # type: ignore[no-untyped-def]
    from config.settings import load_settings

    return load_settings(node.cfg)


def test_seeded_bit_flips_are_rejected_or_load_the_identical_policy(saved: tuple[FeedNode, bytes]) -> None:
    node, good = saved
    fp = persist.fingerprint(_settings(node))
    now = time.time()
    path = node.snapshot
    path.write_bytes(good)
    original = persist.load(path, fp, now)
    assert original is not None and len(original.table) == len(NAMES)
    loaded = rejected = 0
    for seed in range(400):
        rnd = random.Random(seed)
        data = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(data))
            data[at] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(data))
        back = persist.load(path, fp, now)
        if back is None:  # rejected (or, for a flip in the format field, another format): compiled from the store
            rejected += 1
            continue
        loaded += 1
        assert (back.version, back.table, back.rules, back.stats) == (
            original.version, original.table, original.rules, original.stats,
        ), f"seed {seed} loaded another policy"
    assert rejected == 400 and loaded == 0
