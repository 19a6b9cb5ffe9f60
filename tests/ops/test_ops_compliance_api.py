"""The compliance report and self-test as an operator reaches them: the admin API of a running
node and the ``betblock compliance`` command beside it, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import aiohttp

from betblock import compliance
from betblock.app import App
from tests.conftest import NodeFactory, port_of

ADMIN = "compliance-admin-token-0123456789"
LISTED = ["casino.test", "poker.test", "allowed.test"]


async def _start(node: NodeFactory) -> tuple[App, str]:
    # allowed.test is listed but allowlisted by the operator: the resolver forwards it, which
    # is exactly what the self-test must catch.
    app = await node(
        lists={"pl-mf": LISTED},
        agencies=[{"id": "pl-mf", "deadline_hours": 48}],
        policy={"allowlist": ["allowed.test"]},
        http={"admin_token": ADMIN},
    )
    await app.feeds.flush()  # the start-up list is in the store
    host, port = app.http.bound  # type: ignore[union-attr]
    return app, f"http://{host}:{port}"


async def test_report_and_self_test_over_the_admin_api(node: NodeFactory) -> None:
    app, base = await _start(node)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/v1/compliance/pl-mf") as r:
            assert r.status == 401
        async with s.get(f"{base}/v1/compliance/pl-mf", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.get(f"{base}/v1/compliance/nobody", headers=auth) as r:
            assert r.status == 404
        async with s.get(f"{base}/v1/compliance/pl-mf?format=xml", headers=auth) as r:
            assert r.status == 400
        async with s.get(f"{base}/v1/compliance/pl-mf", headers=auth) as r:
            assert r.status == 200
            rep = await r.json()
        assert rep["deadline_hours"] == 48 and rep["summary"]["late"] == 0
        assert sorted(e["name"] for e in rep["entries"]) == sorted(LISTED)
        assert {e["status"] for e in rep["entries"]} == {"enforced"}
        assert all(e["enforced_at"] and e["received_at"] for e in rep["entries"])
        async with s.get(f"{base}/v1/compliance/pl-mf?format=csv", headers=auth) as r:
            assert r.status == 200 and r.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert sorted(row["name"] for row in rows) == sorted(LISTED)

        async with s.post(f"{base}/v1/compliance/pl-mf/self-test") as r:
            assert r.status == 401
        async with s.post(f"{base}/v1/compliance/pl-mf/self-test?sample=0", headers=auth) as r:
            assert r.status == 400
        async with s.post(f"{base}/v1/compliance/pl-mf/self-test", headers=auth) as r:
            assert r.status == 200
            test = await r.json()
    assert (test["sampled"], test["sinkholed"], test["ok"]) == (3, 2, False)
    assert [(f["name"], f["rcode"], f["addresses"]) for f in test["failures"]] == [("allowed.test", "NOERROR", ["192.0.2.10"])]
    ok = {r["name"]: r for r in test["results"] if r["sinkholed"]}
    assert set(ok) == {"casino.test", "poker.test"} and ok["casino.test"]["rcode"] == "NXDOMAIN"
    assert test["server"] == f"127.0.0.1:{port_of(app)}"


async def test_the_command_reads_the_store_beside_the_server_and_self_tests_it(node: NodeFactory, tmp_path: Path) -> None:
    app, _base = await _start(node)
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f"""
data_dir = "{tmp_path / 'var'}"
[dns]
listen = ["127.0.0.1:{port_of(app)}"]
[[agencies]]
id = "pl-mf"
deadline_hours = 48
lists = ["{tmp_path / 'pl-mf.txt'}"]
"""
    )

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = compliance.main([*argv, "--config", str(cfg)], out)
        return code, out.getvalue()

    code, text = await asyncio.to_thread(run, "pl-mf", "--format", "csv")
    assert code == 0  # nothing late
    assert sorted(r["name"] for r in csv.DictReader(io.StringIO(text))) == sorted(LISTED)
    code, text = await asyncio.to_thread(run, "pl-mf")
    assert json.loads(text)["summary"]["enforced"] == 3
    code, text = await asyncio.to_thread(run, "pl-mf", "--self-test")  # the server from dns.listen
    result = json.loads(text)
    assert code == 1 and [f["name"] for f in result["failures"]] == ["allowed.test"]
    code, _ = await asyncio.to_thread(run, "pl-mf", "--self-test", "--sample", "1", "--server", "127.0.0.1:1")
    assert code == 1  # nothing answers there: every sampled name fails
    code, _ = await asyncio.to_thread(run, "nobody")
    assert code == 2
