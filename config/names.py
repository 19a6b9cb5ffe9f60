"""The one name codec: DNS names between wire format and text (RFC 1035 presentation).

Owns how a name is written wherever betblock shows or stores one as text (hit log, JSON lines,
feed store, lookup, warning page) and how text becomes wire format (feeds, allowlist, lookup).
Text form: labels joined by dots; a byte other than a letter, a digit, ``-`` or ``_`` is
written ``\\DDD`` (decimal, as dig and BIND do for such bytes), so a label holding a dot reads
``a\\046b.test``, never ``a.b.test``. Reading text accepts ``\\DDD`` and ``\\X`` escapes
(RFC 1035 5.1). The root is ``.`` as text and ``b"\\x00"`` as wire.

In ``config``, the base layer, so that every package (hits and the resolver included) may use
it; imports nothing of betblock but the error base.
"""

from __future__ import annotations

import re

from config.errors import BetblockError

_LEN = [bytes((i,)) for i in range(256)]
_PLAIN = re.compile(rb"[A-Za-z0-9_.-]*").fullmatch
_ESCAPE = re.compile(rb"\\(?:([0-9]{3})|(.))", re.DOTALL)
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_BYTE_TEXT = [chr(c) if c in _SAFE else f"\\{c:03d}" for c in range(256)]
MAX_WIRE = 255


class NameError_(BetblockError, ValueError):
    """Text that is not a DNS name (empty label, label over 63 octets, name over 255)."""


def labels(wire: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, root excluded."""
    out = []
    off = 0
    while wire[off]:
        n = wire[off]
        out.append(wire[off + 1 : off + 1 + n])
        off += n + 1
    return out


def to_text(wire: bytes) -> str:
    """``b"\\x03www\\x04test\\x00"`` -> ``"www.test"`` (no trailing dot; ``"."`` for the root)."""
    parts = labels(wire)
    if not parts:
        return "."
    text = b".".join(parts)
    if _PLAIN(text) and text.count(b".") == len(parts) - 1:
        return text.decode("ascii")
    return ".".join("".join([_BYTE_TEXT[c] for c in part]) for part in parts)


def to_wire(text: bytes | str) -> bytes:
    """``b"a.test"`` or ``"a.test."`` -> ``b"\\x01a\\x04test\\x00"``; escapes are read (RFC 1035).

    Case is kept (callers lower-case what they match on). The fast path, a name without
    escapes, is what a million-line list costs: one split and one join."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    if b"\\" not in text:
        if text.endswith(b"."):
            text = text[:-1]
        if not text:
            return b"\x00"
        return b"".join([_LEN[len(p)] + p for p in text.split(b".")]) + b"\x00"
    return _escaped_to_wire(text)


def _escaped_to_wire(text: bytes) -> bytes:
    parts: list[bytes] = []
    label = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == 0x5C:  # backslash
            m = _ESCAPE.match(text, i)
            if m is None:
                raise NameError_(f"dangling escape in {text!r}")
            if m.group(1) is not None:
                value = int(m.group(1))
                if value > 255:
                    raise NameError_(f"escape over 255 in {text!r}")
                label.append(value)
            else:
                label += m.group(2)
            i = m.end()
        elif c == 0x2E:  # an unescaped dot ends a label
            if not label:
                raise NameError_(f"empty label in {text!r}")
            parts.append(bytes(label))
            label = bytearray()
            i += 1
        else:
            label.append(c)
            i += 1
    if label:
        parts.append(bytes(label))
    if any(len(p) > 63 for p in parts):
        raise NameError_(f"label longer than 63 octets in {text!r}")
    wire = b"".join([_LEN[len(p)] + p for p in parts]) + b"\x00"
    if len(wire) > MAX_WIRE:
        raise NameError_(f"name longer than 255 octets: {text!r}")
    return wire
