"""Client access control: which addresses may use the resolver.

Owns the allow-list of client networks and a bounded memo of per-address decisions, so that the
hot path pays one dict lookup per packet. Must not import the server or the pipeline.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_MEMO_LIMIT = 65536


class Acl:
    """Allows the configured networks and nothing else (an ISP resolver must never be open)."""

    __slots__ = ("_v4", "_v6", "memo")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        nets = list(networks)
        self._v4 = [n for n in nets if n.version == 4]
        self._v6 = [n for n in nets if n.version == 6]
        # address text -> decision; the hot path reads it directly before calling allowed().
        self.memo: dict[str, bool] = {}

    def allowed(self, host: str) -> bool:
        ok = self.memo.get(host)
        if ok is None:
            ok = self._check(host)
            if len(self.memo) >= _MEMO_LIMIT:
                self.memo.clear()  # bounded: a scan from many sources must not grow memory
            self.memo[host] = ok
        return ok

    def _check(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
        nets = self._v4 if addr.version == 4 else self._v6
        return any(addr in n for n in nets)
