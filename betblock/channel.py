"""The control channel between the control-plane process and one DNS worker process.

Owns the framing and the message names. One Unix stream socketpair per worker, made by the
control plane before it starts the worker; a message is a 4-byte length and a pickled tuple
whose first item names it. Both ends are this program, started by the same user, one by the
other, so pickle is safe here: nothing from outside the two processes is ever unpickled.

Control plane to worker:
    ("policy", seq, path, version)   load the snapshot at ``path`` (``betblock.handover``), install it, ack
    ("config", seq, acl, cname)      the client ACL networks and ``policy.cname_inspection`` (SIGHUP), ack
    ("stats", seq)                   reply with the counters (``resolver.stats``)
    ("stop",)                        SIGTERM: stop reading, answer what is in flight, flush hits, exit
Worker to control plane:
    ("ready", pid, version)          listening, with that policy version in force
    ("ack", seq, version)            a "policy" or "config" is in force
    ("stats", seq, stats)
    ("hits", flat, agg, dropped)     a batch of hits, rule ids for rules (``betblock.worker.HitBatcher``)
    ("bye", stats)                   drained; the last hits were sent before it

Must not import the resolver (the worker composes it) or the feeds and hits services.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_HEAD = struct.Struct(">I")
MAX_MESSAGE = 1 << 30  # a frame longer than this is a bug or damage, never a message


def frame(msg: tuple[Any, ...]) -> bytes:
    """One message as bytes to write."""
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(body)) + body


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None when the other end has closed (or died)."""
    try:
        head = await reader.readexactly(_HEAD.size)
        (size,) = _HEAD.unpack(head)
        if size > MAX_MESSAGE:
            raise ConnectionError(f"control channel frame of {size} bytes")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    msg = pickle.loads(body)
    return msg if isinstance(msg, tuple) and msg else None


def send(writer: asyncio.StreamWriter, msg: tuple[Any, ...]) -> bool:
    """Queue ``msg`` on the channel; False when the other end is gone."""
    if writer.is_closing():
        return False
    try:
        writer.write(frame(msg))
    except (ConnectionError, RuntimeError):
        return False
    return True
