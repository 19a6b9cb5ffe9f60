"""The settings sections the data plane is built from: DNS listeners, client ACL, upstreams,
cache, rate limiting, policy answers, application log; and the address syntax they share.

Owns those sections' fields, defaults, descriptions and checks. ``config.settings`` puts them in
the one settings tree (and re-exports them); they live apart so that a DNS worker process
(``betblock.worker``) can rebuild its sections without importing the settings loader
(pydantic-settings, TOML, the environment): about 0.1 s of CPU at every worker start here.

Imports pydantic and the standard library only; must not import ``config.settings``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RESOLV_CONF = Path("/etc/resolv.conf")


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def host_port(value: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or bare ``v6`` as (address, port)."""
    return _host_port(value, default_port)


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or bare ``v6``; validates the address."""
    value = value.strip()
    host, port = value, default_port
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {value!r}")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, p = value.split(":")
        port = int(p)
    ipaddress.ip_address(host)  # upstreams and listeners are addresses, never names
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


class DnsSettings(_Section):
    """Where and how the DNS listeners run."""

    listen: list[str] = Field(
        default=["127.0.0.1:1053"],
        description="Addresses the DNS server listens on, UDP and TCP, as host:port or [v6]:port.",
    )
    tcp: bool = Field(default=True, description="Also listen on TCP on the same addresses.")
    tcp_idle_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a TCP client has to send each complete query (a deadline per message, not per "
        "byte) and to read what it was sent; then the connection is closed.",
    )
    tcp_max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open TCP connections at once (at most a quarter of the open-files limit); at the cap the "
        "least recently active idle one is closed to make room, and the new one only when none is idle.",
    )
    tcp_max_connections_per_prefix: int = Field(
        default=64,
        ge=1,
        description="Open TCP connections from one /24 (IPv4) or /56 (IPv6), counted before the ACL; at the "
        "cap that prefix's least recently active idle connection makes room.",
    )
    tcp_max_pending_per_connection: int = Field(
        default=100,
        ge=1,
        description="Queries one TCP connection may have in flight at once; it is not read meanwhile.",
    )
    tcp_max_unsent: int = Field(
        default=1 << 20,
        ge=65536,
        description="Bytes of answers one TCP connection may hold unsent (its client not reading) before it "
        "is closed; it is not read while more than 64 KiB wait.",
    )
    udp_batch: int = Field(
        default=64,
        ge=0,
        le=1024,
        description="UDP datagrams read with one recvmmsg and answered with one sendmmsg (Linux); "
        "0 reads and writes one datagram per system call, as on other platforms.",
    )
    edns_udp_size: int = Field(
        default=1232,
        ge=512,
        le=4096,
        description="UDP payload size we advertise and the largest UDP answer we send (DNS flag day 2020).",
    )
    workers: int | Literal["auto"] = Field(
        default="auto",
        description="Worker processes answering DNS on the same addresses (SO_REUSEPORT, UDP and TCP), the "
        "control plane (feeds, API, hit log, warning page) in a process of its own; \"auto\": one per CPU this "
        "process may use; 0: answer inside the control-plane process (one process, as before).",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one listen address is needed")
        for item in v:
            _host_port(item, 53)
        return v

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 1024:
            raise ValueError("workers must be \"auto\" or a number from 0 to 1024")
        return v

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [_host_port(item, 53) for item in self.listen]

    def worker_count(self) -> int:
        """Worker processes to run: ``workers``, with "auto" as the CPUs this process may use."""
        if self.workers == "auto":
            try:
                return len(os.sched_getaffinity(0))
            except AttributeError:  # no affinity call (not Linux)
                return os.cpu_count() or 1
        return int(self.workers)


class AclSettings(_Section):
    """Which clients may use the resolver; everyone else gets REFUSED."""

    allow: list[str] = Field(
        default=["127.0.0.0/8", "::1/128"],
        description="Client networks allowed to query. An ISP lists its subscriber ranges here; "
        "the default (loopback only) keeps the resolver from ever being open.",
    )

    @field_validator("allow")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.allow]


class UpstreamSettings(_Section):
    """The resolvers that answer everything not blocked."""

    servers: list[str] = Field(
        default=[],
        description="Upstream resolvers as ip, ip:port or [v6]:port, tried in order. "
        "Empty means the nameservers of /etc/resolv.conf, read at start-up.",
    )
    deadline: float = Field(
        default=3.0, gt=0, description="Seconds one client query may take, shared by retries, TCP and failover."
    )
    attempt_timeout: float = Field(
        default=1.0, gt=0, description="Seconds one UDP attempt waits before failing over to the next server."
    )
    max_inflight: int = Field(
        default=10000, ge=1, description="Distinct queries waiting on upstreams at once; more get SERVFAIL."
    )
    ports: int = Field(
        default=128,
        ge=2,
        le=4096,
        description="UDP sockets kept open per upstream server, each on a random source port (as Unbound's "
        "outgoing-range); with the retired ones still waiting for replies, at most twice this many.",
    )
    port_reuse: int = Field(
        default=32,
        ge=1,
        description="Queries (on average) one upstream socket carries before it is replaced by a new one "
        "on a new random port.",
    )

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, v: list[str]) -> list[str]:
        for item in v:
            _host_port(item, 53)
        return v

    def addresses(self, resolv_conf: Path = RESOLV_CONF) -> list[tuple[str, int]]:
        if self.servers:
            return [_host_port(s, 53) for s in self.servers]
        return nameservers_from_resolv_conf(resolv_conf)


def nameservers_from_resolv_conf(path: Path) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of a resolv.conf file, as (address, 53)."""
    found: list[tuple[str, int]] = []
    try:
        text = path.read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%")[0]  # drop an IPv6 zone id
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                continue
            found.append((addr, 53))
    return found


class CacheSettings(_Section):
    """The answer cache (wire answers keyed by name, type, class and DO bit)."""

    max_entries: int = Field(default=100_000, ge=0, description="Answers kept (LRU); 0 disables the cache.")
    min_ttl: int = Field(default=0, ge=0, description="Lower clamp for cached TTLs, seconds.")
    max_ttl: int = Field(default=86400, ge=0, description="Upper clamp for cached TTLs, seconds.")
    max_negative_ttl: int = Field(
        default=3600, ge=0, description="Upper clamp for NXDOMAIN/NODATA cached by their SOA minimum, seconds."
    )
    stale_max_age: int = Field(
        default=86400,
        ge=0,
        description="Serve-stale (RFC 8767): seconds past its expiry an answer is kept and served when every upstream fails; 0 disables (expired answers are dropped).",
    )
    stale_ttl: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="TTL of a stale answer (RFC 8767 recommends 30), and seconds after a failed refresh during which the name is answered stale at once, without asking the upstreams again.",
    )

    @model_validator(mode="after")
    def _order(self) -> CacheSettings:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) is above max_ttl ({self.max_ttl})")
        return self


class RrlSettings(_Section):
    """Response rate limiting of UDP answers per client prefix, with slip (as BIND, NSD, Knot)."""

    enabled: bool = Field(default=True, description="Limit UDP answers per client prefix (TCP is never limited).")
    responses_per_second: int = Field(
        default=1000,
        ge=1,
        description="UDP answers per second one client prefix may get; far above what the subscribers of a /24 ask. "
        "Raise it for prefixes that hide large NATs, or exempt them.",
    )
    window: int = Field(
        default=15,
        ge=1,
        le=3600,
        description="Seconds: a prefix over the limit may owe up to window x rate answers, so it stays limited until it was quiet that long (BIND's window).",
    )
    slip: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Every slip-th limited answer is sent as an empty TC=1 answer so that real clients retry over TCP; the rest are dropped. 0 drops all, 1 slips all.",
    )
    ipv4_prefix: int = Field(default=24, ge=8, le=32, description="IPv4 clients share one account per prefix of this length.")
    ipv6_prefix: int = Field(default=56, ge=16, le=128, description="IPv6 clients share one account per prefix of this length.")
    table_size: int = Field(
        default=100_000,
        ge=100,
        description="Prefix accounts kept (about 200 bytes each); when full, idle and then the oldest go, so a spoofed flood costs bounded memory.",
    )
    exempt: list[str] = Field(
        default=["127.0.0.0/8", "::1/128"],
        description="Client networks never limited. Loopback by default: it cannot be spoofed from outside, and local tools (monitoring, benchmarks) ask from it.",
    )

    @field_validator("exempt")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.exempt]


class PolicySettings(_Section):
    """How blocked names are answered, and what is never blocked."""

    sinkhole_ttl: int = Field(default=300, ge=0, le=86400, description="TTL of sinkhole answers, seconds.")
    allowlist: list[str] = Field(
        default=[],
        description="Names never blocked (overrides every agency), each 'name [scope]': scope subtree (the default: "
        "the name and its subdomains), exact (the name only) or below (only its subdomains).",
    )
    allowlist_files: list[Path] = Field(
        default=[], description="Files of allowlisted names, one 'name [scope]' a line; relative to the config file."
    )
    protected: list[str] = Field(
        default=[],
        description="Names no feed may list: an entry equal to one, below one or above one is rejected with a reason (critical infrastructure, CDNs, own domains).",
    )
    protected_files: list[Path] = Field(
        default=[], description="Plain files of protected names; relative to the config file."
    )
    cname_inspection: bool = Field(
        default=True, description="Sinkhole an upstream answer whose CNAME chain reaches a listed name."
    )


class LogSettings(_Section):
    """Application logging (not the hit log)."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Lowest level logged.")
    format: Literal["json", "console"] = Field(default="json", description="json for machines, console for people.")
