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
import random
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


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


_handed_out: set[int] = set()  # this process's picks: two calls never return the same port
_rng = random.SystemRandom()  # not the global generator, which tests (and Hypothesis) seed


def free_port() -> int:
    """A port free for both UDP and TCP at the time of asking (DNS binds both), for a server
    that must be told its port before it starts (NSD, Unbound, BIND, a restart on the same port).

    Picked at random below the kernel's ephemeral range: a port the kernel hands out (to any
    process's ``bind(0)``, ``connect()`` or UDP send, of this run, of another worker or of
    anything else on the machine) can be taken in the seconds between this check and the
    server's bind; one below that range is taken only by an explicit bind. Where the range
    leaves no room below it, the kernel picks (``bind(0)``), as before."""
    low, _high = _ephemeral_range()
    if low - 1 > 10000:
        for _ in range(200):
            port = _rng.randrange(10000, low)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port


def _bindable(port: int) -> bool:
    """Can TCP and UDP both bind 127.0.0.1:``port`` now (TCP without SO_REUSEADDR, so a port
    with connections in TIME_WAIT counts as taken)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            t.bind(("127.0.0.1", port))
            u.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


# How long a starting `betblock serve` may take to say "ready". It needs about 1 s of CPU
# (imports, settings, first compile); on this 2-core machine at a load average of 8-10 (other
# test runs and benchmarks beside this one) starts were measured taking over 30 s. A node that
# exits fails the wait at once (end of its log), so this bounds only a start that hangs.
START_SECONDS = 90.0


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
        except (dns.exception.Timeout, dns.query.BadResponse, dns.query.UnexpectedSource):
            # BadResponse, UnexpectedSource: a late answer to an earlier probe (or to another
            # client) reached a new probe socket that the kernel gave the same ephemeral port;
            # the probe only waits for readiness.
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
        self.xfr_port = 0  # the zone-transfer listener, when [xfr] is on
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, cfg: Path, *extra: str, seconds: float = START_SECONDS, preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Serve:
        """Start the node and wait, within ``seconds``, for its "ready" log line; a node that
        exits first fails the wait at once, with its log."""
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
        elif event == "zone transfers served" and not self.xfr_port:
            self.xfr_port = int(str(rec["listen"][0]).rsplit(":", 1)[1])
        return event == "ready"

    async def _drain_rest(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def events(self, event: str, **fields: object) -> list[dict[str, object]]:
        """The log records (JSON lines) of ``event`` whose ``fields`` have the given values."""
        found = []
        for line in self.lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event") == event and all(rec.get(k) == v for k, v in fields.items()):
                found.append(rec)
        return found

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
