"""The one typed settings tree of betblock.

Owns every configurable value, its default and its description, the TOML loader with
``BETBLOCK_SECTION__KEY`` environment overrides, and the start-up error message that names each
bad key and value. Each component receives its own section through its constructor. The
sections the data plane is built from are defined in ``config.sections`` and re-exported here.

Must not import any other betblock package: everything else depends on this one.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.errors import BetblockError

# The data plane's sections live in config.sections (a worker imports only those); they are
# part of this tree, and importable from here, as every other section.
from config.sections import (  # noqa: F401 - re-exported
    RESOLV_CONF,
    AclSettings,
    CacheSettings,
    DnsSettings,
    LogSettings,
    PolicySettings,
    RrlSettings,
    UpstreamSettings,
    _host_port,
    _Section,
    host_port,
    nameservers_from_resolv_conf,
)

DEFAULT_CONFIG = Path(__file__).with_name("betblock.toml")
MIN_TOKEN_LENGTH = 16  # a guessable admin token is refused at start-up


class ConfigError(BetblockError):
    """The configuration is invalid; the message names each bad key and value."""




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
