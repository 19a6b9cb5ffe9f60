"""The other DNS servers the tests run beside betblock: NSD as the authoritative upstream, Unbound
as the peer of the RPZ comparison.

Owns where their binaries are (Debian's packages; None when not installed), NSD's server section
(foreground, 127.0.0.1 only, every file in the test's directory) and stopping such a process by
its PID. Starting them stays with each test, which knows what answer means "up".

The benchmarks (bench/peers.py, bench/xfr.py) write their NSD config with ``nsd_conf`` too, so
this module stays standard library only and imports nothing of betblock or of the tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path


def sbin(name: str) -> str | None:
    """The path of a server binary (on PATH, else Debian's /usr/sbin), or None."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)


NSD = sbin("nsd")
UNBOUND = sbin("unbound")


def nsd_zone_section(name: str, zonefile: Path | str, options: str = "") -> str:
    """One ``zone:`` section of an nsd.conf; ``options``: further lines, each indented two spaces."""
    return f'zone:\n  name: "{name}"\n  zonefile: "{zonefile}"\n{options}'


def nsd_conf(run: Path, port: int, zones: str, server: str = "") -> str:
    """An nsd.conf serving ``zones`` (its ``zone:`` sections) on 127.0.0.1:``port``, IPv4 only,
    one server process, with its state, pid file and log in ``run``; ``server``: further lines
    of the server section, each indented two spaces."""
    return f"""server:
  ip-address: 127.0.0.1
  port: {port}
  do-ip4: yes
  do-ip6: no
  server-count: 1
  username: ""
  chroot: ""
  database: ""
  zonesdir: "{run}"
  zonelistfile: "{run}/zone.list"
  xfrdfile: "{run}/xfrd.state"
  xfrdir: "{run}"
  pidfile: "{run}/nsd.pid"
  logfile: "{run}/nsd.log"
  verbosity: 0
{server}remote-control:
  control-enable: no
{zones}"""


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 5 s; by PID, never by name."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
