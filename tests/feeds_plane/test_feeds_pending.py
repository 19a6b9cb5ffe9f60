"""The churn guard's absolute floor, and lookup naming entries that wait in quarantine."""

from __future__ import annotations

import io
import json
from pathlib import Path

from config.auth import sha256_hex
from config.settings import AgencySettings, load_settings
from feeds import cli
from feeds.guard import Change, quarantine_reason
from feeds.manager import FeedManager
from tests.feeds_plane.helpers import TOKENS


def test_the_churn_floor_is_absolute_and_the_reason_reads_in_counts() -> None:
    grows = Change(before=3, after=103, added=100, removed=0, changed=0)  # a short list grows by 100
    assert quarantine_reason(AgencySettings(id="a", churn_floor=100), grows) is None
    reason = quarantine_reason(AgencySettings(id="a", churn_floor=10), grows) or ""
    assert reason.startswith("update changes 33x the list's size (touches 100 entries: +100 -0 ~0 of 3)"), reason
    assert "over the churn floor of 10 entries and over the churn limit 5.0%" in reason
    # A big list: the share decides, the floor does not shield a 6 % update.
    big = quarantine_reason(AgencySettings(id="a", churn_floor=10), Change(1000, 1060, 60, 0, 0)) or ""
    assert "6.0% of the list" in big and "over the churn limit 5.0%" in big
    assert quarantine_reason(AgencySettings(id="a", churn_floor=100), Change(1000, 1060, 60, 0, 0)) is None


async def test_lookup_names_an_entry_waiting_in_quarantine(tmp_path: Path) -> None:
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(
        f"""
data_dir = "{tmp_path / 'var'}"
[[agencies]]
id = "pl-mf"
churn_floor = 0
token_sha256 = "{sha256_hex(TOKENS['pl-mf'])}"
[[agencies.sources]]
kind = "push"
"""
    )
    m = FeedManager(load_settings(cfg), lambda _s: None)
    await m.start()
    assert (await m.push("pl-mf", b"a.test\nb.test\n", actor="t")).status == "applied"
    held = await m.push("pl-mf", b"a.test\nb.test\nnew.test\n", actor="agency:pl-mf")
    assert held.status == "quarantined"
    await m.flush()
    m.close()

    out = io.StringIO()
    assert cli.lookup(["www.new.test", "--config", str(cfg)], out) == 1  # not blocked: exit 1 as before
    text = out.getvalue()
    assert "not blocked yet: listed in an update waiting in quarantine (pl-mf)" in text, text
    assert f"pending: pl-mf v{held.version} lists new.test" in text and "churn" in text
    out = io.StringIO()
    cli.lookup(["new.test", "--config", str(cfg), "--json"], out)
    info = json.loads(out.getvalue())
    assert info["blocked"] is False and [(p["agency"], p["version"]) for p in info["pending"]] == [("pl-mf", held.version)]
    out = io.StringIO()
    cli.lookup(["other.test", "--config", str(cfg)], out)
    assert "no agency lists it" in out.getvalue()
