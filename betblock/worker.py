"""A DNS worker process: answers queries on sockets the control plane bound, and nothing else.

Owns the worker's composition (the data plane only: pipeline, cache, upstream client, rate
limiter, listeners), its side of the control channel (``betblock.channel``), the hit batches it
hands to the control plane (``HitBatcher``) and its lifecycle: it exits after draining on
"stop", on SIGTERM, and when the control plane is gone (end of file on the channel, or the
parent-death signal). Feeds, the hit store, HTTP and the warning page live in the control plane
(``betblock.workers`` starts and supervises this process).

Run as ``python -m betblock.worker FD PARENT_PID`` with the channel's end at descriptor FD and
the DNS sockets passed open; the first message names them and carries the settings sections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from operator import attrgetter
from typing import Any

import structlog

from betblock import channel, dataplane, handover, logs
from config.sections import AclSettings
from hits.batch import HIT_FIELDS, HitBuffer
from resolver import stats
from resolver.acl import Acl
from resolver.server import DnsServer

log = structlog.get_logger("betblock.worker")

HIT_INTERVAL = 0.05  # seconds between hit batches: one write per batch, not one per hit
# A batch is not written while this much is still unsent on the channel (the control plane is
# not reading): hits stay in the bounded buffer, then are counted per second, as the recorder does.
CHANNEL_HIGH = 8 << 20
_RULE_ID = attrgetter("id")
PR_SET_PDEATHSIG = 1


class HitBatcher(HitBuffer):
    """The worker's hit recorder: the same ``record(hit)`` on the hot path into a bounded flat
    buffer (``HitBuffer``: per-second counts beyond it, losses counted beyond those, as in the
    control plane's recorder), handed to the control plane every ``HIT_INTERVAL`` in one
    write, rules as their ids (the control plane maps them back through the snapshot of that
    version)."""

    def __init__(self, enabled: bool, cap: int) -> None:
        super().__init__(enabled, cap)
        self.sent = 0
        self.writer: asyncio.StreamWriter | None = None

    def flush(self) -> None:
        """Send what is buffered in one message, unless the channel is backed up."""
        w = self.writer
        if w is None or not (self.buffer or self.aggregated or self.dropped):
            return
        if w.transport.get_write_buffer_size() > CHANNEL_HIGH:
            return  # the control plane is behind: keep counting here (bounded)
        flat, agg = self.take()
        dropped, self.dropped = self.dropped, 0
        flat[4::HIT_FIELDS] = list(map(_RULE_ID, flat[4::HIT_FIELDS]))
        counts = {(k[0], k[1], k[2], k[3], k[4].id, k[5], k[6]): c for k, c in agg.items()}
        if channel.send(w, ("hits", flat, counts, dropped)):
            self.sent += len(flat) // HIT_FIELDS + sum(counts.values())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HIT_INTERVAL)
            self.flush()


class Worker:
    """One worker's data plane and its side of the channel."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stopping = asyncio.Event()
        self.slot = -1

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=self.fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        hello = await channel.receive(reader)
        if hello is None or hello[0] != "hello":
            return 1
        conf: dict[str, Any] = hello[1]
        self.slot = conf["slot"]
        settings = dataplane.Sections.load(conf["sections"])  # without the settings loader's imports
        logs.configure(settings.log.level, conf.get("log_format") or settings.log.format, shared=True)
        structlog.contextvars.bind_contextvars(worker=self.slot, pid=os.getpid())
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the control plane decides (a terminal's ^C reaches us too)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)

        self.hits = HitBatcher(conf["hits_enabled"], conf["hits_buffer"])
        self.hits.writer = writer
        # The same parts as ``betblock.app.App`` builds for its own data plane.
        plane = dataplane.build(settings, self.hits)
        self.cache, self.upstream, self.rrl, self.pipeline = plane.cache, plane.upstream, plane.rrl, plane.pipeline
        snapshot = await asyncio.to_thread(handover.read, conf["policy"])
        self.pipeline.install(snapshot)
        socks = [
            (socket.socket(fileno=u), socket.socket(fileno=t) if t is not None else None) for u, t in conf["sockets"]
        ]
        self.server = DnsServer(settings.dns, self.pipeline.answer, sockets=socks)
        await self.server.start()
        dataplane.settle_heap()
        channel.send(writer, ("ready", os.getpid(), snapshot.version))  # the control plane logs it

        self._installing = asyncio.Lock()
        tasks = [asyncio.ensure_future(self.hits.run())]
        if self.rrl is not None:
            tasks.append(asyncio.ensure_future(self.rrl.run()))
        control = asyncio.ensure_future(self._control(reader, writer))
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([control, stop], return_when=asyncio.FIRST_COMPLETED)
        # Stop: no new queries; those in flight are answered (bounded by their deadline).
        await self.server.close()
        self.upstream.close()
        for task in tasks:
            task.cancel()
        self.hits.flush()  # the last hits, before "bye" (the control plane reads in order)
        channel.send(writer, ("bye", stats.collect(self.pipeline, self.server)))
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            async with asyncio.timeout(5):
                await writer.drain()
        control.cancel()
        stop.cancel()
        writer.close()
        log.info("worker stopped", hits_sent=self.hits.sent)
        return 0

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve the control plane's messages until "stop" or end of file (the control plane is gone)."""
        while True:
            msg = await channel.receive(reader)
            if msg is None or msg[0] == "stop":
                return
            kind = msg[0]
            if kind == "stats":
                channel.send(writer, ("stats", msg[1], stats.collect(self.pipeline, self.server)))
            elif kind == "policy":
                # In a task: reading a large table takes a while, and stats are answered meanwhile.
                asyncio.ensure_future(self._install(writer, msg[1], msg[2]))
            elif kind == "config":
                _, seq, allow, cname = msg
                self.pipeline.set_acl(Acl(AclSettings(allow=allow).networks()))
                self.pipeline.cname_inspection = cname
                channel.send(writer, ("ack", seq, self.pipeline.policy.version))

    async def _install(self, writer: asyncio.StreamWriter, seq: int, path: str) -> None:
        async with self._installing:  # in the order sent
            try:
                snapshot = await asyncio.to_thread(handover.read, path)
            except Exception:
                log.exception("cannot read a policy snapshot; the one in force stays", path=path)
                return  # no ack: the control plane replaces this worker
            self.pipeline.install(snapshot)
            dataplane.settle_heap()
            channel.send(writer, ("ack", seq, snapshot.version))


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the control plane dies, then check it had not already."""
    if sys.platform.startswith("linux"):
        try:
            # The process's own symbols, libc's among them: ctypes.util.find_library would import
            # shutil and tempfile and may run ldconfig, on every worker start.
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # end of file on the channel still stops us
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd, parent = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # before the loop's handler: exit quietly
    _die_with_parent(parent)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(Worker(fd).run())
    except KeyboardInterrupt:  # pragma: no cover
        return 0


if __name__ == "__main__":
    sys.exit(main())
