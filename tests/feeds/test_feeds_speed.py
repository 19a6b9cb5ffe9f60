"""The plain format is what the resolver loads at start-up: its fast path must stay fast."""

from __future__ import annotations

from dataclasses import fields

import pytest

from feeds.entry import Entry, plain_entry
from feeds.formats import plain


def test_plain_entry_equals_the_dataclass_constructor() -> None:
    for args in [("casino.example", 1, False), ("casino.example", 7, True)]:
        built = plain_entry(*args)
        assert built == Entry(*args)
        # Every field is set: reading one that plain_entry forgot would raise AttributeError.
        assert [getattr(built, f.name) for f in fields(Entry)] == [getattr(Entry(*args), f.name) for f in fields(Entry)]
    with pytest.raises(AttributeError):
        plain_entry("a.example", 1).name = "b.example"  # type: ignore[misc]


def test_clean_lines_never_reach_the_full_normaliser(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(raw: str):  # type: ignore[no-untyped-def]
        calls.append(raw)
        return ("slow.example", False, False)

    monkeypatch.setattr(plain, "normalize_detail", counting)
    result = plain.parse(b"casino.example\nBET-365.Example\nx_y.casino.example\n*.slow\n")
    assert calls == ["*.slow"]
    assert [e.name for e in result.entries] == ["casino.example", "bet-365.example", "x_y.casino.example", "slow.example"]


@pytest.mark.slow
def test_a_million_lines_parse_without_rejects() -> None:
    # Correctness only: the speed figure is a benchmark's job (a timed assertion fails on a
    # loaded machine without saying anything about the code).
    tlds = ["com", "net", "bet", "example", "pl", "it", "cz", "ch"]
    data = "\n".join(f"mirror-{i}.casino-{i % 977}.{tlds[i % 8]}" for i in range(1_000_000)).encode()
    result = plain.parse(data)
    assert len(result.entries) == 1_000_000 and result.rejects == []
