"""Helpers for tests that run `betblock serve` as a real process on 127.0.0.1.

Owns the common part of such a node's TOML (state in tmp, DNS on a chosen port, HTTP and the
warning page on free ports, the fake upstream), starting the process, and waiting for its first
answer with a deadline (polling a condition, not sleeping for one).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message

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


def node_toml(tmp_path: Path, port: int, upstream: FakeDns, rest: str) -> str:
    """A node's config: the shared sections, then ``rest`` (hits, policy, agencies...)."""
    return f"""
data_dir = "{tmp_path / 'var'}"
[dns]
listen = ["127.0.0.1:{port}"]
[http]
listen = "127.0.0.1:0"
[warning_page]
listen = "127.0.0.1:0"
[upstream]
servers = ["{upstream.address}"]
{rest}"""


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
        except dns.exception.Timeout:
            if time.monotonic() > deadline:
                raise
