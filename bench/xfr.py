#!/usr/bin/env python3
"""Figures for the fleet (issue 12): AXFR of a big RPZ zone and a 1 % change from PUT to
enforced on followers. A benchmark, not a test: run by hand on an idle box (`make bench-xfr`).

    .venv/bin/python bench/xfr.py [--entries 1000000] [--change 0.01] [--axfr-only] [--patch] [--unbound-only]

1. A betblock primary gets ``--entries`` names by PUT (one push agency, redirect) and serves
   them as the combined RPZ zone (two records per name).
2. AXFR of that zone with `dig` (TSIG), timed, from betblock and from NSD serving the same zone
   (loaded from the text of betblock's AXFR): seconds, bytes, messages; ratio betblock ÷ NSD.
3. Followers: Unbound (`rpz:` with `primary:`) and a betblock node with an ``xfr`` source,
   both told by NOTIFY. A PUT that replaces ``--change`` of the names; the time from the PUT
   to each follower blocking a new name (polled every 10 ms) and to Unbound unblocking a
   removed one.

Scratch files go to bench/run/xfr/ (not kept). Ports are chosen free on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dnsutil import first_address  # noqa: E402
from tests.nodes import nsd_conf, nsd_zone_section  # noqa: E402

RUN = ROOT / "bench" / "run" / "xfr"
PY = sys.executable
KEY = "fleet-key"
SECRET = base64.b64encode(b"betblock fleet bench key 32 byte").decode()
TOKEN = "bench-token-0123456789abcdef"
ZONE = "betblock.rpz"
SINKHOLE = "198.51.100.99"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def names(n: int, tag: str) -> list[str]:
    return [f"site{i:07d}-{tag}.bench" for i in range(n)]


def sha256_hex(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def wait(cond, what: str, seconds: float, step: float = 0.01) -> float:
    """Poll ``cond`` until true (every ``step`` seconds); the seconds it took. Fails after ``seconds``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > seconds:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


def a_record(port: int, name: str) -> str | None:
    """First A address of ``name`` from 127.0.0.1:port over UDP (None: none or no answer)."""
    import dns.exception
    import dns.message
    import dns.query

    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError):
        return None
    return first_address(r)


def soa_serial(port: int) -> int | None:
    import dns.exception
    import dns.message
    import dns.query
    import dns.tsigkeyring

    q = dns.message.make_query(ZONE, "SOA")
    q.use_tsig(dns.tsigkeyring.from_text({KEY: ("hmac-sha256", SECRET)}), KEY)
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1)
    except (dns.exception.Timeout, OSError):
        return None
    return int(r.answer[0][0].serial) if r.answer else None


def put(http_port: int, body: bytes) -> float:
    start = time.monotonic()
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/feeds/pl-mf", data=body, method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        doc = json.loads(r.read())
    if doc.get("status") not in ("applied", "unchanged"):
        raise SystemExit(f"PUT not applied: {doc}")
    return time.monotonic() - start


def patch(http_port: int, add: list[str], remove: list[str]) -> float:
    start = time.monotonic()
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/feeds/pl-mf", data=json.dumps({"add": add, "remove": remove}).encode(),
        method="PATCH", headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        doc = json.loads(r.read())
    if doc.get("status") != "applied":
        raise SystemExit(f"PATCH not applied: {doc}")
    return time.monotonic() - start


def ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dig_axfr(port: int, tsig: bool) -> tuple[float, int, int, int, str]:
    """(seconds, records, messages, bytes, the zone's text) of one AXFR with dig."""
    argv = ["dig", "-p", str(port), "@127.0.0.1", ZONE, "AXFR", "+onesoa"]
    if tsig:
        argv += ["-y", f"hmac-sha256:{KEY}:{SECRET}"]
    start_t = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    took = time.monotonic() - start_t
    m = re.search(r"XFR size: (\d+) records \(messages (\d+), bytes (\d+)\)", out)
    if m is None:
        raise SystemExit(f"dig AXFR failed: {out[-500:]}")
    return took, int(m[1]), int(m[2]), int(m[3]), out


def betblock_config(home: Path, dns_port: int, http_port: int, xfr_port: int, rest: str) -> Path:
    cfg = home / "betblock.toml"
    cfg.write_text(f"""data_dir = "{home / 'var'}"
[dns]
listen = ["127.0.0.1:{dns_port}"]
[http]
listen = "127.0.0.1:{http_port}"
max_body_bytes = 268435456
[warning_page]
enabled = false
[upstream]
servers = ["127.0.0.1:9"]
[hits]
store = "none"
[xfr]
enabled = true
listen = ["127.0.0.1:{xfr_port}"]
keys = {{"{KEY}" = "{SECRET}"}}
allow_unsigned = ["127.0.0.1/32"]
history = 8
{rest}""")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--axfr-only", action="store_true", help="stop after the AXFR figures")
    ap.add_argument("--patch", action="store_true", help="make the change by PATCH of the changed names, not PUT of the list")
    ap.add_argument("--unbound-only", action="store_true", help="no betblock follower (its first load of 1M takes minutes)")
    args = ap.parse_args()
    for tool in ("dig", "nsd", "unbound"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt-get install dnsutils nsd unbound)")
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # -- the primary ------------------------------------------------------------------
        p_dns, p_http, p_xfr = free_port(), free_port(), free_port()
        u_port, f_dns, f_http, f_xfr, nsd_port = free_port(), free_port(), free_port(), free_port(), free_port()
        home = RUN / "primary"
        home.mkdir()
        cfg = betblock_config(home, p_dns, p_http, p_xfr, f"""notify = ["127.0.0.1:{u_port}", "127.0.0.1:{f_xfr}"]
[[agencies]]
id = "pl-mf"
action = "redirect"
redirect_ipv4 = ["{SINKHOLE}"]
token_sha256 = "{sha256_hex(TOKEN)}"
churn_limit = 0.05
sources = [{{kind = "push", format = "plain", max_bytes = 268435456}}]
""")
        primary = start([PY, "-m", "betblock.cli", "serve", "--config", str(cfg)], home / "log")
        procs.append(primary)
        wait(lambda: ready(p_http), "the primary", 120, 0.2)
        listed = names(args.entries, "a")
        took = put(p_http, ("\n".join(listed) + "\n").encode())
        wait(lambda: a_record(p_dns, listed[-1]) == SINKHOLE, "the primary to enforce the list", 600, 0.1)
        print(f"primary: PUT of {args.entries:,} names applied in {took:.1f} s")

        # -- AXFR: betblock and NSD --------------------------------------------------------
        while True:  # the zones follow the install in the background: until the zone has them all
            t_b, rec_b, msg_b, bytes_b, text = dig_axfr(p_xfr, tsig=True)
            if rec_b >= 2 * args.entries:
                break
            time.sleep(1)
        nsd_home = RUN / "nsd"
        nsd_home.mkdir()
        (nsd_home / "zone").write_text("\n".join(
            line for line in text.splitlines() if line and not line.startswith(";") and "\tTSIG\t" not in line
        ) + "\n")
        zone = nsd_zone_section(ZONE, nsd_home / "zone", "  provide-xfr: 127.0.0.1 NOKEY\n")
        (nsd_home / "nsd.conf").write_text(nsd_conf(nsd_home, nsd_port, zone))
        nsd = start(["nsd", "-d", "-c", str(nsd_home / "nsd.conf")], nsd_home / "log")
        procs.append(nsd)
        wait(lambda: _soa_plain(nsd_port), "NSD to load the zone", 900, 0.5)
        t_n, rec_n, msg_n, bytes_n, _ = dig_axfr(nsd_port, tsig=False)
        print(f"AXFR of {args.entries:,} entries ({rec_b:,} records): betblock {t_b:.2f} s, {bytes_b / 1e6:.1f} MB, "
              f"{msg_b} messages; NSD 4.6 {t_n:.2f} s, {bytes_n / 1e6:.1f} MB, {msg_n} messages; "
              f"ratio betblock/NSD {t_b / t_n:.2f}x time, {bytes_b / bytes_n:.2f}x bytes")
        stop(nsd)
        if args.axfr_only:
            return

        # -- followers: Unbound and betblock ------------------------------------------------
        u_home = RUN / "unbound"
        u_home.mkdir()
        (u_home / "unbound.conf").write_text(f"""server:
    interface: 127.0.0.1
    port: {u_port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{u_home}"
    pidfile: "{u_home}/unbound.pid"
    use-syslog: no
    verbosity: 0
    do-daemonize: no
    access-control: 127.0.0.0/8 allow
    module-config: "respip iterator"
rpz:
    name: {ZONE}
    primary: 127.0.0.1@{p_xfr}
""")
        started = time.monotonic()
        unbound = start(["unbound", "-d", "-c", str(u_home / "unbound.conf")], u_home / "log")
        procs.append(unbound)
        f_home = RUN / "follower"
        f_home.mkdir()
        f_cfg = betblock_config(f_home, f_dns, f_http, f_xfr, f"""[[agencies]]
id = "hub"
churn_limit = 0.05
[[agencies.sources]]
kind = "xfr"
format = "rpz"
primary = "127.0.0.1:{p_xfr}"
zone = "{ZONE}"
tsig_key = "{KEY}"
tsig_secret = "{SECRET}"
max_bytes = 268435456
poll_interval = 3600
""")
        if not args.unbound_only:
            procs.append(start([PY, "-m", "betblock.cli", "serve", "--config", str(f_cfg)], f_home / "log"))
        t_u0 = wait(lambda: a_record(u_port, listed[-1]) == SINKHOLE, "Unbound to load the zone", 1800, 0.2)
        if not args.unbound_only:
            wait(lambda: a_record(f_dns, listed[-1]) == SINKHOLE, "the betblock follower to load the zone", 3600, 0.2)
            print(f"first load from betblock (AXFR): Unbound {t_u0:.1f} s, betblock follower {time.monotonic() - started:.1f} s")
        else:
            print(f"first load from betblock (AXFR): Unbound {t_u0:.1f} s")

        n = max(1, int(args.entries * args.change))
        added = names(n, "b")
        removed = listed[:n]
        new_list = listed[n:] + added
        body = ("\n".join(new_list) + "\n").encode()
        how = "PATCH" if args.patch else "PUT"
        start_t = time.monotonic()
        if args.patch:
            patch(p_http, added, removed)
        else:
            put(p_http, body)
        t_put = time.monotonic() - start_t
        probe = added[n // 2]
        wait(lambda: a_record(u_port, probe) == SINKHOLE, "Unbound to block a new name", 600)
        t_u = time.monotonic() - start_t
        wait(lambda: a_record(u_port, removed[n // 2]) != SINKHOLE, "Unbound to unblock a removed name", 600)
        t_u_unblock = time.monotonic() - start_t
        print(f"{args.change:.0%} change ({n:,} names out, {n:,} in): {how} answered in {t_put:.2f} s; "
              f"enforced on Unbound {t_u:.2f} s after the {how} started (removed name unblocked {t_u_unblock:.2f} s)")
        if not args.unbound_only:
            wait(lambda: a_record(f_dns, probe) == SINKHOLE, "the betblock follower to block a new name", 1800)
            t_f = time.monotonic() - start_t
            print(f"  on the betblock follower {t_f:.2f} s; ratio betblock follower/Unbound {t_f / t_u:.2f}x")
    finally:
        for proc in reversed(procs):
            stop(proc)


def _soa_plain(port: int) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    try:
        r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError):
        return False
    return bool(r.answer)


if __name__ == "__main__":
    main()
