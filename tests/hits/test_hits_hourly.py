"""Hits per agency per hour (the dashboard's 24-hour chart), on SQLite and PostgreSQL."""

from __future__ import annotations

from hits.store import HitStore
from hits.writer import HitWriter
from tests.hits.conftest import CZ, PL, PL_IT, T0, Clock, hit, write

HOUR = 3600


async def test_hits_per_agency_per_hour(store: HitStore, writer: HitWriter, clock: Clock) -> None:
    # T0 is 14:13:20 UTC; the window is the 24 whole hours that end with the current one.
    await write(writer, [hit(T0 - 30 * HOUR, "192.0.2.1", "old.test")])  # before the window
    await write(writer, [hit(T0 - 2 * HOUR, "192.0.2.1", "casino.test")] * 2 + [hit(T0 - 2 * HOUR + 5, "192.0.2.3", "x.bet.test", rule=PL_IT)])
    await write(writer, [hit(T0 - 10, "198.51.100.4", "sazka.test", rule=CZ), hit(T0 - 5, "192.0.2.1", "casino.test", rule=PL)])
    h = await store.hourly(24, now=clock())
    assert h["first_hour"] == "2026-09-20T15:00Z" and h["since"] is None
    per = {(p["hour"], p["agency"]): p["hits"] for p in h["per_agency_hour"]}
    assert per == {
        ("2026-09-21T12:00Z", "pl-mf"): 3, ("2026-09-21T12:00Z", "it-adm"): 1,
        ("2026-09-21T14:00Z", "cz-mf"): 1, ("2026-09-21T14:00Z", "pl-mf"): 1,
    }
    # Bounded: with room for the newest two rows only, the counts say from when they are complete.
    few = await store.hourly(24, now=clock(), max_rows=2)
    assert few["since"] is not None and sum(p["hits"] for p in few["per_agency_hour"]) == 2
