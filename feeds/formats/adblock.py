"""Adblock-style list, the subset AdGuard Home applies to DNS: ``||name^`` blocks,
``@@||name^`` exceptions, ``!`` comments, bare names, ``|URL`` anchors and ``$important``.

Owns deciding which adblock rules have a DNS meaning. Rules that only make sense in a browser
(cosmetic ``##``, regular expressions, paths, other ``$`` modifiers) are rejected with a
reason rather than widened into a whole-host block. Must not import aiohttp, SQL or resolver
code.
"""

from __future__ import annotations

from feeds.entry import ParseResult
from feeds.formats._common import Collector, decode_lines, has_undecodable
from feeds.normalize import InvalidName, normalize_detail

# $important only raises a rule's priority inside AdGuard; with one list per agency it
# changes nothing, so it is accepted and dropped. Every other modifier narrows or rewrites
# the rule (client, dnstype, dnsrewrite, badfilter ...) and cannot be honoured here.
ACCEPTED_MODIFIERS = frozenset({"important"})
_COSMETIC = ("##", "#@#", "#?#", "#$#", "#%#")


def parse(data: bytes) -> ParseResult:
    """Entries (``allow=True`` for ``@@`` exceptions) and rejects; ``meta["header"]`` holds a
    leading ``[Adblock Plus 2.0]``-style header when present."""
    lines, _ = decode_lines(data)
    out = Collector()
    meta: dict[str, object] = {"lines": len(lines)}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] == "!":
            continue
        if any(marker in text for marker in _COSMETIC):
            out.reject(number, line, "cosmetic rule (not a DNS rule)")
            continue
        if text[0] == "#":
            continue  # AdGuard also reads '#' lines as comments (hosts-file habit)
        if text[0] == "[" and text[-1] == "]":
            meta.setdefault("header", text)
            continue
        if has_undecodable(text):
            out.reject(number, line, "undecodable bytes (not utf-8)")
            continue
        try:
            host, allow = _rule_host(text)
            name, wildcard, had_path = normalize_detail(host)
        except InvalidName as exc:
            out.reject(number, line, exc.reason)
            continue
        if had_path:
            out.reject(number, line, "path rule (not applicable to DNS)")
            continue
        out.add(name if not wildcard else "*." + name, number, text=line, allow=allow)
    return out.result(meta)


def _rule_host(text: str) -> tuple[str, bool]:
    """The host part of one rule and whether it is an exception; InvalidName otherwise."""
    allow = text.startswith("@@")
    body = text[2:] if allow else text
    if len(body) > 1 and body[0] == "/" and body[-1] == "/":
        raise InvalidName("regular-expression rule not supported")
    body, dollar, modifiers = body.partition("$")
    if dollar:
        for modifier in modifiers.split(","):
            modifier = modifier.strip()
            if modifier not in ACCEPTED_MODIFIERS:
                raise InvalidName(f"unsupported modifier ${modifier}")
    if body.startswith("||"):
        host = body[2:]
    elif body.startswith("|"):
        host = body[1:]  # start-of-address anchor, usually before a URL
    else:
        host = body
    # One separator (^) or end anchor (|) may close the rule; anything after it, or a '*'
    # other than a leading "*.", makes it a pattern that no single DNS name expresses.
    if host.endswith("|"):
        host = host[:-1]
    if host.endswith("^"):
        host = host[:-1]
    pattern_chars = host[2:] if host.startswith("*.") else host
    if any(c in pattern_chars for c in "^|*") or not host:
        raise InvalidName("unsupported pattern")
    return host, allow
