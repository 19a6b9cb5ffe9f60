"""The memory-mapped policy table (feeds.table): the same answers as the snapshot it was
written from, every rule kept, damaged files refused, one file read by two processes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import AgencySettings
from feeds.compile import AgencyList, compile_snapshot, to_wire
from feeds.snapshot import ALLOW, PolicySnapshot, Rule, pair
from feeds.table import TableDamaged, open_table, write_table

ROOT = Path(__file__).resolve().parent.parent
RULES: tuple[Rule | None, ...] = (
    None,
    Rule(1, ("pl",), "Poland MF", "nxdomain"),
    Rule(2, ("it", "pl"), "Italy ADM", "redirect", ipv4=("192.0.2.1", "192.0.2.2"), ipv6=("2001:db8::1",), ttl=60),
    Rule(3, ("rpz",), "RPZ", "tcp-only", ttl=5),
)


def w(name: str) -> bytes:
    return to_wire(name.encode())


def generated(seed: int = 7, n: int = 3000) -> PolicySnapshot:
    """A table like a compiled one: subtree rules, ALLOW entries, (self, below) pairs (negative
    values), deep names and many names sharing suffixes."""
    rng = random.Random(seed)
    table: dict[bytes, int] = {}
    for i in range(n):
        depth = rng.choice((2, 2, 3, 4, 7))
        labels = [f"l{rng.randrange(40)}" for _ in range(depth - 2)] + [f"site{i % 700}", rng.choice(("bet", "com", "pl"))]
        value = rng.choice((1, 1, 1, 2, 3, ALLOW, pair(1, 0), pair(0, 2), pair(3, 1), pair(2, 3)))
        table[w(".".join(labels))] = value
    table[w("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "q" * 61)] = 2  # 255 bytes in wire format
    return PolicySnapshot(version=42, table=table, rules=RULES, stats={"names": len(table), "unblocked": 3})


def queries(snap: PolicySnapshot, seed: int = 8) -> list[bytes]:
    """Listed names, names below them, their parents and names that are nowhere."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for name in list(snap.table)[:1500]:
        out += [name, w("www") + name, w("a.b") + name, name[name[0] + 1 :]]
    out += [w(f"nowhere{i}.example.org") for i in range(500)]
    out += [w(f"l{rng.randrange(40)}.site{rng.randrange(900)}.bet") for _ in range(500)]
    return [q for q in out if q != b"\0"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[PolicySnapshot, Path]:
    snap = generated()
    path = tmp_path_factory.mktemp("table") / "policy.table"
    write_table(snap, path)
    return snap, path


def test_round_trip_answers_as_the_snapshot(written: tuple[PolicySnapshot, Path]) -> None:
    snap, path = written
    got = open_table(path)
    assert got.version == 42 and got.stats == snap.stats and len(got) == len(snap)
    assert got.rules == snap.rules  # every rule, every field
    assert any(v < 0 for v in snap.table.values()) and ALLOW in snap.table.values()
    for name, value in snap.table.items():
        assert got.table.get(name) == value
        assert got.table[name] == value and name in got.table
    for q in queries(snap):
        assert got.match(q) == snap.match(q), q
        assert got.decider(q) == snap.decider(q), q
        assert got.table.get(q) == snap.table.get(q)
    assert dict(got.table.items()) == snap.table
    assert sorted(got.table) == sorted(snap.table)
    assert sorted(e.name for e in got.entries()) == sorted(snap.table)


def test_get_has_the_dicts_answers_for_odd_keys(written: tuple[PolicySnapshot, Path]) -> None:
    snap, path = written
    table = open_table(path).table
    name = next(iter(snap.table))
    for odd in (b"", b"\0", name[:-1], name + b"\0", name + b"\3com\0", name.upper(), b"\xff" * 300):
        assert table.get(odd) is None and odd not in table
        assert table.get(odd, -5) == -5
    with pytest.raises(KeyError):
        table[b"\3not\4here\0"]


def test_a_compiled_snapshot_round_trips(tmp_path: Path) -> None:
    agencies = [
        AgencySettings(id="a", name="A", precedence=1, action="nxdomain"),  # type: ignore[arg-type]
        AgencySettings(id="b", name="B", precedence=2, action="redirect", redirect_ipv4=["192.0.2.9"]),  # type: ignore[arg-type]
    ]
    lists = [AgencyList(agencies[0], [w("bad.test"), w("x.bad.test"), w("both.test")]),
             AgencyList(agencies[1], [w("both.test"), w("other.test")])]
    snap = compile_snapshot(lists, [w("help.bad.test")], 300)
    write_table(snap, tmp_path / "t")
    got = open_table(tmp_path / "t")
    assert got.rules == snap.rules and got.stats == snap.stats and got.version == snap.version
    assert got == snap  # every field of the snapshot, whatever fields it has, the table by its items
    for q in ("bad.test", "y.x.bad.test", "help.bad.test", "z.help.bad.test", "both.test", "a.other.test", "test", "ok.test"):
        assert got.match(w(q)) == snap.match(w(q))


def test_empty_snapshot(tmp_path: Path) -> None:
    write_table(PolicySnapshot(version=1, table={}, rules=(None,)), tmp_path / "t")
    got = open_table(tmp_path / "t")
    assert len(got.table) == 0 and got.table.get(w("a.test")) is None and got.match(w("a.test")) is None
    assert list(got.table.items()) == []


def _colliding_names() -> tuple[bytes, bytes]:
    """Two wire names with the same CRC-32 (found by a birthday search, deterministic)."""
    from zlib import crc32

    # random labels: names that differ only in a few nearby bytes never collide (a CRC
    # detects every burst of up to 32 bits), so counting up would take long
    rng = random.Random(0)
    seen: dict[int, bytes] = {}
    while True:
        name = b"\x0c" + bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=12)) + b"\x03bet\x00"
        other = seen.setdefault(crc32(name), name)
        if other != name:
            return other, name


def test_a_hash_collision_never_blocks_the_other_name(tmp_path: Path) -> None:
    a, b = _colliding_names()
    write_table(PolicySnapshot(version=1, table={a: 1}, rules=RULES), tmp_path / "one")
    one = open_table(tmp_path / "one")
    assert one.table.get(a) == 1 and one.table.get(b) is None and one.match(b) is None
    write_table(PolicySnapshot(version=2, table={a: 1, b: 2, w("c.bet"): 3}, rules=RULES), tmp_path / "both")
    both = open_table(tmp_path / "both")
    assert (both.table.get(a), both.table.get(b)) == (1, 2)


def test_a_swap_leaves_the_open_mapping_on_its_version(tmp_path: Path) -> None:
    path = tmp_path / "policy.table"
    write_table(PolicySnapshot(version=1, table={w("a.bet"): 1}, rules=RULES), path)
    old = open_table(path)
    write_table(PolicySnapshot(version=2, table={w("b.bet"): 2}, rules=RULES), path)
    new = open_table(path)
    assert (old.version, old.table.get(w("a.bet")), old.table.get(w("b.bet"))) == (1, 1, None)
    assert (new.version, new.table.get(w("a.bet")), new.table.get(w("b.bet"))) == (2, None, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.table"]  # no temporary left


# -- damage -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[PolicySnapshot, bytes]:
    snap = generated(seed=3, n=200)
    path = tmp_path_factory.mktemp("small") / "t"
    write_table(snap, path)
    return snap, path.read_bytes()


def _same_or_refused(snap: PolicySnapshot, data: bytes, path: Path) -> None:
    path.write_bytes(data)
    try:
        got = open_table(path)
    except TableDamaged:
        return
    for q in queries(snap, seed=1)[:400]:  # opened: then it must answer exactly as before
        assert got.match(q) == snap.match(q)
    assert got.rules == snap.rules


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_flipped_bit_is_refused_or_changes_nothing(small: tuple[PolicySnapshot, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    snap, raw = small
    pos = data.draw(st.integers(0, len(raw) - 1), "position")
    bit = data.draw(st.integers(0, 7), "bit")
    damaged = bytearray(raw)
    damaged[pos] ^= 1 << bit
    _same_or_refused(snap, bytes(damaged), tmp_path_factory.mktemp("flip") / "t")


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_truncated_or_extended_file_is_refused(small: tuple[PolicySnapshot, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    snap, raw = small
    cut = data.draw(st.integers(0, len(raw) - 1), "length")
    path = tmp_path_factory.mktemp("cut") / "t"
    path.write_bytes(raw[:cut])
    with pytest.raises(TableDamaged):
        open_table(path)
    path.write_bytes(raw + data.draw(st.binary(min_size=1, max_size=16), "tail"))
    with pytest.raises(TableDamaged):
        open_table(path)


def test_every_single_bit_flip_in_the_header_is_refused(small: tuple[PolicySnapshot, bytes], tmp_path: Path) -> None:
    snap, raw = small
    for pos in range(72):
        for bit in range(8):
            damaged = bytearray(raw)
            damaged[pos] ^= 1 << bit
            (tmp_path / "t").write_bytes(bytes(damaged))
            with pytest.raises(TableDamaged):
                open_table(tmp_path / "t")


def test_not_a_table(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"not a table at all, but long enough to hold a header of 72 bytes..........")
    with pytest.raises(TableDamaged, match="bad magic"):
        open_table(tmp_path / "t")


# -- processes ----------------------------------------------------------------------------

CHILD = """
import json, sys
from feeds.table import open_table
snap = open_table(__import__("pathlib").Path(sys.argv[1]))
names = [bytes.fromhex(n) for n in json.load(sys.stdin)]
out = []
for n in names:
    m = snap.match(n)
    out.append(None if m is None else [m.rule.id, m.listed.hex(), m.offset])
maps = open("/proc/self/maps").read()
print(json.dumps({"version": snap.version, "answers": out, "mapped": sys.argv[1] in maps}))
"""


def test_two_processes_read_the_same_file(written: tuple[PolicySnapshot, Path]) -> None:
    snap, path = written
    qs = queries(snap)[:2000]
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
        for _ in range(2)
    ]
    outs = [c.communicate(json.dumps([q.hex() for q in qs]), timeout=120)[0] for c in children]
    assert all(c.returncode == 0 for c in children)
    want = [None if (m := snap.match(q)) is None else [m.rule.id, m.listed.hex(), m.offset] for q in qs]
    assert sum(a is not None for a in want) > 300
    for out in outs:
        got = json.loads(out)
        assert got == {"version": 42, "answers": want, "mapped": True}
