"""Hosts-file format: ``ADDRESS NAME [NAME ...] [# comment]``, as community mirrors publish.

Owns reading hosts files. The address column is the mirror's own sinkhole (0.0.0.0,
127.0.0.1, the agency IP ...), never ours, so it is checked and then dropped; the agency's
configured action applies. Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import ipaddress

from feeds.entry import ParseResult
from feeds.formats._common import Collector, decode_lines, gc_paused, has_undecodable

# Names every stock hosts file maps for the machine itself. Listing them is boilerplate, not a
# block order, and some (localhost.localdomain) would pass the name checks.
BOILERPLATE = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)


def parse(data: bytes) -> ParseResult:
    """Entries and rejects of a hosts file; every name after the address is an entry."""
    with gc_paused():
        return _parse(data)


def _parse(data: bytes) -> ParseResult:
    lines, _ = decode_lines(data)
    out = Collector()
    for number, line in enumerate(lines, 1):
        text = line.partition("#")[0].strip()
        if not text:
            continue
        if has_undecodable(text):
            out.reject(number, line, out.undecodable)
            continue
        fields = text.split()
        try:
            ipaddress.ip_address(fields[0])
        except ValueError:
            out.reject(number, line, "not a hosts line (first field is not an address)")
            continue
        if len(fields) == 1:
            out.reject(number, line, "address without a name")
            continue
        for name in fields[1:]:
            if name.lower() in BOILERPLATE:
                out.reject(number, line, f"hosts boilerplate ({name})")
            else:
                out.add(name, number, text=line)
    return out.result({"lines": len(lines)})
