"""The one typed settings tree of betblock.

Owns every configurable value, its default and its description, the TOML loader with
``BETBLOCK_SECTION__KEY`` environment overrides, and the start-up error message that names each
bad key and value. Each component receives its own section through its constructor.

Must not import any other betblock package: everything else depends on this one.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.errors import BetblockError

DEFAULT_CONFIG = Path(__file__).with_name("betblock.toml")
RESOLV_CONF = Path("/etc/resolv.conf")
MIN_TOKEN_LENGTH = 16  # a guessable admin token is refused at start-up


class ConfigError(BetblockError):
    """The configuration is invalid; the message names each bad key and value."""


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


Action = Literal["redirect", "nxdomain", "nodata", "refused"]
# What a listed name covers: itself only, itself and every name below it, or only the names below.
Scope = Literal["exact", "subtree", "below"]
# enforce: listed names get the sinkhole; observe (RPZ's "log only"): they resolve normally and
# every hit on them is recorded as "would block", so an admin can look before enforcing.
Mode = Literal["enforce", "observe"]
SourceKind = Literal["url", "file", "push", "xfr"]
# The names of feeds.formats.FORMATS (tests/feeds_plane checks they agree): config may not
# import feeds, and a typo in a format must fail at start-up naming the key.
FormatName = Literal[
    "plain", "hosts", "adblock", "rpz", "csv", "json", "pl-mf", "it-adm", "ch-gespa", "ch-esbk", "cz-mf"
]
# Formats that verify the list against a second file, and the parser option that file fills.
INTEGRITY_OPTION = {"it-adm": "control", "ch-gespa": "signature"}


class SourceSettings(_Section):
    """Where one agency's list comes from: a URL we poll, a file we watch, or the push API."""

    kind: SourceKind = Field(
        default="url",
        description="url (polled over HTTPS), file (watched), push (PUT/PATCH /v1/feeds/<agency>) or xfr (an RPZ zone followed from a primary over AXFR/IXFR).",
    )
    id: str = Field(
        default="",
        pattern=r"^$|^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Stable id of the source within its agency (history is kept per source); empty derives one from the kind, URL or path.",
    )
    format: FormatName = Field(
        default="plain",
        description="Feed format: plain, hosts, adblock, rpz, csv, json, pl-mf, it-adm, ch-gespa, ch-esbk or cz-mf.",
    )
    options: dict[str, str | int | float | bool] = Field(
        default={}, description="Options of the format parser, e.g. {column = \"domain\", delimiter = \";\"} for csv."
    )
    url: str = Field(default="", description="kind = url: the list's URL (https:// in production).")
    path: Path | None = Field(default=None, description="kind = file: the list file; relative to the config file.")
    control_url: str = Field(
        default="",
        description="URL of the file that authenticates the list: the SHA-256 control file (it-adm) or the detached signature (ch-gespa).",
    )
    control_file: Path | None = Field(
        default=None, description="The same for a file source: checksum or signature file beside the list."
    )
    public_key: Path | None = Field(
        default=None, description="PEM public key (or certificate) that signs the list (ch-gespa); relative to the config file."
    )
    poll_interval: float = Field(
        default=0.0,
        ge=0,
        description="Seconds between polls of a URL (0 = 3600) or between checks of a file's size and time (0 = 5).",
    )
    timeout: float = Field(default=60.0, gt=0, description="kind = url: seconds one whole download may take.")
    connect_timeout: float = Field(default=10.0, gt=0, description="kind = url: seconds to connect to the server.")
    read_timeout: float = Field(
        default=20.0, gt=0, description="kind = url: seconds without a byte of the body before the download fails."
    )
    retries: int = Field(
        default=3, ge=0, le=10, description="kind = url: retries after a network error, a timeout or a 5xx, with backoff."
    )
    retry_backoff: float = Field(
        default=2.0, ge=0, description="kind = url: seconds before the first retry; doubled for each further one."
    )
    max_bytes: int = Field(
        default=64 << 20, ge=1024, description="Largest list accepted from this source, bytes; larger is refused (413 on push)."
    )

    primary: str = Field(default="", description="kind = xfr: the primary's address, host:port (port 53 if left out).")
    zone: str = Field(default="", description="kind = xfr: the RPZ zone to follow, e.g. rpz.example.")
    tsig_key: str = Field(default="", description="kind = xfr: name of the TSIG key (hmac-sha256) that signs the transfer requests.")
    tsig_secret: SecretStr | None = Field(default=None, description="kind = xfr: that key's base64 secret; unset sends unsigned requests.")

    @model_validator(mode="after")
    def _complete(self) -> SourceSettings:
        if self.kind == "url" and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"source kind 'url' needs url = 'https://...' (got {self.url!r})")
        if self.kind == "file" and self.path is None:
            raise ValueError("source kind 'file' needs path")
        if self.kind == "xfr":
            if not (self.primary and self.zone):
                raise ValueError("source kind 'xfr' needs primary and zone")
            _host_port(self.primary, 53)
            if self.format != "rpz":
                raise ValueError("source kind 'xfr' reads RPZ zones: set format = 'rpz'")
            if self.tsig_secret is not None:
                if not self.tsig_key:
                    raise ValueError("tsig_secret needs tsig_key (the key's name)")
                try:
                    base64.b64decode(self.tsig_secret.get_secret_value(), validate=True)
                except binascii.Error:
                    raise ValueError("tsig_secret is not base64") from None
        if (self.control_url or self.control_file) and self.format not in INTEGRITY_OPTION:
            raise ValueError(f"control_url/control_file apply to formats {sorted(INTEGRITY_OPTION)} only")
        if self.control_url and self.kind != "url":
            raise ValueError("control_url applies to kind 'url' (use control_file for a file)")
        if self.public_key is not None and self.format != "ch-gespa":
            raise ValueError("public_key applies to format 'ch-gespa' only")
        return self

    @property
    def key(self) -> str:
        """The source's id in the store: ``id``, or one derived from what it reads."""
        if self.id:
            return self.id
        if self.kind == "push":
            return "push"
        if self.kind == "url":
            return "url:" + self.url
        if self.kind == "xfr":
            return f"xfr:{self.zone.rstrip('.').lower()}@{self.primary}"
        return "file:" + str(self.path)

    @property
    def interval(self) -> float:
        if self.poll_interval:
            return self.poll_interval
        return 3600.0 if self.kind == "url" else 5.0


class AgencySettings(_Section):
    """One agency whose list is enforced, and how its listed names are answered."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Short stable id, e.g. pl-mf.")
    name: str = Field(default="", description="Display name, used in Extended DNS Error text and reports.")
    jurisdiction: str = Field(default="", description="ISO country code or region of the agency.")
    precedence: int = Field(
        default=0, description="When two agencies list the same name, the higher precedence decides the answer."
    )
    action: Action = Field(
        default="nxdomain",
        description="redirect (A/AAAA to the warning page, NODATA otherwise), nxdomain, nodata or refused.",
    )
    mode: Mode = Field(
        default="enforce",
        description="enforce (listed names get the sinkhole) or observe (RPZ's log only: they resolve normally, hits are "
        "recorded as would-block). An admin's switch (`betblock feeds mode`, the admin page) is stored and wins over this.",
    )
    scope: Scope = Field(
        default="subtree",
        description="What a listed name covers in formats that do not say (plain, csv, json, the agency formats): "
        "subtree (the name and every name below it), exact (the name only) or below (only the names under it). "
        "rpz, hosts and adblock say it themselves (see README, Feeds).",
    )
    redirect_ipv4: list[ipaddress.IPv4Address] = Field(
        default=[], description="Warning-page IPv4 addresses for the redirect action."
    )
    redirect_ipv6: list[ipaddress.IPv6Address] = Field(
        default=[], description="Warning-page IPv6 addresses; none means AAAA gets NODATA."
    )
    lists: list[Path] = Field(
        default=[],
        description="Plain list files, one domain per line; relative to the config file. Each is a watched file source of format plain.",
    )
    sources: list[SourceSettings] = Field(
        default=[], description="Where the agency's list comes from (see agencies[].sources[].*); the agency's list is the union of its sources."
    )
    token_sha256: str = Field(
        default="",
        pattern=r"^$|^[0-9a-fA-F]{64}$",
        description="SHA-256 (hex) of the agency's push-API bearer token; `betblock token-hash` makes a token and its hash. Empty: no push.",
    )
    churn_limit: float = Field(
        default=0.05,
        ge=0,
        description="Largest share of a source's previous list an update may add, remove or change; a bigger update is quarantined for an admin.",
    )
    churn_floor: int = Field(
        default=10,
        ge=0,
        description="Updates that add, remove or change at most this many entries are never quarantined for churn (5% of a short list is no entry).",
    )
    min_entries: int = Field(
        default=1,
        ge=0,
        description="An update leaving a source with fewer entries than this is quarantined; an update that empties a list always is.",
    )
    deadline_hours: float = Field(
        default=0.0,
        ge=0,
        description="Legal deadline, hours, to enforce a listing or lift a removal (PL 48, CH 120, CZ 360): the compliance report flags entries over it, status a source not refreshed within it. 0: none.",
    )

    @model_validator(mode="after")
    def _redirect_needs_address(self) -> AgencySettings:
        if self.action == "redirect" and not (self.redirect_ipv4 or self.redirect_ipv6):
            raise ValueError(f"agency {self.id!r}: action 'redirect' needs redirect_ipv4 or redirect_ipv6")
        keys = [s.key for s in self.all_sources()]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"agency {self.id!r}: source {sorted(dup)[0]!r} appears twice")
        if sum(1 for s in self.sources if s.kind == "push") > 1:
            raise ValueError(f"agency {self.id!r}: at most one push source")
        if any(s.kind == "push" for s in self.sources) and not self.token_sha256:
            raise ValueError(f"agency {self.id!r}: a push source needs token_sha256")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def all_sources(self) -> list[SourceSettings]:
        """``sources`` plus one plain file source per entry of the older ``lists`` key."""
        legacy = [SourceSettings(kind="file", format="plain", path=p) for p in self.lists]
        return legacy + list(self.sources)

    def push_source(self) -> SourceSettings | None:
        return next((s for s in self.sources if s.kind == "push"), None)


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


class HitsSettings(_Section):
    """The hit log: recording of blocked queries, its store, privacy and retention."""

    enabled: bool = Field(default=True, description="Record a hit for every blocked answer.")
    buffer_size: int = Field(
        default=100_000, ge=100, description="Hits held in memory between flushes before aggregation starts."
    )
    flush_interval: float = Field(
        default=1.0, gt=0, description="Seconds between writes of buffered hits; a crash loses at most this much."
    )
    store: Literal["sqlite", "postgres", "none"] = Field(
        default="sqlite",
        description="Where hits are stored: sqlite (embedded, WAL), postgres (one store for a fleet) or none.",
    )
    sqlite_path: Path | None = Field(
        default=None, description="SQLite hit store file; unset means data_dir/hits.sqlite."
    )
    postgres_dsn: SecretStr | None = Field(
        default=None, description="PostgreSQL connection string for store = postgres, e.g. postgresql://user@host/db."
    )
    postgres_schema: str = Field(
        default="betblock_hits",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema that holds the hit tables (created on start).",
    )
    privacy: Literal["full", "truncate", "hash", "none"] = Field(
        default="full",
        description="What is kept of the client address: full, truncate (to truncate_ipv4/truncate_ipv6), "
        "hash (keyed HMAC: hits of one client link up without its address) or none.",
    )
    truncate_ipv4: int = Field(default=24, ge=0, le=32, description="Prefix length kept of IPv4 clients when privacy = truncate.")
    truncate_ipv6: int = Field(default=56, ge=0, le=128, description="Prefix length kept of IPv6 clients when privacy = truncate.")
    hash_secret: SecretStr | None = Field(
        default=None, description="Key of the client HMAC when privacy = hash; changing it unlinks old hits from new."
    )
    retention_days: int = Field(default=90, ge=1, description="Hits older than this many days are deleted.")
    retention_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between runs of the retention job (also run at start)."
    )
    jsonl_path: Path | None = Field(
        default=None,
        description="Also append hits as JSON lines to this file (for shipping to a SIEM); '-' means standard output, unset writes none.",
    )
    node: str = Field(default="", description="Name of this resolver node in hit records; empty means the hostname.")
    checkpoint_path: Path | None = Field(
        default=None,
        description="File of signed checkpoints of the hash chain (its length, head and anchor, kept outside the store; "
        "`hits verify` checks the store against the newest); unset means data_dir/hits.checkpoints.",
    )
    checkpoint_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the checkpoints; unset means a random key in <checkpoint file>.key, created once (mode 0600).",
    )
    on_damaged: Literal["keep", "move_aside"] = Field(
        default="keep",
        description="A damaged hit store at start (unreadable SQLite file, or shorter than its checkpoint): keep leaves the "
        "file untouched and runs DNS with the hit log failed (hits held in memory, then counted lost); move_aside renames "
        "it (and its checkpoints) to <name>.damaged-<UTC time> and starts a new store.",
    )

    @model_validator(mode="after")
    def _needs(self) -> HitsSettings:
        if self.privacy == "hash" and (self.hash_secret is None or not self.hash_secret.get_secret_value()):
            raise ValueError("privacy 'hash' needs hash_secret")
        if self.store == "postgres" and self.postgres_dsn is None:
            raise ValueError("store 'postgres' needs postgres_dsn")
        return self

    def sqlite_file(self, data_dir: Path) -> Path:
        """The SQLite file: ``sqlite_path``, or ``data_dir/hits.sqlite``."""
        return self.sqlite_path if self.sqlite_path is not None else data_dir / "hits.sqlite"

    def checkpoint_file(self, data_dir: Path) -> Path:
        """The checkpoint file: ``checkpoint_path``, or ``data_dir/hits.checkpoints``."""
        return self.checkpoint_path if self.checkpoint_path is not None else data_dir / "hits.checkpoints"


class HttpSettings(_Section):
    """The HTTP listener: agency push API, admin API and page, health endpoints."""

    enabled: bool = Field(default=True, description="Run the HTTP listener.")
    listen: str = Field(default="127.0.0.1:8053", description="Address of the HTTP listener, host:port.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for admin routes. Unset: the token in admin_token_file (generated on first start); "
        "both unset disables admin routes (401). At least 16 characters: use a long random value.",
    )
    admin_token_file: Path | None = Field(
        default=Path("admin-token"),
        description="When admin_token is unset: the file (relative to data_dir) holding the admin token, generated "
        "with mode 0600 on first start and reused; `betblock admin-token` prints it. Empty: no generated token.",
    )
    auth_max_failures: int = Field(
        default=10,
        ge=1,
        description="Failed authentications (wrong token, login or session) one client address (IPv6: its /64) may "
        "make before it gets 429 with Retry-After: 1 s, then doubling with each further failure.",
    )
    auth_lockout_max: float = Field(
        default=900.0,
        gt=0,
        description="Longest lockout, seconds; also how long a client's failures are remembered without a new one.",
    )
    max_body_bytes: int = Field(
        default=64 << 20, ge=1024, description="Largest request body accepted (an agency's push); larger gets 413."
    )
    max_form_bytes: int = Field(
        default=16 << 10,
        ge=1024,
        le=1 << 20,
        description="Largest body of a request without credentials (the login form) and of any body read whole; "
        "larger gets 413 before it is read. Pushes stream up to max_body_bytes once their token is checked.",
    )
    max_connections: int = Field(
        default=0,
        ge=0,
        description="Connections each HTTP listener (this one and the warning page) holds at once; when full, the oldest "
        "idle one is closed for a new one. 0: a sixteenth of the open-files limit (64 at 1,024, at most 1,024), "
        "so that HTTP clients never take the descriptors DNS needs.",
    )
    idle_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds a connection may take to send complete request headers, from connecting or from its last "
        "answer (keep-alive); then it is closed. Also the deadline of a request body sent without credentials.",
    )
    body_timeout: float = Field(
        default=300.0, gt=0, description="Seconds an authenticated request body (a push) may take to arrive in full."
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        _host_port(v, 8053)
        return v

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the admin token must be at least {MIN_TOKEN_LENGTH} characters (got {len(v.get_secret_value())}); "
                "make a random one with `betblock token-hash`"
            )
        return v

    def address(self) -> tuple[str, int]:
        return _host_port(self.listen, 8053)


class WarningPageText(_Section):
    """The warning page of one agency, in the agency's language."""

    language: str = Field(default="en", description="Language tag of the page (html lang), e.g. pl, it, cs.")
    title: str = Field(default="", description="Page title; empty means a generic English title.")
    text: str = Field(
        default="", description="Paragraph shown under the title; {name} and {agency} are replaced. Plain text."
    )
    link: str = Field(default="", description="Link to the agency's register or explanation page.")
    link_text: str = Field(default="", description="Text of that link; empty shows the URL.")


class WarningPageSettings(_Section):
    """The warning page betblock serves for agencies without one of their own."""

    enabled: bool = Field(default=True, description="Serve the warning page.")
    listen: str = Field(
        default="127.0.0.1:8080",
        description="Address of the warning-page HTTP listener; point an agency's redirect_ipv4/ipv6 here (port 80 in production).",
    )
    pages: dict[str, WarningPageText] = Field(
        default={}, description="Per-agency page text, keyed by agency id; agencies without one get the generic text."
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        _host_port(v, 80)
        return v

    def address(self) -> tuple[str, int]:
        return _host_port(self.listen, 80)


class XfrSettings(_Section):
    """betblock as an RPZ primary: the compiled policy served as RPZ zones over zone transfers."""

    enabled: bool = Field(default=False, description="Serve the policy as RPZ zones (AXFR/IXFR over TCP, SOA over UDP and TCP).")
    listen: list[str] = Field(
        default=["127.0.0.1:1054"], description="Addresses of the zone-transfer listener, UDP and TCP, as host:port or [v6]:port."
    )
    zone: str = Field(
        default="betblock.rpz",
        description="Name of the combined zone (precedence and allowlist applied, passthru for allowlisted names).",
    )
    agency_zone: str = Field(
        default="{agency}.rpz",
        description="Name of each agency's own zone; {agency} is replaced by the agency id. Empty: no per-agency zones.",
    )
    keys: dict[str, SecretStr] = Field(
        default={}, description="TSIG keys (hmac-sha256) by key name, each a base64 secret, e.g. {fleet = \"base64...\"}."
    )
    require_tsig: bool = Field(
        default=True, description="Refuse a transfer or SOA query that is not signed by one of keys (except from allow_unsigned)."
    )
    allow: list[str] = Field(
        default=["127.0.0.0/8", "::1/128"], description="Networks that may transfer the zones; everyone else gets REFUSED."
    )
    allow_unsigned: list[str] = Field(
        default=[],
        description="Networks of secondaries that cannot sign (Unbound has no TSIG for transfers); they may transfer unsigned.",
    )
    notify: list[str] = Field(
        default=[], description="Secondaries told of each new serial (NOTIFY, RFC 1996), as host:port or [v6]:port."
    )
    notify_key: str = Field(default="", description="Name of the key in keys that signs NOTIFY messages; empty sends them unsigned.")
    history: int = Field(
        default=64, ge=1, description="Zone versions kept for IXFR; a secondary older than that gets a full AXFR."
    )
    refresh: int = Field(default=300, ge=1, description="SOA refresh, seconds: how often a secondary asks for a new serial without NOTIFY.")
    retry: int = Field(default=60, ge=1, description="SOA retry, seconds.")
    expire: int = Field(default=604800, ge=1, description="SOA expire, seconds: how long a secondary serves without reaching us.")
    minimum: int = Field(default=60, ge=0, description="SOA minimum (negative TTL), seconds.")

    @field_validator("listen", "notify")
    @classmethod
    def _check_addresses(cls, v: list[str]) -> list[str]:
        for item in v:
            _host_port(item, 53)
        return v

    @field_validator("allow", "allow_unsigned")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    @model_validator(mode="after")
    def _check_keys(self) -> XfrSettings:
        for name, secret in self.keys.items():
            try:
                base64.b64decode(secret.get_secret_value(), validate=True)
            except binascii.Error:
                raise ValueError(f"xfr key {name!r}: the secret is not base64") from None
        if self.notify_key and self.notify_key not in self.keys:
            raise ValueError(f"notify_key {self.notify_key!r} is not one of keys")
        if self.enabled and self.require_tsig and not self.keys and not self.allow_unsigned:
            raise ValueError("require_tsig needs at least one key in keys (or networks in allow_unsigned)")
        if self.agency_zone and "{agency}" not in self.agency_zone:
            raise ValueError("agency_zone must contain {agency}")
        return self

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [_host_port(item, 53) for item in self.listen]

    def notify_addresses(self) -> list[tuple[str, int]]:
        return [_host_port(item, 53) for item in self.notify]


class LogSettings(_Section):
    """Application logging (not the hit log)."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Lowest level logged.")
    format: Literal["json", "console"] = Field(default="json", description="json for machines, console for people.")


class Settings(BaseSettings):
    """The whole configuration of one betblock node."""

    model_config = SettingsConfigDict(
        env_prefix="BETBLOCK_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    dns: DnsSettings = Field(default_factory=DnsSettings, description="DNS listeners.")
    acl: AclSettings = Field(default_factory=AclSettings, description="Client access control.")
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings, description="Upstream resolvers.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Answer cache.")
    rrl: RrlSettings = Field(default_factory=RrlSettings, description="Response rate limiting (UDP).")
    policy: PolicySettings = Field(default_factory=PolicySettings, description="Sinkhole and allowlist.")
    agencies: list[AgencySettings] = Field(default=[], description="Agencies whose lists are enforced.")
    hits: HitsSettings = Field(default_factory=HitsSettings, description="Hit recording.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP API and pages.")
    warning_page: WarningPageSettings = Field(
        default_factory=WarningPageSettings, description="Warning page for blocked names."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Application log.")
    xfr: XfrSettings = Field(default_factory=XfrSettings, description="RPZ zones over zone transfers (the fleet).")
    data_dir: Path = Field(
        default=Path("var"),
        description="Directory for state (feed store, hit store, compiled snapshot); relative to the working directory.",
    )
    base_dir: Path = Field(
        default=Path("."), description="Directory that relative paths are resolved against (the config file's)."
    )
    umask: str = Field(
        default="077",
        pattern=r"^0?[0-7]{3}$",
        description="File-mode mask of `betblock serve` (octal): the default keeps the data directory (0700) and every "
        "state file (0600: the hit log holds subscriber addresses) private to the service's user.",
    )

    @model_validator(mode="after")
    def _unique_agencies(self) -> Settings:
        seen: set[str] = set()
        for agency in self.agencies:
            if agency.id in seen:
                raise ValueError(f"agency id {agency.id!r} appears twice")
            seen.add(agency.id)
        return self

    def resolve_path(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; explicit arguments (tests) beat both.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file") is not None:
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"  {loc}: {msg}{shown}"


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (TOML) plus ``BETBLOCK_*`` variables; raise ConfigError naming every bad key."""
    toml_path = Path(path) if path is not None else DEFAULT_CONFIG
    if not toml_path.is_file():
        raise ConfigError(f"config file {toml_path} does not exist")
    try:
        import tomllib

        tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {toml_path} is not valid TOML: {exc}") from exc

    bound = type("_FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": toml_path}})
    overrides.setdefault("base_dir", toml_path.resolve().parent)
    try:
        loaded = bound(**overrides)
    except ValidationError as exc:
        lines = [f"invalid configuration in {toml_path}:"] + [_describe(e) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    # Return the plain type so that callers never see the loader subclass.
    return Settings.model_validate(loaded.model_dump())


def field_table() -> list[tuple[str, str, str]]:
    """(key, default, description) for every field, for the README table and `betblock config-doc`."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            key = f"{prefix}{name}"
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            if info.is_required():
                default = "(required)"
            elif info.default_factory is not None:
                default = repr(info.default_factory())
            else:
                default = repr(info.default)
            rows.append((key, default, info.description or ""))

    walk(Settings, "")
    for prefix, model in (
        ("agencies[].", AgencySettings),
        ("agencies[].sources[].", SourceSettings),
        ("warning_page.pages.<agency>.", WarningPageText),
    ):
        for name, info in model.model_fields.items():
            default = "(required)" if info.is_required() else repr(info.default)
            rows.append((f"{prefix}{name}", default, info.description or ""))
    return rows
