"""Fixtures: a fake authoritative upstream and betblock nodes on 127.0.0.1, in-process."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir

from betblock.app import App
from config.settings import Settings
from tests.fakedns import FakeDns
from tests.procutil import START_SECONDS

# A test run writes nothing into the repository: Hypothesis keeps no example database, and its
# caches (constants, Unicode tables) go to a temporary directory instead of ./.hypothesis.
# `betblock serve` started by a test answers DNS in its own process (dns.workers = 0), as the
# in-process App does: most tests are about what is answered, not by which process, and a worker
# per CPU in every such test would cost the suite minutes of interpreter starts. The worker
# processes of the default configuration have their own tests (tests/test_workers.py), which
# start `betblock serve` without this variable.
os.environ.setdefault("BETBLOCK_DNS__WORKERS", "0")

set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / f"betblock-hypothesis-{os.getuid()}"))
hypothesis_settings.register_profile("betblock", database=None)
hypothesis_settings.load_profile("betblock")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeDns]:
    fake = FakeDns()
    fake.add("allowed.test", "A", "192.0.2.10", ttl=300)
    fake.add("allowed.test", "AAAA", "2001:db8::10", ttl=300)
    fake.add("short.test", "A", "192.0.2.11", ttl=5)
    fake.add("alias.test", "CNAME", "www.casino.test", ttl=300)
    fake.add("www.casino.test", "A", "192.0.2.66", ttl=300)
    fake.add("clean-alias.test", "CNAME", "allowed.test", ttl=300)
    await fake.start()
    yield fake
    await fake.stop()


NodeFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def node(tmp_path: Path, upstream: FakeDns) -> AsyncIterator[NodeFactory]:
    """Start betblock nodes: ``await node(lists={"pl": ["casino.test"]}, **settings_overrides)``."""
    apps: list[tuple[App, asyncio.Task[None]]] = []

    async def start(
        lists: dict[str, list[str]] | None = None,
        agencies: list[dict[str, Any]] | None = None,
        upstreams: list[str] | None = None,
        http_mounts: list[Any] | None = None,
        **overrides: Any,
    ) -> App:
        lists = {"pl-mf": ["casino.test"]} if lists is None else lists
        agency_cfg = []
        for i, (agency_id, names) in enumerate(lists.items()):
            path = tmp_path / f"{agency_id}.txt"
            path.write_text("\n".join(names) + "\n")
            cfg: dict[str, Any] = {"id": agency_id, "name": agency_id.upper(), "lists": [str(path)], "precedence": 10 - i}
            for extra in agencies or []:
                if extra.get("id") == agency_id:
                    cfg.update(extra)
            cfg.setdefault("action", "nxdomain")
            agency_cfg.append(cfg)
        data: dict[str, Any] = {
            "dns": {"listen": ["127.0.0.1:0"]},
            "http": {"listen": "127.0.0.1:0"},
            "warning_page": {"listen": "127.0.0.1:0"},
            "upstream": {"servers": upstreams or [upstream.address], "deadline": 2.0, "attempt_timeout": 0.5},
            "agencies": agency_cfg,
            "hits": {"jsonl_path": str(tmp_path / "hits.jsonl"), "flush_interval": 0.2},
            "base_dir": tmp_path,
            "data_dir": tmp_path / "var",  # the hit store and other state, per test
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        app = App(Settings(**data), handle_signals=False, http_mounts=http_mounts or ())
        task = asyncio.create_task(app.run())
        ready = asyncio.create_task(app.ready.wait())
        # A failed start ends the task (raised below at once); the deadline bounds only a hung
        # one, and is the one a starting process gets (procutil.START_SECONDS): on a loaded
        # machine two test workers and other runs share the cores.
        done, _ = await asyncio.wait({task, ready}, timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # start-up failed: raise its error
        assert ready in done, "betblock did not become ready"
        apps.append((app, task))
        return app

    yield start
    for app, task in apps:
        app.stop()
        await asyncio.wait_for(task, 10)


def port_of(app: App) -> int:
    return app.server.bound[0][1]
