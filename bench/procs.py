"""Processes, /proc accounting and a tiny DNS probe for the benchmark.

Owns: starting a server pinned to one CPU in its own session, stopping it by PID (SIGTERM,
then SIGKILL after a grace period), summing CPU time, RSS and PSS over the server's processes
(its session and every descendant of it: a server that runs its work in child processes, as
betblock's DNS workers, is measured whole), and one-shot UDP queries to 127.0.0.1 that report
rcode, answer types and Extended DNS Error codes.

Standard library only; must not import betblock or the other bench modules.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 28: "AAAA", 41: "OPT"}
LOOPBACK = "127.0.0.1"


# ------------------------------------------------------------------------------ processes
class Server:
    """A process started by the benchmark in a session of its own (session id == its PID)."""

    def __init__(self, name: str, argv: list[str], cpu: int, log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self._log = log_path.open("wb")
        self.started = time.monotonic()  # before the fork: load time includes start-up
        # taskset exec()s the command, so the PID we get is the server's own.
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv], stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The server's live processes: its session and its descendants."""
        return tree_pids(self.pid)

    def cpu_ticks(self) -> int:
        # Zombies too: a child that exited but is not reaped yet has its CPU time only in its
        # own entry (once reaped, in its parent's cutime + cstime).
        return sum(_cpu_ticks(pid) for pid in tree_pids(self.pid, zombies=True))

    def rss_kib(self) -> int:
        """VmRSS summed: pages shared between the processes count once per process."""
        return sum(_rss_kib(pid) for pid in self.pids())

    def pss_kib(self) -> int:
        """PSS summed: each shared page divided among the processes that map it, so N workers
        sharing one memory-mapped policy count it once."""
        return sum(_pss_kib(pid) for pid in self.pids())

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process of the server by PID; SIGKILL whatever is left after `grace`.

        The processes seen at the SIGTERM are remembered (with their start time, so a recycled
        PID is never signalled): once the leader is gone, a child outside its session is no
        longer anyone's descendant of it."""
        seen = {pid: _start_time(pid) for pid in self.pids()}
        for pid in seen:
            _kill(pid, signal.SIGTERM)

        def left() -> list[int]:
            now = set(self.pids()) | {pid for pid, t in seen.items() if t is not None and _start_time(pid) == t}
            return sorted(now)

        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader as soon as it exits
            if not left():
                break
            time.sleep(0.05)
        for pid in left():
            _kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            print(f"!! {self.name} pid {self.pid} still there after SIGKILL", flush=True)
        self._log.close()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; the command name may hold spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`.

    The session id is checked each time, so a recycled PID of an unrelated process is never
    counted or signalled.
    """
    return [pid for pid, (state, _ppid, s) in _processes().items() if state != "Z" and s == sid]


def tree_pids(root: int, zombies: bool = False) -> list[int]:
    """The processes of `root`'s session and every descendant of `root` (by parent PID, read
    afresh each time, so a recycled PID is never taken for a child), zombies only when asked.

    Both, because each can miss one: a child that calls setsid() leaves the session, and one
    whose parent exits is re-parented away from the tree.
    """
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (_state, ppid, _sid) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_state, _ppid, sid) in table.items() if sid == root}
    todo = [root] if root in table else []
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(c for c in children.get(pid, ()) if c not in found)
    return sorted(pid for pid in found if zombies or table[pid][0] != "Z")


def _processes() -> dict[int, tuple[str, int, int]]:
    """state, parent PID and session id of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                found[int(entry)] = (f[0], int(f[1]), int(f[3]))
    return found


def _cpu_ticks(pid: int) -> int:
    # utime + stime of all threads, plus cutime + cstime of reaped children: a worker that
    # exits mid-run (e.g. a list compiler in a subprocess) still counts.
    f = _stat_fields(pid)
    return sum(int(x) for x in f[11:15]) if f else 0


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot); None when it is gone or a zombie."""
    f = _stat_fields(pid)
    return int(f[19]) if f and f[0] != "Z" else None


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def all_ticks() -> dict[int, tuple[str, int]]:
    """(name, utime + stime) of every process; kernel threads get their name in brackets."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            f = raw[raw.rindex(")") + 2:].split()
            found[int(entry)] = (f"[{name}]" if f[1] == "2" else name, int(f[11]) + int(f[12]))
    return found


def command_line(pid: int, name: str, width: int = 60) -> str:
    """The start of a process's command line (its name when it has none: a kernel thread)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return name
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    return (text[:width] + "…" if len(text) > width else text) or name


def core_ticks(cpu: int) -> dict[str, int]:
    """Tick counters of one CPU from /proc/stat: task time, (soft)irq, steal, idle, total."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in line.split()[1:9])
            return {"task": user + nice + system, "softirq": irq + softirq, "steal": steal,
                    "idle": idle + iowait, "total": user + nice + system + idle + iowait + irq + softirq + steal}
    raise ValueError(f"cpu{cpu} is not in /proc/stat")


def port_free(port: int) -> bool:
    """True when neither UDP nor TCP `port` on 127.0.0.1 is bound by anyone."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


# ------------------------------------------------------------------------------ DNS probe
@dataclass(frozen=True, slots=True)
class Reply:
    rcode: int
    answers: tuple[str, ...]  # RR types of the answer section, e.g. ("A",)
    ede: tuple[int, ...]  # Extended DNS Error info codes (RFC 8914) found in the OPT record

    @property
    def blocked(self) -> bool:
        return self.rcode == 3

    @property
    def resolved(self) -> bool:
        return self.rcode == 0 and "A" in self.answers

    def __str__(self) -> str:
        text = RCODES.get(self.rcode, f"rcode {self.rcode}")
        if self.answers:
            text += " " + ",".join(self.answers)
        if self.ede:
            text += " EDE " + ",".join(str(c) for c in self.ede)
        return text


def _encode_query(qid: int, name: str, qtype: int, edns: bool) -> bytes:
    msg = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.strip(".").split("."):
        msg += bytes([len(label)]) + label.encode("ascii")
    msg += b"\x00" + struct.pack(">HH", qtype, 1)
    if edns:
        msg += b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)  # OPT, no options
    return msg


def _skip_name(buf: bytes, pos: int) -> int:
    while True:
        n = buf[pos]
        if n >= 0xC0:
            return pos + 2
        if n == 0:
            return pos + 1
        pos += n + 1


def _decode(buf: bytes) -> Reply:
    qd, an, ns, ar = struct.unpack(">HHHH", buf[4:12])
    pos = 12
    for _ in range(qd):
        pos = _skip_name(buf, pos) + 4
    answers, ede = [], []
    rcode = buf[3] & 0x0F
    for i in range(an + ns + ar):
        pos = _skip_name(buf, pos)
        rtype, _cls, ttl, rdlen = struct.unpack(">HHIH", buf[pos:pos + 10])
        pos += 10
        rdata = buf[pos:pos + rdlen]
        pos += rdlen
        if i < an:
            answers.append(TYPES.get(rtype, str(rtype)))
        elif rtype == 41:
            rcode |= (ttl >> 24) << 4  # extended rcode bits live in the OPT TTL
            opt = 0
            while opt + 4 <= len(rdata):
                code, olen = struct.unpack(">HH", rdata[opt:opt + 4])
                if code == 15 and olen >= 2:  # EDE
                    ede.append(struct.unpack(">H", rdata[opt + 4:opt + 6])[0])
                opt += 4 + olen
    return Reply(rcode, tuple(answers), tuple(ede))


def query(port: int, name: str, qtype: int = 1, timeout: float = 0.5, edns: bool = False) -> Reply | None:
    """One UDP query to 127.0.0.1:`port`; None on timeout, refusal or an unreadable reply."""
    qid = random.getrandbits(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            s.connect((LOOPBACK, port))  # connected: ICMP port unreachable fails fast
            s.send(_encode_query(qid, name, qtype, edns))
            while time.monotonic() < deadline:
                buf = s.recv(65535)
                if len(buf) >= 12 and struct.unpack(">H", buf[:2])[0] == qid:
                    return _decode(buf)
        except (OSError, struct.error, IndexError):
            return None
    return None


def round_trips(port: int, names: list[str], timeout: float = 2.0) -> tuple[list[float], int]:
    """Ask each name once, one at a time, from one socket: the round trip of each answered
    query in seconds, and how many got no answer within `timeout`."""
    times: list[float] = []
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((LOOPBACK, port))
        s.settimeout(timeout)
        for i, name in enumerate(names):
            qid = i & 0xFFFF
            msg = _encode_query(qid, name, 1, False)
            t0 = time.perf_counter()
            s.send(msg)
            try:
                while True:
                    buf = s.recv(65535)
                    if len(buf) >= 12 and struct.unpack(">H", buf[:2])[0] == qid:
                        times.append(time.perf_counter() - t0)
                        break
            except OSError:
                lost += 1
    return times, lost
