"""Fixtures for the hit log: both stores (real SQLite file, real PostgreSQL schema), a clock.

PostgreSQL: ``BETBLOCK_TEST_POSTGRES_DSN`` (default the local server's ``test`` database); each
test gets its own schema, dropped afterwards. Without a reachable server the PostgreSQL cases
are skipped, unless ``BETBLOCK_TEST_POSTGRES_REQUIRED`` is set (CI), then they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from feeds.compile import to_wire
from feeds.snapshot import Rule
from hits.privacy import ClientPrivacy
from hits.store import HitStore
from hits.writer import HitWriter

PG_DSN = os.environ.get("BETBLOCK_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z: every test's clock starts here

PL = Rule(1, ("pl-mf",), "PL", "redirect", ipv4=("192.0.2.1",))
PL_IT = Rule(2, ("pl-mf", "it-adm"), "PL", "redirect", ipv4=("192.0.2.1",))
CZ = Rule(3, ("cz-mf",), "CZ", "nxdomain")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hit(ts: float, client: str, name: str, qtype: int = 1, rule: Rule = PL, listed: str | None = None, version: int = 7) -> tuple[Any, ...]:
    """A hit as the hot path hands it over."""
    return (ts, client, to_wire(name.encode()), qtype, rule, to_wire((listed or name).encode()), version)


async def pg_available() -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


async def need_pg() -> None:
    if not await pg_available():
        if os.environ.get("BETBLOCK_TEST_POSTGRES_REQUIRED"):
            pytest.fail(f"PostgreSQL required (BETBLOCK_TEST_POSTGRES_REQUIRED) but not reachable at {PG_DSN}")
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")


def pg_schema() -> str:
    return f"t_hits_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


StoreFactory = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[HitStore]:
    st: HitStore
    if request.param == "sqlite":
        from hits.sqlite import SqliteStore

        st = SqliteStore(tmp_path / "hits.sqlite", clock=clock)
    else:
        await need_pg()
        from hits.postgres import PostgresStore

        st = PostgresStore(PG_DSN, pg_schema(), clock=clock)
    await st.open()
    try:
        yield st
    finally:
        await st.close()
        if request.param == "postgres":
            await st.drop_schema()  # type: ignore[attr-defined]


@pytest.fixture
def writer(store: HitStore) -> HitWriter:
    return HitWriter(store, ClientPrivacy("full"), "node-a")


async def write(w: HitWriter, hits: list[tuple[Any, ...]], agg: dict[tuple[Any, ...], int] | None = None) -> int:
    """One flush, in a thread as the recorder does it."""
    return await asyncio.to_thread(w.write, hits, agg or {})
