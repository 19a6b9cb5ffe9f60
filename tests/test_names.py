"""The name codec: wire <-> text with RFC 1035 escapes, round trips for any bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from config.names import to_text, to_wire


def test_examples() -> None:
    assert to_wire(b"www.casino.test") == b"\x03www\x06casino\x04test\x00"
    assert to_wire("www.casino.test.") == to_wire(b"www.casino.test")
    assert to_wire(b".") == to_wire(b"") == b"\x00" and to_text(b"\x00") == "."
    assert to_text(b"\x03a.b\x04test\x00") == "a\\046b.test"  # a dot inside a label
    assert to_wire(b"a\\046b.test") == to_wire(b"a\\.b.test") == b"\x03a.b\x04test\x00"
    assert to_text(b"\x03a=b\x04te.t\x00") == "a\\061b.te\\046t"
    assert to_text(b"\x02\xc3\xa9\x04test\x00") == "\\195\\169.test"


label = st.binary(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(label, min_size=0, max_size=6))
def test_any_wire_name_round_trips(parts: list[bytes]) -> None:
    wire = b"".join(bytes((len(p),)) + p for p in parts) + b"\x00"
    assert to_wire(to_text(wire)) == wire


def test_every_text_form_of_the_codebase_agrees() -> None:
    from betblock.warning import _dotted
    from feeds.lists import from_wire
    from hits.recorder import dotted
    from hits.writer import name_text
    from resolver.wire import wire_to_name

    wire = b"\x03a.b\x03x=y\x04test\x00"
    assert name_text(wire) == from_wire(wire) == wire_to_name(wire) == _dotted(wire) == dotted(wire).decode() == to_text(wire)
