"""Config files and command lines for the upstream (NSD) and the peers (Unbound, PowerDNS
Recursor, betblock).

Owns what each server is told: addresses, ports, the list it loads, where its scratch files
go. Every address is 127.0.0.1; every path lives under the run directory or bench/data/.

Standard library only; must not import betblock (it is started as a program, never imported)
nor bench.bench. NSD's config comes from tests/nodes.py (standard library only as well), the one
place that knows NSD's server section.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/bench.py runs as a script: only bench/ is on the path
    sys.path.insert(0, str(REPO))

from tests.nodes import nsd_conf, nsd_zone_section  # noqa: E402

BETBLOCK_CMD = f"{REPO}/.venv/bin/betblock serve --config {{config}}"
# betblock: the benchmark configuration below (hits as JSON lines, no hit store);
# betblock-default: the configuration as shipped (hits into the SQLite store, the default).
PEERS = ("betblock", "betblock-default", "unbound", "pdns")
PLACEHOLDER = re.compile(r"\{(config|port|dir|blocklist|upstream)\}")
# Port of each peer relative to --base-port; the upstream sits on the base port itself.
# betblock's +10 gives 5310 with the default base, the port of the benchmark contract.
PORT_OFFSET = {"unbound": 1, "pdns": 3, "betblock": 10, "betblock-default": 12}
BINARY = {"unbound": "unbound", "pdns": "pdns_recursor"}


@dataclass(frozen=True, slots=True)
class Job:
    """One peer with one list: where it runs and what it loads."""

    peer: str
    size: str
    port: int
    upstream_port: int
    run_dir: Path
    blocklist: Path
    rpz: Path


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    cwd: Path
    describe: str  # how it answers a listed name, for the report


def nsd(run_dir: Path, port: int, zones: list[tuple[str, Path]]) -> list[str]:
    """NSD in the foreground, authoritative for each (zone, file), every state file under `run_dir`."""
    conf = run_dir / "nsd.conf"
    # Response rate limiting off: warm-up bursts of cache misses must all be answered.
    no_rrl = "  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n"
    conf.write_text(nsd_conf(run_dir, port, "".join(nsd_zone_section(zone, path) for zone, path in zones), no_rrl))
    return ["nsd", "-d", "-c", str(conf)]


def unbound(job: Job) -> Launch:
    """Unbound, one thread, the list as an RPZ zone (respip), forwarding to the upstream."""
    conf = job.run_dir / "unbound.conf"
    conf.write_text(f"""server:
  interface: 127.0.0.1
  port: {job.port}
  num-threads: 1
  do-ip4: yes
  do-ip6: no
  do-tcp: yes
  username: ""
  chroot: ""
  directory: "{job.run_dir}"
  pidfile: "{job.run_dir}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  outgoing-interface: 127.0.0.1
  do-not-query-localhost: no
  # RFC 6761 makes test. a local zone by default; our upstream zone lives under it.
  local-zone: "test." nodefault
  qname-minimisation: no
  minimal-responses: yes
  msg-cache-size: 64m
  rrset-cache-size: 128m
  module-config: "respip iterator"
rpz:
  name: rpz.local
  zonefile: "{job.rpz}"
  rpz-log: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{job.upstream_port}
remote-control:
  control-enable: no
""")
    return Launch(["unbound", "-d", "-c", str(conf)], job.run_dir, "RPZ `CNAME .` (NXDOMAIN)")


def pdns(job: Job) -> Launch:
    """PowerDNS Recursor, one thread, the list as an RPZ zone (rpzFile), forwarding to NSD."""
    lua = job.run_dir / "rpz.lua"
    lua.write_text(f'rpzFile("{job.rpz}", {{policyName="rpz.local"}})\n')
    (job.run_dir / "recursor.conf").write_text(f"""local-address=127.0.0.1
local-port={job.port}
allow-from=127.0.0.0/8
threads=1
pdns-distributes-queries=no
reuseport=no
daemon=no
socket-dir={job.run_dir}
lua-config-file={lua}
# The upstream is authoritative for both zones; anything else (nothing, in a run) goes there too,
# never to the root servers.
forward-zones=allow.test=127.0.0.1:{job.upstream_port},miss.test=127.0.0.1:{job.upstream_port}
forward-zones-recurse=.=127.0.0.1:{job.upstream_port}
query-local-address=127.0.0.1
security-poll-suffix=
dont-query=
dnssec=off
max-cache-entries=1000000
quiet=yes
loglevel=3
disable-syslog=yes
""")
    return Launch(["pdns_recursor", f"--config-dir={job.run_dir}"], job.run_dir, "RPZ `CNAME .` (NXDOMAIN)")


def betblock(job: Job, command: str) -> Launch:
    """betblock with the benchmark TOML: one agency, action nxdomain, hits to the run dir
    (``betblock``) or to the default SQLite store (``betblock-default``).

    Hit recording, ACL and EDE keep their defaults (on): the benchmark measures the
    resolver as an ISP runs it. `command` may use {config}, {port}, {dir}, {blocklist},
    {upstream}; it is split like a shell would, but no shell runs it.
    """
    conf = job.run_dir / "betblock.toml"
    q = json.dumps  # a JSON string is a valid TOML basic string
    if job.peer == "betblock-default":
        # As shipped: every hit into the SQLite store under data_dir, no JSON lines.
        hits = "# [hits]: the defaults (the SQLite hit store under data_dir).\n"
    else:
        hits = f"""[hits]
# Every blocked answer is recorded as a JSON line (the resolver issue's recorder). The hit
# store is measured by bench/hitlog.py and by the betblock-default peer, or here with
# BETBLOCK_HITS__STORE=sqlite in the environment (it overrides this file).
jsonl_path = {q(str(job.run_dir / "hits.jsonl"))}
store = "none"
"""
    conf.write_text(f"""# Written by bench/peers.py for one benchmark run.
# State (feed store, saved snapshot, hit store) in the fresh run directory: a saved snapshot
# from an earlier run must not shorten the measured list load.
data_dir = {q(str(job.run_dir / "var"))}

[dns]
listen = [{q(f"127.0.0.1:{job.port}")}]

[upstream]
servers = [{q(f"127.0.0.1:{job.upstream_port}")}]

[cache]
max_entries = 200000

{hits}
[http]
listen = "127.0.0.1:0"

[warning_page]
listen = "127.0.0.1:0"

[log]
level = "warning"

[[agencies]]
id = "bench"
name = "Benchmark agency"
action = "nxdomain"
lists = [{q(str(job.blocklist))}]
""")
    values = {"config": str(conf), "port": str(job.port), "dir": str(job.run_dir),
              "blocklist": str(job.blocklist), "upstream": f"127.0.0.1:{job.upstream_port}"}
    # Only our own placeholders are replaced; any other braces pass through untouched.
    argv = [PLACEHOLDER.sub(lambda m: values[m.group(1)], word) for word in shlex.split(command)]
    return Launch(argv, REPO, "agency action nxdomain")


def launch(job: Job, betblock_cmd: str) -> Launch:
    if job.peer == "unbound":
        return unbound(job)
    if job.peer == "pdns":
        return pdns(job)
    return betblock(job, betblock_cmd)
