"""The README's follower snippets are the configurations the follower tests run: each line of
a snippet that configures the transfer appears in what tests/xfr/followers.py writes."""

from __future__ import annotations

from pathlib import Path

from tests.xfr import followers
from tests.xfr.primary import KEY_SECRET

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section() -> str:
    start = README.index("## betblock as the policy hub of an existing fleet")
    return README[start : README.index("\n## ", start + 1)]


def test_readme_snippets_are_the_tested_configurations(tmp_path: Path) -> None:
    text = _section()
    assert KEY_SECRET in text  # the README shows the tests' key
    written = {}
    for kind, make in (("unbound", followers.unbound), ("bind", followers.bind), ("pdns", followers.pdns)):
        home = tmp_path / kind
        home.mkdir()
        make(home, 5300, "127.0.0.1:5301", 5302)
        written[kind] = "\n".join(p.read_text() for p in sorted(home.iterdir()))
    for line in ('module-config: "respip iterator"', "name: betblock.rpz", "rpz-log: yes"):
        assert line in text and line in written["unbound"]
    for line in ('response-policy { zone "betblock.rpz"; } min-update-interval 0;', "type secondary;",
                 "algorithm hmac-sha256;"):
        assert line in text.replace("{{", "{") and line in written["bind"]
    for part in ('rpzPrimary(', 'tsigname="fleet-key"', 'tsigalgo="hmac-sha256"', f'tsigsecret="{KEY_SECRET}"'):
        assert part in text and part in written["pdns"]
