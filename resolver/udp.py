"""The UDP listener: datagrams in, answers out, in batches of system calls where Linux has them.

Owns one UDP socket per listen address and how its datagrams are read and written:

- **Batched** (Linux, ``dns.udp_batch`` > 0): the socket is watched with ``loop.add_reader``;
  when it is readable, up to ``udp_batch`` datagrams are read with one ``recvmmsg``, each is
  answered synchronously through the same ``Pipeline.answer`` call as ever (blocked, cached,
  refused, errors), and all those answers leave with one ``sendmmsg``. A cache miss returns a
  pending answer (``then``): the pipeline calls back from the upstream's reply callback and the
  answer leaves with ``sendto`` there, with no task per miss. The asyncio loop stays in charge
  of everything else (upstreams, TCP, timers).
- **One datagram per call** (``udp_batch`` = 0, or no ``recvmmsg`` on this platform): an
  asyncio datagram endpoint, answering inside ``datagram_received`` as before.

The system calls go through ctypes into libc: the batch amortises ctypes' per-call cost over up
to 64 datagrams, and the per-datagram work is a few slices of memoryviews over the message
arrays (README, "Data plane", says what a C extension would save and why we do without).

Must not import feeds, hits, the cache or the pipeline's internals: it only calls ``answer``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import socket
import struct
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Protocol

import structlog

log = structlog.get_logger("betblock.udp")



class Pending(Protocol):
    """A cache miss: ``then(done)`` calls ``done(answer or None)`` once, later."""

    def then(self, done: Callable[[bytes | None], None]) -> None: ...


Answer = bytes | None | Coroutine[Any, Any, bytes | None] | Pending
# answer(data, client, udp, then): with then=True a miss comes back as a Pending
AnswerFn = Callable[[bytes, str, bool, bool], Answer]

MSG_DONTWAIT = 0x40
RECV_SLOT = 65536  # a datagram never exceeds this, so nothing arrives truncated
SEND_SLOT = 4096  # dns.edns_udp_size is at most 4096; anything longer goes out by sendto
NAME_SLOT = 128  # sizeof(struct sockaddr_storage)
BATCHES_PER_WAKEUP = 8  # then give the loop back (upstream replies, TCP, timers)
_ADDR_MEMO = 1 << 16


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc_calls() -> tuple[Any, Any] | None:
    """libc's recvmmsg and sendmmsg, or None where they are missing (non-Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library imports shutil
        # and tempfile and runs ldconfig, at every start of every worker process.
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return recv, send


_CALLS = _libc_calls()


def batching_available() -> bool:
    return _CALLS is not None and ctypes.sizeof(ctypes.c_void_p) == 8


def _address(buf: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _bytes_of(arr: ctypes.Array[Any]) -> memoryview:
    """A flat byte view over a ctypes array (the memory the kernel reads and writes)."""
    return memoryview((ctypes.c_char * ctypes.sizeof(arr)).from_address(ctypes.addressof(arr))).cast("B")


class Listener:
    """What DnsServer keeps per UDP socket: the answers still waiting, and close()."""

    waiting = 0  # misses not answered yet
    _idle: asyncio.Future[None] | None = None

    def drained(self) -> asyncio.Future[None]:
        """Done when no miss is waiting (shutdown waits on it)."""
        idle = asyncio.get_running_loop().create_future()
        if self.waiting:
            self._idle = idle
        else:
            idle.set_result(None)
        return idle

    def _answered(self) -> None:
        self.waiting -= 1
        if not self.waiting and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class DatagramListener(asyncio.DatagramProtocol, Listener):
    """One datagram per call through an asyncio endpoint (the fallback)."""

    def __init__(self, answer: AnswerFn) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        res = self.answer(data, addr[0], True, True)
        if res.__class__ is bytes:
            self.transport.sendto(res, addr)  # type: ignore[union-attr]
        elif res is not None:
            self.waiting += 1
            res.then(partial(self._later, addr))  # type: ignore[union-attr]

    def _later(self, addr: tuple[str, int], resp: bytes | None) -> None:
        self._answered()
        if resp is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(resp, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for clients that went away: nothing to do, and never fatal.
        pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class BatchedListener(Listener):
    """recvmmsg in, Pipeline.answer per datagram, sendmmsg out; misses answered by tasks."""

    def __init__(self, sock: socket.socket, answer: AnswerFn, batch: int) -> None:
        assert _CALLS is not None
        self.sock = sock
        self.fd = sock.fileno()
        self.answer = answer
        self.batch = batch
        self.v6 = sock.family == socket.AF_INET6
        self.send_failures = 0  # answers the kernel would not take (send buffer full, ...)
        self.batches = 0  # recvmmsg calls that returned datagrams
        self.largest = 0  # the most datagrams one call returned
        self._recvmmsg, self._sendmmsg = _CALLS
        self._memo: dict[Any, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

        n = batch
        namelen = 28 if self.v6 else 16
        # Anonymous mappings: pages are only backed once the kernel writes a datagram there.
        self._rbuf = mmap.mmap(-1, n * RECV_SLOT)
        self._sbuf = mmap.mmap(-1, n * SEND_SLOT)
        self._names = mmap.mmap(-1, n * NAME_SLOT)
        rbase, sbase, nbase = _address(self._rbuf), _address(self._sbuf), _address(self._names)
        self._riov = (_Iovec * n)()
        self._siov = (_Iovec * n)()
        self._rmsgs = (_Mmsghdr * n)()
        self._smsgs = (_Mmsghdr * n)()
        for i in range(n):
            self._riov[i].iov_base, self._riov[i].iov_len = rbase + i * RECV_SLOT, RECV_SLOT
            self._siov[i].iov_base = sbase + i * SEND_SLOT
            h = self._rmsgs[i].msg_hdr
            h.msg_name, h.msg_namelen = nbase + i * NAME_SLOT, namelen
            h.msg_iov, h.msg_iovlen = ctypes.addressof(self._riov[i]), 1
            s = self._smsgs[i].msg_hdr
            s.msg_namelen = namelen
            s.msg_iov, s.msg_iovlen = ctypes.addressof(self._siov[i]), 1
        # Flat views over the C arrays, so the per-datagram work is slicing, not ctypes
        # attribute access (each of which costs about as much as the slicing of a whole batch).
        stride = ctypes.sizeof(_Mmsghdr)
        len_at = _Mmsghdr.msg_len.offset  # type: ignore[attr-defined]
        self._lens = _bytes_of(self._rmsgs).cast("I")[len_at // 4 :: stride // 4]
        self._send_names = _bytes_of(self._smsgs).cast("Q")
        self._name_step = stride // 8
        self._send_lens = _bytes_of(self._siov).cast("Q")[1::2]
        self._raddr = ctypes.addressof(self._rmsgs)
        self._saddr = ctypes.addressof(self._smsgs)
        self._nview = memoryview(self._names)
        self._words = self._nview.cast("I")
        self._roff = [i * RECV_SLOT for i in range(n)]
        self._send_at = [i * SEND_SLOT for i in range(n)]
        self._name_at = [nbase + i * NAME_SLOT for i in range(n)]
        self._nbase = nbase
        self._stride = stride

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None
        self.sock.close()

    # -- the hot path -----------------------------------------------------------------------

    def _readable(self) -> None:
        recvmmsg, rmsgs, fd, n_max = self._recvmmsg, self._raddr, self.fd, self.batch
        for _ in range(BATCHES_PER_WAKEUP):
            n = recvmmsg(fd, rmsgs, n_max, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0:
                    err = ctypes.get_errno()
                    if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                        log.warning("recvmmsg failed", error=errno.errorcode.get(err, str(err)))
                return
            self.batches += 1
            if n > self.largest:
                self.largest = n
            self._answer_batch(n)
            if n < n_max:
                return  # drained: the next wakeup comes from the loop

    def _answer_batch(self, n: int) -> None:
        # Offsets and addresses are precomputed per slot, and the mmaps are sliced directly
        # (one bytes object, no memoryview in between): this loop is the per-datagram cost.
        answer, memo, rbuf, sbuf, roff = self.answer, self._memo, self._rbuf, self._sbuf, self._roff
        send_names, send_lens, send_at, name_at = self._send_names, self._send_lens, self._send_at, self._name_at
        words, names, v6 = self._words, self._names, self.v6
        k = 0
        for i, size in enumerate(self._lens[:n].tolist()):
            off = roff[i]
            data = rbuf[off : off + size]
            if v6:
                na = i * NAME_SLOT
                key: Any = names[na + 8 : na + 24]
            else:
                key = words[i * (NAME_SLOT // 4) + 1]  # sin_addr as one int: no bytes object
            client = memo.get(key)
            if client is None:
                client = self._client_text(key)
            try:
                res = answer(data, client, True, True)
            except Exception:  # the pipeline answers its own failures; this is a last resort
                log.exception("answer failed", size=len(data))
                continue
            if res.__class__ is bytes:
                size = len(res)  # type: ignore[arg-type]
                if size > SEND_SLOT:
                    self._send_one(res, self._sockaddr(i * NAME_SLOT))  # type: ignore[arg-type]
                    continue
                so = send_at[k]
                sbuf[so : so + size] = res  # type: ignore[index]
                send_lens[k] = size
                send_names[k * self._name_step] = name_at[i]  # msg_name: the client's address, as received
                k += 1
            elif res is not None:
                self.waiting += 1
                na = i * NAME_SLOT
                # IPv4: the client's text is at hand, so only the port is read (no inet_ntop)
                addr = self._sockaddr(na) if v6 else (client, names[na + 2] << 8 | names[na + 3])
                res.then(partial(self._later, addr))  # type: ignore[union-attr]
        if k:
            self._flush(k)

    def _flush(self, k: int) -> None:
        sent = 0
        while sent < k:
            r = self._sendmmsg(self.fd, self._saddr + sent * self._stride, k - sent, 0)
            if r > 0:
                sent += r
                continue
            err = ctypes.get_errno()
            if r < 0 and err == errno.EINTR:
                continue
            # The answer at ``sent`` cannot go (send buffer full, or the address is refused):
            # skip it rather than lose the rest of the batch; UDP clients ask again.
            self.send_failures += 1
            sent += 1

    # -- off the hot path ---------------------------------------------------------------------

    def _client_text(self, key: bytes | int) -> str:
        if len(self._memo) >= _ADDR_MEMO:
            self._memo.clear()  # bounded; refills with the clients asking now
        if self.v6:
            text = socket.inet_ntop(socket.AF_INET6, key)  # type: ignore[arg-type]
        else:  # the int was read in native byte order from the address's four bytes
            text = socket.inet_ntop(socket.AF_INET, key.to_bytes(4, sys.byteorder))  # type: ignore[union-attr]
        self._memo[key] = text
        return text

    def _sockaddr(self, na: int) -> tuple[Any, ...]:
        """The client's address at name slot offset ``na`` as a sendto address."""
        nview = self._nview
        port = (nview[na + 2] << 8) | nview[na + 3]
        if self.v6:
            flow, scope = struct.unpack_from("!I", nview, na + 4)[0], struct.unpack_from("=I", nview, na + 24)[0]
            return (socket.inet_ntop(socket.AF_INET6, nview[na + 8 : na + 24]), port, flow, scope)
        return (socket.inet_ntop(socket.AF_INET, nview[na + 4 : na + 8]), port)

    def _send_one(self, resp: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.sock.sendto(resp, addr)
        except OSError:
            self.send_failures += 1

    def _later(self, addr: tuple[Any, ...], resp: bytes | None) -> None:
        """A miss's answer, sent from the upstream's reply callback."""
        self._answered()
        if resp is not None and self._loop is not None:
            self._send_one(resp, addr)


async def listen(sock: socket.socket, answer: AnswerFn, batch: int) -> Listener:
    """Serve a bound UDP socket: batched where possible, else through an asyncio endpoint."""
    loop = asyncio.get_running_loop()
    if batch > 0 and batching_available():
        sock.setblocking(False)
        listener = BatchedListener(sock, answer, batch)
        try:
            listener.start(loop)
        except NotImplementedError:  # a loop without add_reader (Windows' proactor)
            pass
        else:
            return listener
    _, proto = await loop.create_datagram_endpoint(lambda: DatagramListener(answer), sock=sock)
    return proto
