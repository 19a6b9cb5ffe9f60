"""Helpers for tests that run `betblock serve` as a real process on 127.0.0.1.

Owns the common part of such a node's TOML (state in tmp, DNS on a chosen port, HTTP and the
warning page on free ports, the fake upstream), starting the process, running a `betblock`
command, and waiting with a deadline: for a node's first answer, or for any condition (``until``:
polling a condition, not sleeping for one).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.query

from tests.fakedns import FakeDns


def free_port() -> int:
    """A port free for both UDP and TCP at the time of asking (DNS binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def node_toml(tmp_path: Path, port: int, upstream: FakeDns, rest: str = "", *, http: str = "", warning_page: bool = True) -> str:
    """A node's config: the shared sections, then ``rest`` (hits, policy, agencies...). ``http``:
    more lines for the [http] section (a token, a timeout); without ``warning_page`` the warning
    page is off (one listener fewer)."""
    page = 'listen = "127.0.0.1:0"' if warning_page else "enabled = false"
    return f"""
data_dir = "{tmp_path / 'var'}"
[dns]
listen = ["127.0.0.1:{port}"]
[http]
listen = "127.0.0.1:0"
{http}[warning_page]
{page}
[upstream]
servers = ["{upstream.address}"]
{rest}"""


def one_agency(action: str | None = "nxdomain") -> str:
    """The TOML of the one agency most process tests need: pl-mf, listing ``list.txt`` (beside
    the config), with ``action`` (None: the default action)."""
    return '[[agencies]]\nid = "pl-mf"\n' + (f'action = "{action}"\n' if action else "") + 'lists = ["list.txt"]\n'


def write_node(
    tmp_path: Path, upstream: FakeDns, rest: str = "", *, names: str = "bad.test", action: str | None = "nxdomain", http: str = "",
) -> Path:
    """Write ``betblock.toml`` for a node whose one agency lists ``names`` (``one_agency``), with
    ``rest`` (hits, policy...) and ``http`` as in ``node_toml``; its path."""
    (tmp_path / "list.txt").write_text(names + "\n")
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(node_toml(tmp_path, 0, upstream, rest + one_agency(action), http=http))
    return cfg


async def until(
    cond: Callable[[], bool | Awaitable[bool]], what: str, seconds: float = 30.0, *,
    log: Callable[[], str] | None = None, every: float = 0.05,
) -> None:
    """Poll ``cond`` (a plain or an async function) until it holds; fail after ``seconds`` naming
    ``what``, with ``log()`` (a node's log) when given."""
    deadline = time.monotonic() + seconds
    while True:
        held = cond()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}" + (f"\n{log()}" if log is not None else ""))
        await asyncio.sleep(every)  # between polls of the condition, not instead of it


async def betblock(*args: str, seconds: float = 60.0, merge_stderr: bool = False) -> tuple[int, str, str]:
    """Run ``betblock ARGS...`` (this interpreter, ``-m betblock.cli``): exit code, stdout and
    stderr (with ``merge_stderr``, both in the one text and stderr empty)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "betblock.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), seconds)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), (err or b"").decode()


async def start_serve(cfg: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def first_answer(port: int, name: str, seconds: float = 20.0) -> dns.message.Message:
    """The first answer the starting node gives to ``name`` (A), within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.2)
        except (dns.exception.Timeout, dns.query.BadResponse):
            # BadResponse: a late answer to an earlier probe reached a new probe socket that
            # the kernel gave the same ephemeral port; the probe only waits for readiness.
            if time.monotonic() > deadline:
                raise


class Serve:
    """A running `betblock serve` and the ports it bound (read from its log, so every listener
    can be configured on port 0: no port is picked by the test and raced for)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []  # every log line so far (stderr, JSON)
        self.dns_port = 0
        self.http_port = 0
        self.warning_port = 0
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, cfg: Path, *extra: str, seconds: float = 30.0, preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Serve:
        """Start the node and wait, within ``seconds``, for its "ready" log line."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg), *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=preexec_fn, env=env,
        )
        node = cls(proc)
        try:
            async with asyncio.timeout(seconds):
                while not await node._line():
                    pass
        except BaseException:
            await node.stop()
            raise
        node._drain = asyncio.create_task(node._drain_rest())  # a full pipe would block the node
        return node

    async def _line(self) -> bool:
        """Read one log line; True at the "ready" line."""
        assert self.proc.stderr is not None
        raw = await self.proc.stderr.readline()
        if not raw:
            await self.proc.wait()
            raise AssertionError(f"betblock serve exited with {self.proc.returncode}:\n" + "\n".join(self.lines))
        line = raw.decode(errors="replace").rstrip("\n")
        self.lines.append(line)
        try:
            rec = json.loads(line)
        except ValueError:
            return False
        event = rec.get("event") if isinstance(rec, dict) else None
        if event == "listening" and not self.dns_port:
            self.dns_port = int(rec["port"])
        elif event == "http listening":
            setattr(self, "warning_port" if rec.get("listener") == "warning_page" else "http_port", int(rec["port"]))
        return event == "ready"

    async def _drain_rest(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    async def stop(self, sig: int = signal.SIGTERM, seconds: float = 20.0) -> int:
        """Signal the node, wait for it to exit (killed after ``seconds``); its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), seconds)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            await self._drain
        assert self.proc.returncode is not None
        return self.proc.returncode
