"""What the hit log keeps of a client address: full, a truncated network, a keyed hash, or nothing.

Owns ``ClientPrivacy``: one memoised function from the address the resolver saw to the text that
is stored (and to the client network that the statistics group by). Runs in the writer, never on
the hot path. Must not import the resolver.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Literal

Mode = Literal["full", "truncate", "hash", "none"]

_MEMO_CAP = 1 << 20  # distinct clients remembered before the memo starts over


class ClientPrivacy:
    """``apply(address) -> (client, network)``, both text; memoised per address."""

    def __init__(self, mode: Mode, *, ipv4_prefix: int = 24, ipv6_prefix: int = 56, secret: bytes = b"") -> None:
        if mode == "hash" and not secret:
            raise ValueError("privacy mode 'hash' needs a secret")
        self.mode = mode
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.secret = secret
        self._memo: dict[str, tuple[str, str]] = {}

    def apply(self, address: str) -> tuple[str, str]:
        got = self._memo.get(address)
        if got is None:
            if len(self._memo) >= _MEMO_CAP:
                self._memo.clear()
            got = self._memo[address] = self._compute(address)
        return got

    def client(self, address: str) -> str:
        return self.apply(address)[0]

    def network(self, address: str, v4: int = 24, v6: int = 56) -> str:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return address  # not an address (a test's label, a unix socket): keep as it is
        prefix = v4 if ip.version == 4 else v6
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    def _compute(self, address: str) -> tuple[str, str]:
        if self.mode == "none":
            return "", ""
        if self.mode == "hash":
            # Keyed, so that nobody without the secret can test a guessed address against it;
            # 16 bytes of the digest keep clients apart without storing the address.
            digest = hmac.new(self.secret, address.encode(), hashlib.sha256).hexdigest()[:32]
            return digest, digest
        if self.mode == "truncate":
            net = self.network(address, self.ipv4_prefix, self.ipv6_prefix)
            return net, net
        return address, self.network(address)
