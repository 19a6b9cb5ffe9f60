"""Sinkhole answers for blocked names, built by patching the query's bytes.

Owns the per-rule precomputation (answer records, the SOA of negative answers, the OPT record
with its Extended DNS Error) done once when a snapshot is installed, and ``Sinkhole.render``,
which the hot path calls to build an answer with a few concatenations. The RPZ actions
without an answer of their own are here too: ``drop`` renders nothing (``drop`` is set) and
``tcp-only`` renders a truncated answer over UDP and nothing over TCP (the query is then
answered as if the name were not listed, as Unbound and BIND do). A rule in observe mode gets an
``Observer``: it renders nothing, so the query takes that same no-answer branch and resolves as
an unlisted name would, and only there does the pipeline read ``observe`` to record the hit
("would block"); enforced names pay nothing for the mode.

Must not import the server, the cache or the upstream client.
"""

from __future__ import annotations

import ipaddress

from feeds.snapshot import PolicySnapshot, Rule
from resolver.wire import (
    C_IN,
    CD,
    EDE_CENSORED,
    HEADER,
    NOERROR,
    NXDOMAIN,
    QR,
    RA,
    RD,
    REFUSED,
    RR_FIXED,
    TC,
    T_A,
    T_AAAA,
    T_SOA,
    U16,
    U32,
    ede_option,
    Query,
    opt_record,
)

_NAME_PTR = b"\xc0\x0c"  # the question name, always at offset 12
_HOSTMASTER = b"\x0ahostmaster"
# SOA timers: refresh, retry, expire (the serial and minimum are per snapshot and rule).
_SOA_TIMERS = U32.pack(3600) + U32.pack(600) + U32.pack(86400)
_SOA_RDLEN = 2 + len(_HOSTMASTER) + 2 + 20


class Sinkhole:
    """Precomputed answer parts for one rule; ``render`` assembles an answer for one query."""

    __slots__ = ("rule", "drop", "tcp_only", "observe", "_by_type", "_other", "_soa_head", "_soa_tail", "_opt", "_opt_do")

    def __init__(self, rule: Rule, serial: int, udp_size: int) -> None:
        self.rule = rule
        self.drop = rule.action == "drop"
        self.tcp_only = rule.action == "tcp-only"
        self.observe = False
        ttl = rule.ttl
        nodata = (NOERROR, 0, b"", True)
        if rule.action == "redirect":
            a = b"".join(
                _NAME_PTR + RR_FIXED.pack(T_A, C_IN, ttl, 4) + ipaddress.IPv4Address(ip).packed for ip in rule.ipv4
            )
            aaaa = b"".join(
                _NAME_PTR + RR_FIXED.pack(T_AAAA, C_IN, ttl, 16) + ipaddress.IPv6Address(ip).packed
                for ip in rule.ipv6
            )
            # (rcode, ancount, answer records, whether a SOA goes in the authority section)
            self._by_type = {
                T_A: (NOERROR, len(rule.ipv4), a, False) if rule.ipv4 else nodata,
                T_AAAA: (NOERROR, len(rule.ipv6), aaaa, False) if rule.ipv6 else nodata,
            }
            self._other = nodata
        elif rule.action == "nxdomain":
            self._by_type = {}
            self._other = (NXDOMAIN, 0, b"", True)
        elif rule.action == "nodata":
            self._by_type = {}
            self._other = nodata
        elif rule.action in ("drop", "tcp-only"):
            self._by_type = {}
            self._other = (NOERROR, 0, b"", False)
        else:  # refused
            self._by_type = {}
            self._other = (REFUSED, 0, b"", False)
        self._soa_head = U16.pack(T_SOA) + U16.pack(C_IN) + U32.pack(ttl) + U16.pack(_SOA_RDLEN)
        # The SOA minimum is the sinkhole TTL, so that resolvers below us cache the negative
        # answer exactly as long as a positive one (RFC 2308 section 5).
        self._soa_tail = U32.pack(serial & 0xFFFFFFFF) + _SOA_TIMERS + U32.pack(ttl)
        ede = ede_option(EDE_CENSORED, f"blocked by order of {rule.agency_name} ({rule.agency})")
        self._opt = opt_record(udp_size, False, ede)
        self._opt_do = opt_record(udp_size, True, ede)

    def render(self, data: bytes, q: Query, offset: int, udp: bool = True) -> bytes | None:
        """The answer to query ``q`` in ``data``; ``offset`` is where the listed name starts in
        the question name (the SOA of a negative answer is owned by the listed name). None for
        ``drop``, and for ``tcp-only`` over TCP."""
        qid, qflags, name_end, qtype, _qclass, edns, do, _version = q
        if self.drop:
            return None
        if self.tcp_only:
            if not udp:
                return None
            flags = QR | RA | TC | (qflags & (RD | CD))
            if edns:
                return HEADER.pack(qid, flags, 1, 0, 0, 1) + data[12 : name_end + 4] + (self._opt_do if do else self._opt)
            return HEADER.pack(qid, flags, 1, 0, 0, 0) + data[12 : name_end + 4]
        rcode, ancount, answers, soa = self._by_type.get(qtype, self._other)
        if soa:
            ptr = U16.pack(0xC00C + offset)
            auth = ptr + self._soa_head + ptr + _HOSTMASTER + ptr + self._soa_tail
        else:
            auth = b""
        flags = QR | RA | (qflags & (RD | CD)) | rcode
        if edns:
            head = HEADER.pack(qid, flags, 1, ancount, 1 if soa else 0, 1)
            return head + data[12 : name_end + 4] + answers + auth + (self._opt_do if do else self._opt)
        head = HEADER.pack(qid, flags, 1, ancount, 1 if soa else 0, 0)
        return head + data[12 : name_end + 4] + answers + auth


class Observer(Sinkhole):
    """A rule in observe mode: never an answer of its own (the name is resolved normally and
    the hit recorded as "would block"); ``rule`` keeps what enforcing would answer."""

    __slots__ = ()

    def __init__(self, rule: Rule, serial: int, udp_size: int) -> None:
        super().__init__(rule, serial, udp_size)
        self.drop = self.tcp_only = False
        self.observe = True

    def render(self, data: bytes, q: Query, offset: int, udp: bool = True) -> bytes | None:
        return None


def build_sinkholes(snapshot: PolicySnapshot, udp_size: int) -> tuple[Sinkhole | None, ...]:
    """One Sinkhole per rule id of the snapshot (index 0, the allowlist, has none)."""
    return tuple(
        None if rule is None else (Observer if rule.observe else Sinkhole)(rule, snapshot.version // 1000, udp_size)
        for rule in snapshot.rules
    )
