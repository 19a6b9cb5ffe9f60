"""A ``betblock serve`` process over a data directory that outlives it, for the tests that
damage the feed store and the saved snapshot between runs.

Owns the node's configuration (one push agency, no hit log), starting and stopping the process,
collecting its log lines (stderr, JSON) while it runs, and the few HTTP and DNS calls the tests
make. Every wait polls a condition under a deadline. ``enforced_data`` runs a node once to make
the data directory of a list enforced, for a module's tests to damage copies of
(``FeedNode.over``): the configuration's paths are the node's own, not the data's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message

from config.auth import sha256_hex
from tests.fakedns import FakeDns
from tests.procutil import START_SECONDS, node_toml, start_serve, until

SINKHOLE = "198.51.100.77"
ADMIN = "admin-token-for-hostile-tests-0123456789abcdef"
AGENCY_TOKEN = "pl-token-for-hostile-tests-0123456789abcdef"
DEADLINE = START_SECONDS  # a start, and each wait after it (see procutil.START_SECONDS)


class FeedNode:
    """One node; ``start`` runs it, ``stop`` ends it with SIGTERM; the data dir stays."""

    def __init__(self, tmp_path: Path, upstream: FakeDns) -> None:
        self.tmp_path = tmp_path
        self.port = 0  # DNS: the server picks a free port at each start (read from its log)
        self.cfg = tmp_path / "betblock.toml"
        toml = node_toml(tmp_path, 0, upstream, f"""[hits]
store = "none"
[[agencies]]
id = "pl-mf"
action = "redirect"
redirect_ipv4 = ["{SINKHOLE}"]
token_sha256 = "{sha256_hex(AGENCY_TOKEN)}"
churn_limit = 1000.0  # every push is applied: these tests are about the files, not the guardrails
sources = [{{kind = "push", format = "plain"}}]
""", http=f'admin_token = "{ADMIN}"\n')
        self.cfg.write_text(toml)
        self.data = tmp_path / "var"
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self.http_port: int | None = None

    @classmethod
    def over(cls, data: Path, tmp_path: Path, upstream: FakeDns) -> FeedNode:
        """A node in ``tmp_path`` (not started) over a copy of the data directory ``data``."""
        node = cls(tmp_path, upstream)
        shutil.copytree(data, node.data)
        return node

    @property
    def store(self) -> Path:
        return self.data / "feeds.sqlite"

    @property
    def snapshot(self) -> Path:
        return self.data / "snapshot.marshal"

    async def start(self) -> None:
        self.lines = []
        self.http_port = None
        self.port = 0
        self.proc = await start_serve(self.cfg, "--log-format", "json")
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            doc = _json(line)
            if doc.get("event") == "http listening" and self.http_port is None:
                self.http_port = int(doc["port"])  # the API's listener opens first
            if doc.get("event") == "listening" and not self.port:
                self.port = int(doc["port"])

    def events(self) -> list[dict[str, Any]]:
        return [doc for doc in map(_json, self.lines) if doc]

    def text(self) -> str:
        return "\n".join(self.lines)

    async def ready(self) -> None:
        """Until the node logs ``ready``; fails when it exits first."""
        def up() -> bool:
            assert self.proc is not None
            assert self.proc.returncode is None, f"the node exited with {self.proc.returncode}:\n{self.text()}"
            return any(e.get("event") == "ready" for e in self.events())

        await until(up, "the node to get ready", DEADLINE, log=self.text)

    async def settle(self) -> int | None:
        """None once the node is ready, or the code it exited with before that."""
        deadline = time.monotonic() + DEADLINE
        assert self.proc is not None and self._reader is not None
        while not any(e.get("event") == "ready" for e in self.events()):
            if self.proc.returncode is not None:
                await asyncio.wait_for(self._reader, DEADLINE)
                return self.proc.returncode
            assert time.monotonic() < deadline, f"the node neither got ready nor exited:\n{self.text()}"
            await asyncio.sleep(0.05)
        return None

    async def exit_code(self) -> int:
        """The code the node exits with by itself (within the deadline)."""
        assert self.proc is not None and self._reader is not None
        code = await asyncio.wait_for(self.proc.wait(), DEADLINE)
        await asyncio.wait_for(self._reader, DEADLINE)
        return code

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        code = await self.exit_code()
        assert code == 0, self.text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def ask(self, name: str) -> dns.message.Message:
        return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=2.0)

    async def sinkholed(self, name: str) -> bool:
        r = await self.ask(name)
        return bool(r.answer) and r.answer[0][0].address == SINKHOLE

    async def http(self, method: str, path: str, *, token: str = ADMIN, data: bytes | None = None) -> tuple[int, Any]:
        assert self.http_port is not None
        async with aiohttp.ClientSession() as s:
            async with s.request(
                method, f"http://127.0.0.1:{self.http_port}{path}", data=data,
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                body = await r.text()
                try:
                    return r.status, json.loads(body)
                except ValueError:
                    return r.status, body

    async def feeds_when(self, holds: Callable[[int, Any], bool], what: str) -> Any:
        """``GET /v1/feeds`` until ``holds(status, body)``, within the deadline; that body."""
        got: Any = None

        async def asked() -> bool:
            nonlocal got
            status, got = await self.http("GET", "/v1/feeds")
            return holds(status, got)

        await until(asked, what, DEADLINE, log=self.text)
        return got

    async def push(self, names: list[str]) -> tuple[int, Any]:
        return await self.http("PUT", "/v1/feeds/pl-mf", token=AGENCY_TOKEN, data=("\n".join(names) + "\n").encode())

    async def until_sinkholed(self, name: str) -> None:
        async def sinkholed() -> bool:
            try:
                return await self.sinkholed(name)
            except dns.exception.Timeout:
                return False

        await until(sinkholed, f"{name} to be sinkholed", DEADLINE, log=self.text)

    async def enforce(self, names: list[str], probe: str) -> None:
        """Run the node until it enforces ``names`` (pushed, applied, ``probe`` sinkholed), then
        stop it: its data dir holds the store, the store's marker and the saved snapshot."""
        await self.start()
        try:
            await self.ready()
            status, body = await self.push(names)
            assert status == 200 and body["status"] == "applied", body
            await self.until_sinkholed(probe)
        finally:
            await self.stop()


def enforced_data(home: Path, names: list[str], probe: str) -> Path:
    """The data directory of a node in ``home`` that enforced ``names`` (``FeedNode.enforce``)
    and stopped, made in an event loop of its own (for a module-scoped fixture)."""

    async def run() -> Path:
        upstream = await FakeDns().start()
        try:
            node = FeedNode(home, upstream)
            await node.enforce(names, probe)
            return node.data
        finally:
            await upstream.stop()

    return asyncio.run(run())


def _json(line: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
