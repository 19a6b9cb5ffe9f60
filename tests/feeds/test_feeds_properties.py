"""Properties over every format: arbitrary input never escapes as anything but FeedError, and
line-based formats account for every line (an entry or a reject, never silently dropped)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.entry import FeedError, ParseResult
from feeds.formats import FORMATS, hosts, plain
from feeds.normalize import InvalidName, normalize

# Bytes that look like feeds: name characters, separators, markup, quotes, CR/LF, high bytes.
_FEEDISH = st.lists(
    st.sampled_from(
        [b"a", b"b.example", b".", b"*.", b"\n", b"\r\n", b" ", b"\t", b"#", b";", b",", b'"', b"(", b")",
         b"<", b">", b"/", b"PozycjaRejestru", b"AdresDomeny", b"Rejestr", b"{", b"}", b"[", b"]", b":",
         b"$ORIGIN", b"CNAME", b"A", b"IN", b"SOA", b"@@||", b"^", b"$", b"#Version: 1", b"0.0.0.0",
         b"\xff", b"\xc5\x82", b"\x81", b"\x00", b"1", b"http://", b"xn--", b"Internetov\xe1 str\xe1nka",
         b"\xc2\xb2", b"\xd9\xa1", b"\r", b"01.01.2020", b"2020-01-01T00:00:00", b"DataWpisu", b"'", b"&amp;"]
    ),
    max_size=60,
).map(b"".join)


# No per-example deadline: a loaded CI runner must not turn a slow example into a failure.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@given(data=st.one_of(st.binary(max_size=400), _FEEDISH))
@settings(RELAXED, max_examples=150)
def test_arbitrary_bytes_raise_only_feed_error(fmt: str, data: bytes) -> None:
    try:
        result = FORMATS[fmt](data)
    except FeedError as exc:
        assert str(exc)
        return
    assert isinstance(result, ParseResult)
    total_lines = data.count(b"\n") + 1
    for entry in result.entries:
        assert 1 <= entry.line <= total_lines
        assert normalize(entry.name) == (entry.name, False)
    for reject in result.rejects:
        assert 1 <= reject.line <= total_lines and reject.reason


_LINE = st.text(st.sampled_from(list("abz09-_.*: /#@\t") + ["ł", "\u00ad", "Ａ"]), max_size=30)
_FIELD = st.text(st.sampled_from(list("abz09-_.*:/@") + ["ł", "\u00ad", "Ａ"]), min_size=1, max_size=30)


@given(st.lists(_LINE, max_size=40))
@RELAXED
def test_plain_accounts_for_every_line(lines: list[str]) -> None:
    result = plain.parse("\n".join(lines).encode())
    content = [i for i, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]
    seen = sorted([e.line for e in result.entries] + [r.line for r in result.rejects])
    assert seen == content
    for entry in result.entries:
        raw = lines[entry.line - 1].split("#")[0]
        assert normalize(raw) == (entry.name, entry.wildcard)


@given(st.lists(st.lists(_FIELD, min_size=1, max_size=3), max_size=20))
@RELAXED
def test_hosts_accounts_for_every_name(rows: list[list[str]]) -> None:
    data = "\n".join("0.0.0.0 " + " ".join(names) for names in rows).encode()
    result = hosts.parse(data)
    assert len(result.entries) + len(result.rejects) == sum(len(names) for names in rows)


@given(st.lists(_LINE, max_size=40))
@RELAXED
def test_rejected_lines_are_those_normalize_refuses_or_repeats(lines: list[str]) -> None:
    result = plain.parse("\n".join(lines).encode())
    for reject in result.rejects:
        if reject.reason == "duplicate":
            continue
        with pytest.raises(InvalidName):
            normalize(lines[reject.line - 1].split("#")[0])
