"""Switching an agency between observe and enforce at runtime: ``betblock feeds mode`` and
``POST /v1/feeds/{agency}/mode`` against a running node (real sockets, real upstream), the
decision stored with its audit row and winning over the configuration after a restart."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import pytest

from feeds import cli
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import a_records, query, udp
from tests.feeds_plane.helpers import ADMIN, TOKENS, Clock, push_agency
from tests.feeds_plane.test_feeds_manager import Node, blocked

AGENCIES = [
    {"id": "obs", "action": "redirect", "redirect_ipv4": ["198.51.100.7"], "mode": "observe"},
    push_agency("pl-mf"),
]


async def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(cli.feeds, list(argv), out)  # the CLI blocks; the node runs on
    return code, out.getvalue()


async def test_cli_switches_an_observed_agency_to_enforce(
    node: NodeFactory, upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.add("watch.test", "A", "192.0.2.77")
    app = await node(lists={"obs": ["watch.test"], "pl-mf": []}, agencies=AGENCIES, http={"admin_token": ADMIN})
    port = port_of(app)
    assert a_records(await udp(port, query("watch.test"))) == ["192.0.2.77"]  # observed: resolved
    assert app.http is not None and app.http.bound is not None
    base = "http://%s:%d" % app.http.bound
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "var"}"\n[http]\nlisten = "{base.removeprefix("http://")}"\n'
        f'[[agencies]]\nid = "obs"\nmode = "observe"\nlists = ["{tmp_path / "obs.txt"}"]\n'
    )
    monkeypatch.setenv("BETBLOCK_ADMIN_TOKEN", ADMIN)
    code, text = await run("mode", "obs", "enforce", "--reason", "the would-block hits look right", "--config", str(cfg))
    assert code == 0, text
    assert text.startswith("obs: enforce (was observe; policy ")
    assert a_records(await udp(port, query("watch.test"))) == ["198.51.100.7"]  # the very next query
    assert (await run("mode", "nope", "enforce", "--reason", "x", "--config", str(cfg)))[0] == 1  # 404

    code, text = await run("status", "--config", str(cfg))
    assert code == 0 and "OBSERVE MODE" not in text  # the stored switch, not the config's observe
    code, raw = await run("audit", "--config", str(cfg), "--json")
    top = json.loads(raw)[0]
    assert (top["action"], top["agency"], top["actor"]) == ("mode enforce", "obs", "admin")
    assert top["detail"]["reason"] == "the would-block hits look right" and top["detail"]["was"] == "observe"
    assert top["detail"]["operator"]

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        async with s.get(base + "/v1/feeds") as r:
            obs = next(a for a in (await r.json())["agencies"] if a["id"] == "obs")
        assert (obs["mode"], obs["set_by"], obs["config"], obs["reason"]) == ("enforce", "admin", "observe", "the would-block hits look right")
        async with s.post(base + "/v1/feeds/obs/mode", json={"mode": "log-only"}) as r:
            assert r.status == 400
        async with s.post(base + "/v1/feeds/obs/mode", json={"mode": "observe", "reason": "back to watching"}) as r:
            assert r.status == 200
            assert (await r.json())["mode"] == "observe"
    assert a_records(await udp(port, query("watch.test"))) == ["192.0.2.77"]
    code, text = await run("status", "--config", str(cfg))
    assert "OBSERVE MODE (would block only)" in text
    # An agency may not switch itself (or anyone).
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKENS['pl-mf']}"}) as s:
        async with s.post(base + "/v1/feeds/pl-mf/mode", json={"mode": "observe"}) as r:
            assert r.status == 403


async def test_stored_decision_wins_over_the_config_after_a_restart(tmp_path: Path) -> None:
    agencies = [push_agency("pl-mf", mode="observe")]
    first = Node(tmp_path, agencies, clock=Clock())
    await first.m.start()
    await first.m.push("pl-mf", b"kasyno.test\n", actor="t")
    m = first.snap.match(b"\x06kasyno\x04test\x00")
    assert m is not None and m.rule.observe
    out = await first.m.modes.switch("pl-mf", "enforce", actor="admin", reason="checked")
    assert out["mode"] == "enforce" and out["was"] == "observe"
    m = first.snap.match(b"\x06kasyno\x04test\x00")
    assert m is not None and not m.rule.observe and first.snap.observing == ()
    await first.m.flush()
    first.m.close()

    second = Node(tmp_path, agencies, clock=Clock())
    await second.m.start()  # the saved snapshot (enforcing) at once
    assert blocked(second.snap, "kasyno.test") == ("pl-mf",) and not second.snap.match(b"\x06kasyno\x04test\x00").rule.observe  # type: ignore[union-attr]
    run_task = asyncio.ensure_future(second.m.run())
    try:
        await asyncio.wait_for(second.m.loaded.wait(), 10)
        # compiled from the store: the stored decision, not the configuration's observe
        assert second.m.modes.mode("pl-mf") == "enforce"
        assert not second.snap.match(b"\x06kasyno\x04test\x00").rule.observe  # type: ignore[union-attr]
        assert second.m.status("pl-mf")["agencies"][0]["set_by"] == "admin"
    finally:
        run_task.cancel()
        await asyncio.gather(run_task, return_exceptions=True)
        second.m.close()


async def test_lookup_shows_the_mode_api_cli_and_page(node: NodeFactory, tmp_path: Path) -> None:
    app = await node(
        lists={"obs": ["watch.test", "both.test"], "pl-mf": ["both.test"]},
        agencies=[{**AGENCIES[0], "precedence": 99}, {**AGENCIES[1], "churn_floor": 0}],
        http={"admin_token": ADMIN},
    )
    assert app.http is not None and app.http.bound is not None
    base = "http://%s:%d" % app.http.bound
    # an update of pl-mf waits in quarantine: its new name is pending
    assert (await app.feeds.push("pl-mf", b"both.test\n", actor="t")).status in ("applied", "unchanged")
    held = await app.feeds.push("pl-mf", b"both.test\nsoon.test\nsoon2.test\n", actor="t")
    assert held.status == "quarantined"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        async with s.get(base + "/v1/lookup/www.watch.test") as r:
            info = await r.json()
        assert (info["blocked"], info["observed"], info["winner"]["agency"], info["winner"]["mode"]) == (False, True, "obs", "observe")
        assert (info["resolver"]["blocked"], info["resolver"]["observed"]) == (False, True)
        assert [m["mode"] for m in info["matches"]] == ["observe"]
        async with s.get(base + "/v1/lookup/both.test") as r:
            info = await r.json()
        # enforced by pl-mf although the observer has the higher precedence; the observer named too
        assert (info["blocked"], info["winner"]["agency"], info["also_listed_by"]) == (True, "pl-mf", ["obs"])
        assert "observed" not in info and info["resolver"]["blocked"] is True
        async with s.get(base + "/", params={"lookup": "watch.test"}) as r:
            page = await r.text()
        assert "watch.test would be blocked</span> (observe mode" in page and "enforcing would answer redirect" in page
        async with s.get(base + "/", params={"lookup": "soon.test"}) as r:
            page = await r.text()
        assert "soon.test is not blocked yet</span>: listed in an update waiting in quarantine (pl-mf)" in page
        assert "pending: quarantined" in page and f"v{held.version}" in page
        # The agency portal and the compliance report say the feed is only observed.
        async with s.get(base + "/agency", params={"agency": "obs"}) as r:
            portal = await r.text()
        assert '<p id="agency-mode" class="observed">Mode: observe.' in portal
        async with s.get(base + "/agency", params={"agency": "pl-mf"}) as r:
            assert '<p id="agency-mode">Mode: enforce' in await r.text()
        async with s.get(base + "/v1/compliance/obs") as r:
            rep = await r.json()
        assert rep["mode"] == "observe" and {e["status"] for e in rep["entries"]} == {"observed"}

    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "var"}"\n[[agencies]]\nid = "obs"\nname = "OBS"\nmode = "observe"\naction = "nodata"\n'
        f'lists = ["{tmp_path / "obs.txt"}"]\n'
    )
    out = io.StringIO()
    code = await asyncio.to_thread(cli.lookup, ["www.watch.test", "--config", str(cfg)], out)
    assert code == 1  # not blocked
    text = out.getvalue()
    assert text.startswith("www.watch.test: OBSERVED, not blocked: OBS (obs) is in observe mode; it would answer nodata"), text
    assert "[active, observe mode]" in text


async def test_compliance_counts_enforcement_from_the_switch(tmp_path: Path) -> None:
    from feeds.compliance import report

    clock = Clock()
    agencies = [push_agency("pl-mf", mode="observe", deadline_hours=48)]
    n = Node(tmp_path, agencies, clock=clock)
    await n.m.start()
    await n.m.push("pl-mf", b"kasyno.test\n", actor="t")
    received = clock.now
    clock.advance(3600 * 50)  # past the deadline, still only observed
    agency = n.m.agencies["pl-mf"]
    assert n.m.store is not None
    rep = report(n.m.store, agency, clock.now)
    assert (rep["mode"], rep["mode_set"]) == ("observe", {"by": "config"})
    [item] = rep["entries"]
    assert (item["status"], item["enforced_at"], item["late"]) == ("observed", None, True)
    await n.m.modes.switch("pl-mf", "enforce", actor="admin", reason="deadline")
    rep = report(n.m.store, agency, clock.now)
    [item] = rep["entries"]
    assert rep["mode"] == "enforce" and rep["mode_set"]["by"] == "admin"
    assert item["status"] == "enforced" and item["enforce_hours"] == round((clock.now - received) / 3600, 3)
    assert item["late"] and rep["summary"]["enforced"] == 1
    n.m.close()
