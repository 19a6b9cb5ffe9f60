"""A real `betblock serve` process for the hostile-client tests, driven from plain threads.

Owns writing the node's TOML (DNS on port 0, read back from the "listening" log line, so no
port is guessed), starting the process with optional resource limits, collecting its JSON log
lines on a thread (so its pipe never fills), reading its RSS and descriptor limits from /proc,
and stopping it.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.edns
import dns.message

BLOCKED = "bad.test"  # listed: answered without an upstream


def raise_own_fd_limit() -> None:
    """The test process opens hundreds of sockets: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Node:
    """One `betblock serve` on 127.0.0.1 with a one-name list; ``sections`` is extra TOML."""

    def __init__(
        self,
        tmp_path: Path,
        sections: str = "",
        *,
        upstream: str = "127.0.0.1:9",
        dns: str = "",
        upstream_conf: str = "",
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        (tmp_path / "list.txt").write_text(f"{BLOCKED}\n")
        self.config = tmp_path / "betblock.toml"
        self.config.write_text(
            f"""data_dir = "{tmp_path / 'var'}"
[dns]
listen = ["127.0.0.1:0"]
{dns}
[http]
listen = "127.0.0.1:0"
[warning_page]
enabled = false
[upstream]
servers = ["{upstream}"]
{upstream_conf}
[hits]
flush_interval = 0.5
[[agencies]]
id = "pl-mf"
action = "nxdomain"
lists = ["{tmp_path / 'list.txt'}"]
{sections}"""
        )
        self.nofile = nofile
        self.lines: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_port = 0
        self._ready = threading.Event()

    def start(self, seconds: float = 60.0) -> Node:
        nofile = self.nofile
        preexec: Callable[[], None] | None = None
        if nofile is not None:
            preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)  # noqa: E731
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "betblock.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # the JSON log
            preexec_fn=preexec,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(seconds) or not self.port:
            self.kill()
            raise AssertionError(f"betblock did not become ready: {self.stderr()[-2000:]}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "text", "text": raw.decode(errors="replace")}
            self.lines.append(line)
            event = line.get("event")
            if event == "listening":
                self.port = line["port"]
            elif event == "http listening" and not self.http_port:
                self.http_port = line["port"]
            elif event == "ready":
                self._ready.set()
        self._ready.set()

    def stderr(self) -> str:
        return "\n".join(json.dumps(line) for line in self.lines)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        """Resident memory of the server process in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fd_limits(self) -> tuple[int, int]:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no descriptor limit")

    def metric(self, name: str, default: float | None = None) -> float:
        """One unlabelled sample from /metrics (``default`` when the node has no such metric)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        if default is not None:
            return default
        raise AssertionError(f"no metric {name}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, seconds: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(seconds)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def frame(msg: bytes) -> bytes:
    return struct.pack(">H", len(msg)) + msg


def query(name: str, qtype: str = "A", qid: int | None = None, edns: bool = False, pad: int = 0) -> bytes:
    """A query's wire bytes; ``pad`` adds an EDNS padding option of that many bytes (RFC 7830)."""
    options = [dns.edns.GenericOption(12, b"\0" * pad)] if pad else None
    q = dns.message.make_query(name, qtype, use_edns=0 if edns or pad else None, options=options)
    if qid is not None:
        q.id = qid
    return q.to_wire()


def tcp_connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed by the server")
        out += chunk
    return bytes(out)


def recv_answer(sock: socket.socket) -> dns.message.Message:
    size = struct.unpack(">H", recv_exact(sock, 2))[0]
    return dns.message.from_wire(recv_exact(sock, size))


def tcp_ask(port: int, name: str, source: str = "127.0.0.1", timeout: float = 10.0) -> dns.message.Message:
    """One query on a new TCP connection from ``source``."""
    with tcp_connect(port, source, timeout) as s:
        s.sendall(frame(query(name)))
        return recv_answer(s)


def closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` within ``seconds`` (anything it sends is discarded)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True
    return False


def flood(sock: socket.socket, data: bytes, done: Callable[[], bool], stall: float = 60.0) -> int:
    """Send ``data`` without reading anything back; stop early once ``done()`` says so (checked
    whenever the server takes nothing for a moment) or after ``stall`` seconds in which it took
    nothing. Returns the bytes it took."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(data)
    waited_since = time.monotonic()
    while sent < len(data):
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            if done() or time.monotonic() - waited_since > stall:
                break
            continue
        waited_since = time.monotonic()
        try:
            sent += sock.send(view[sent : sent + 65536])
        except BlockingIOError:
            continue
        except ConnectionError:
            break
    return sent


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
