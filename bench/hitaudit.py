#!/usr/bin/env python3
"""What the full ``hits verify`` costs next to the chain walk alone (issue 8, item 7): a SQLite
store of ``--rows`` hits in 5,000-row batches, then the chain walk (``HitStore.verify``) and the
full audit (chain, derived tables) on it, CPU seconds of this process, twice each. A benchmark,
not a test: run by hand.

    .venv/bin/python bench/hitaudit.py [--rows 500000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hits.audit import audit  # noqa: E402
from hits.privacy import ClientPrivacy  # noqa: E402
from hits.sqlite import SqliteStore  # noqa: E402
from hits.writer import HitWriter  # noqa: E402
from tests.hits.conftest import T0, hit  # noqa: E402


async def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        st = SqliteStore(Path(d) / "hits.sqlite")
        await st.open()
        w = HitWriter(st, ClientPrivacy("full"), "bench")
        for b in range(rows // 5000):
            batch = [hit(T0 + b * 10 + i / 2000, f"10.{b % 5}.{i % 250}.{i % 7}", f"x{i % 3000}.bad{b % 50}.test",
                         listed=f"bad{b % 50}.test") for i in range(5000)]
            await asyncio.to_thread(w.write, batch, {})
        for _ in range(2):
            t = time.process_time()
            await st.verify()
            walk = time.process_time() - t
            t = time.process_time()
            report = await audit(st)
            full = time.process_time() - t
            print(f"{rows} rows: chain walk {walk:.2f} s CPU, full audit {full:.2f} s CPU, {full / walk:.2f}x (ok={report.ok})")
        await st.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=500_000)
    asyncio.run(main(p.parse_args().rows))
