"""Real resolvers from Debian that follow a betblock primary over zone transfers, for tests.

Owns the configuration of each (Unbound with ``rpz:``/``primary:``, BIND 9 with
``response-policy`` over a secondary zone, PowerDNS Recursor with ``rpzPrimary``), written into
a temporary directory with the ports the test chose, and starting them as child processes on
127.0.0.1 (their output read as it comes: a full pipe would stall them). These snippets are the
ones the README shows.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.query

from tests.procutil import START_SECONDS, until
from tests.xfr.primary import KEY_NAME, KEY_SECRET, ZONE


@dataclass
class Follower:
    kind: str
    argv: list[str]
    port: int
    proc: asyncio.subprocess.Process | None = None
    output: list[bytes] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it and wait until it answers on its port (any answer); one that exits first
        (say, its port was taken) fails at once, with its output."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._drain = asyncio.create_task(self._read())

        async def answers() -> bool:
            assert self.proc is not None
            assert self.proc.returncode is None, f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}"
            try:
                # A name no test asks: the answer is never one a test reads from a cache.
                await dns.asyncquery.udp(dns.message.make_query("follower-up.test", "SOA"), "127.0.0.1", port=self.port, timeout=1)
            except (dns.exception.Timeout, dns.query.BadResponse, dns.query.UnexpectedSource):
                return False
            return True

        await until(answers, f"{self.kind} to answer on port {self.port}", START_SECONDS, log=self.log)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output.append(chunk)

    def log(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    async def stop(self) -> str:
        """Stop it; everything it wrote."""
        if self.proc is None:
            return ""
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._drain is not None:
            await self._drain
        return self.log()


def available(kind: str) -> bool:
    return shutil.which({"unbound": "unbound", "bind": "named", "pdns": "pdns_recursor"}[kind]) is not None


def unbound(tmp: Path, port: int, upstream: str, xfr_port: int) -> Follower:
    host, up_port = upstream.split(":")
    conf = tmp / "unbound.conf"
    conf.write_text(f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{tmp}"
    pidfile: "{tmp}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-daemonize: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    # RPZ needs the respip module before the iterator.
    module-config: "respip iterator"
    # The tests use names under test. (RFC 6761), which Unbound otherwise answers itself.
    local-zone: "test." nodefault
forward-zone:
    name: "."
    forward-addr: {host}@{up_port}
rpz:
    name: {ZONE}
    primary: 127.0.0.1@{xfr_port}
    zonefile: "{tmp}/{ZONE}.zone"
    rpz-log: yes
""")
    return Follower("unbound", ["unbound", "-d", "-c", str(conf)], port)


def bind_conf(tmp: Path, port: int, options: str, zone: str) -> str:
    """A named.conf for BIND 9 running from ``tmp``: the tests' TSIG key, the options every test
    needs (files in ``tmp``, 127.0.0.1:``port`` only, no DNSSEC validation, no control channel)
    and ``options`` (lines of the options block), then ``zone`` (its zone statement)."""
    return f"""key "{KEY_NAME}" {{
    algorithm hmac-sha256;
    secret "{KEY_SECRET}";
}};
options {{
    directory "{tmp}";
    pid-file "{tmp}/named.pid";
    session-keyfile "{tmp}/session.key";
    managed-keys-directory "{tmp}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    dnssec-validation no;
{options}}};
controls {{ }};
{zone}"""


def bind(tmp: Path, port: int, upstream: str, xfr_port: int) -> Follower:
    host, up_port = upstream.split(":")
    conf = tmp / "named.conf"
    conf.write_text(bind_conf(tmp, port, f"""    recursion yes;
    allow-query {{ 127.0.0.1; }};
    forwarders {{ {host} port {up_port}; }};
    forward only;
    notify no;
    # min-update-interval 0: apply each transfer at once (the default waits up to 60 s).
    response-policy {{ zone "{ZONE}"; }} min-update-interval 0;
""", f"""zone "{ZONE}" {{
    type secondary;
    primaries {{ 127.0.0.1 port {xfr_port} key "{KEY_NAME}"; }};
    file "{tmp}/{ZONE}.db";
}};
"""))
    return Follower("bind", ["named", "-g", "-n", "1", "-c", str(conf)], port)


def pdns(tmp: Path, port: int, upstream: str, xfr_port: int) -> Follower:
    (tmp / "rpz.lua").write_text(
        f'rpzPrimary("127.0.0.1:{xfr_port}", "{ZONE}", '
        f'{{tsigname="{KEY_NAME}", tsigalgo="hmac-sha256", tsigsecret="{KEY_SECRET}", refresh=1}})\n'
    )
    (tmp / "recursor.conf").write_text(f"""local-address=127.0.0.1
local-port={port}
socket-dir={tmp}
lua-config-file={tmp}/rpz.lua
forward-zones-recurse=.={upstream}
allow-from=127.0.0.0/8
daemon=no
write-pid=no
threads=1
disable-syslog=yes
dnssec=off
# RPZ updates do not wipe the packet cache: an answer cached before one would outlive it.
disable-packetcache=yes
""")
    return Follower("pdns", ["pdns_recursor", f"--config-dir={tmp}"], port)
