"""`betblock hits list|export` and /v1/hits parse filters and cursors through one checked parser
(``hits.query``): a bad value gets the same message from the command line (exit 2) as the 400
from the API, before any work."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from hits import cli
from tests.conftest import NodeFactory

TOKEN = "cli-filters-token-0123456789"

# (API parameter, CLI flag, value): values the API has long refused and the CLI took unchecked.
BAD = [
    ("since", "--since", "nan"),
    ("until", "--until", "1e300"),
    ("since", "--since", "-inf"),
    ("qtype", "--qtype", "65536"),
    ("qtype", "--qtype", str(2**63)),
    ("qtype", "--qtype", "²"),  # a digit to str.isdigit(), not to int()
    ("cursor", "--cursor", str(2**63)),
    ("cursor", "--cursor", "-1"),
]


@pytest.mark.parametrize(("param", "flag", "value"), BAD)
async def test_a_bad_filter_gets_the_api_message_from_the_cli(
    node: NodeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], param: str, flag: str, value: str
) -> None:
    app = await node(http={"admin_token": TOKEN})
    assert app.http is not None and app.http.bound is not None
    host, port = app.http.bound
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.get(f"http://{host}:{port}/v1/hits", params={param: value}) as r:
            assert r.status == 400
            api_error = (await r.json())["error"]
    assert api_error.startswith(f"{param}: ")

    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n')  # the node's store
    capsys.readouterr()
    for cmd in (["list"], ["export", "--format", "ndjson"]) if param != "cursor" else (["list"],):
        rc = await asyncio.to_thread(cli.main, ["--config", str(cfg), *cmd, f"{flag}={value}"])  # "=": "-inf" is a value, not a flag
        out, err = capsys.readouterr()
        assert (rc, out, err) == (2, "", f"betblock: {api_error}\n"), cmd
