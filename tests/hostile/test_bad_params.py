"""Every route of the HTTP API, with a table of bad parameter values: a 4xx with a JSON error,
never a 500 (issue 8, item 12: nan, inf and 1e300 as times, integers >= 2^63 as types, cursors
and versions, a 100k-deep JSON body). One real `betblock serve` for the module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from config.auth import sha256_hex
from tests.dnsutil import HOST
from tests.fakedns import FakeDns
from tests.procutil import Serve, node_toml

ADMIN = "bad-params-admin-token-0123456789"
AGENCY = "bad-params-agency-token-0123456789"
pytestmark = pytest.mark.asyncio(loop_scope="module")
AUTH = {"Authorization": f"Bearer {ADMIN}"}

# Raw query text (already %-encoded where needed).
BAD = [
    "nan", "NaN", "inf", "-inf", "infinity", "1e300", "-1e300", "1e309",
    str(2**63), str(2**64), "-" + str(2**63 + 1), "9" * 30, "-1", "1.5", "0x10",
    "%00", "a%00b", "%0A", "%ED%A0%80", "%FF", "%C3", "x" * 5000, "%D9%A1%D9%A2", " ", "",
]
# route -> the query parameters it reads
ROUTES: list[tuple[str, str, tuple[str, ...]]] = [
    ("GET", "/v1/hits", ("since", "until", "qtype", "type", "cursor", "limit", "name", "agency", "client", "action", "exact")),
    ("GET", "/v1/hits/export", ("since", "until", "qtype", "name", "agency", "client", "action", "format")),
    ("GET", "/v1/hits/stats", ("days", "top")),
    ("GET", "/v1/hits/status", ("x",)),
    ("GET", "/v1/lookup", ("name",)),
    ("GET", "/", ("since", "until", "qtype", "cursor", "limit", "lookup", "name", "agency", "client")),
    ("GET", "/v1/feeds", ("x",)),
    ("GET", "/v1/feeds/pl-mf", ("limit",)),
    ("GET", "/v1/feeds/pl-mf/versions/1", ("limit", "offset")),
    ("POST", "/v1/feeds/pl-mf/refresh", ("source",)),
    ("GET", "/v1/allowlist", ("x",)),
    ("GET", "/v1/lookup/casino.test", ("x",)),
    ("GET", "/v1/audit", ("agency", "limit")),
    ("GET", "/v1/compliance/pl-mf", ("format",)),
    ("POST", "/v1/compliance/pl-mf/self-test", ("sample",)),
    ("GET", "/metrics", ("x",)),
    ("GET", "/healthz", ("x",)),
    ("PUT", "/v1/feeds/pl-mf", ("format",)),
]
# path templates -> bad path values
PATHS = [
    ("GET", "/v1/feeds/pl-mf/versions/{}"),
    ("POST", "/v1/feeds/pl-mf/versions/{}/approve"),
    ("POST", "/v1/feeds/pl-mf/versions/{}/reject"),
    ("GET", "/v1/feeds/{}"),
    ("PUT", "/v1/allowlist/{}"),
    ("DELETE", "/v1/allowlist/{}"),
    ("GET", "/v1/lookup/{}"),
    ("GET", "/v1/compliance/{}"),
]
BAD_PATH = [str(2**63), str(2**64), "9" * 40, "%00", "a%00b", "%ED%A0%80", "%FF", "x" * 5000, "%2E%2E", "nan"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Serve]:
    tmp_path = tmp_path_factory.mktemp("bad-params")
    upstream = await FakeDns().start()
    (tmp_path / "list.txt").write_text("casino.test\n")
    rest = f"""[[agencies]]
id = "pl-mf"
token_sha256 = "{sha256_hex(AGENCY)}"
lists = ["list.txt"]
[[agencies.sources]]
kind = "push"
"""
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(node_toml(tmp_path, 0, upstream, rest, http=f'admin_token = "{ADMIN}"\n'))
    serve = await Serve.start(cfg)
    yield serve
    code = await serve.stop()
    await upstream.stop()
    assert code == 0, serve.log()


async def _ask(s: aiohttp.ClientSession, node: Serve, method: str, path_and_query: str, **kw: object) -> tuple[int, str]:
    url = URL(f"http://{HOST}:{node.http_port}{path_and_query}", encoded=True)
    async with s.request(method, url, headers=AUTH, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


@pytest.mark.parametrize(("method", "path", "params"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_bad_query_values_are_client_errors(node: Serve, method: str, path: str, params: tuple[str, ...]) -> None:
    failures = []
    async with aiohttp.ClientSession() as s:
        for key in params:
            for value in BAD:
                status, text = await _ask(s, node, method, f"{path}?{key}={value}", data=b"" if method == "PUT" else None)
                if status >= 500 or (path.startswith("/v1/") and status >= 400 and not text.startswith("{")):
                    failures.append((key, value[:20], status, text[:120]))
    assert not failures, failures
    assert "internal error" not in node.log()


@pytest.mark.parametrize(("method", "template"), PATHS, ids=[f"{m} {t}" for m, t in PATHS])
async def test_bad_path_values_are_client_errors(node: Serve, method: str, template: str) -> None:
    failures = []
    async with aiohttp.ClientSession() as s:
        for value in BAD_PATH:
            status, text = await _ask(s, node, method, template.format(value))
            if status >= 500 or (status >= 400 and not text.startswith("{")):
                failures.append((value[:20], status, text[:120]))
    assert not failures, failures


@pytest.mark.parametrize(
    "query",
    [
        "/v1/hits?since=nan", "/v1/hits?until=inf", "/v1/hits?since=1e300", "/v1/hits?until=-inf",
        "/v1/hits?qtype=" + str(2**63), "/v1/hits?qtype=65536", "/v1/hits?cursor=" + str(2**63),
        "/v1/hits/export?since=nan", "/v1/hits/export?format=ndjson&until=1e300", "/v1/hits/export?qtype=" + str(2**64),
        "/v1/feeds/pl-mf/versions/" + str(2**63), "/v1/hits?agency=%00", "/v1/audit?agency=a%00b",
    ],
)
async def test_the_reported_cases_are_400_with_a_json_error(node: Serve, query: str) -> None:
    async with aiohttp.ClientSession() as s:
        url = URL(f"http://{HOST}:{node.http_port}{query}", encoded=True)
        async with s.get(url, headers=AUTH) as r:
            assert r.status == 400, await r.text()
            assert r.content_type == "application/json"
            body = await r.json()
            assert body["error"], body


async def test_posts_of_bad_version_numbers_are_400(node: Serve) -> None:
    async with aiohttp.ClientSession() as s:
        for action in ("approve", "reject"):
            status, text = await _ask(s, node, "POST", f"/v1/feeds/pl-mf/versions/{2**63}/{action}")
            assert status == 400, text


async def test_the_admin_page_shows_a_bad_filter_as_an_error(node: Serve) -> None:
    async with aiohttp.ClientSession() as s:
        status, text = await _ask(s, node, "GET", "/?since=nan&cursor=" + str(2**64))
        assert status == 200 and 'id="filter-error"' in text


async def test_a_deeply_nested_json_body_is_400(node: Serve) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    async with aiohttp.ClientSession() as s:
        status, text = await _ask(s, node, "PATCH", "/v1/feeds/pl-mf", data=deep)
        assert status == 400 and "nested" in text, text
        status, text = await _ask(s, node, "PATCH", "/v1/feeds/pl-mf", data=b'{"add": ' + b"[" * 30_000 + b"]" * 30_000 + b"}")
        assert status == 400, text
        status, text = await _ask(s, node, "PUT", "/v1/allowlist/ok.test", data=b"[" * 30_000 + b"]" * 30_000)
        assert status == 400, text
        status, text = await _ask(s, node, "PUT", "/v1/feeds/pl-mf?format=json", data=deep)
        assert 400 <= status < 500, text
    assert "internal error" not in node.log()
