"""A betblock node serving RPZ zones as a real process, for the zone-transfer tests.

Owns its config (a push agency and a file agency, the [xfr] section with a TSIG key and the
given NOTIFY targets), starting it (procutil.Serve: its JSON log read as it comes, so a node that
exits fails the start at once), pushing a new list through the feeds API, and polling a
condition with a deadline. Its ports are chosen before the first start (followers are configured
with them, and a restart comes back on them): procutil.free_port.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from config.auth import sha256_hex
from tests.fakedns import FakeDns
from tests.procutil import Serve, first_answer, free_port, node_toml, until  # until: for the xfr tests too

TOKEN = "pl-token-0123456789abcdef"
KEY_NAME = "fleet-key"
KEY_SECRET = base64.b64encode(b"betblock fleet test key 32 bytes").decode()
ZONE = "betblock.rpz"


@dataclass
class Primary:
    tmp: Path
    dns_port: int
    http_port: int
    xfr_port: int
    upstream: FakeDns
    node: Serve | None = None

    def config(self, xfr_extra: str = "") -> str:
        (self.tmp / "it.txt").write_text("slots.test\n")
        return node_toml(self.tmp, self.dns_port, self.upstream, f"""[hits]
store = "none"
[policy]
allowlist = ["ok.casino.test"]
[xfr]
enabled = true
listen = ["127.0.0.1:{self.xfr_port}"]
refresh = 1
retry = 1
keys = {{"{KEY_NAME}" = "{KEY_SECRET}"}}
{xfr_extra}
[[agencies]]
id = "pl-mf"
precedence = 20
action = "redirect"
redirect_ipv4 = ["198.51.100.99"]
token_sha256 = "{sha256_hex(TOKEN)}"
sources = [{{kind = "push", format = "plain"}}]
[[agencies]]
id = "it-adm"
precedence = 10
action = "nxdomain"
sources = [{{kind = "file", path = "it.txt", poll_interval = 3600}}]
""").replace('[http]\nlisten = "127.0.0.1:0"', f'[http]\nlisten = "127.0.0.1:{self.http_port}"')

    async def start(self, xfr_extra: str = "") -> None:
        cfg = self.tmp / "betblock.toml"
        cfg.write_text(self.config(xfr_extra))
        self.node = await Serve.start(cfg, "--log-format", "json")
        await first_answer(self.dns_port, "slots.test")

        async def ready() -> bool:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{self.http_port}/readyz") as r:
                    return r.status == 200

        await until(ready, "the node to be ready")

    async def stop(self) -> Serve | None:
        """Stop the node; the stopped node (its log), None when it was not running."""
        node, self.node = self.node, None
        if node is not None:
            await node.stop()
        return node

    async def put(self, names: list[str]) -> dict[str, object]:
        async with aiohttp.ClientSession() as s:
            async with s.put(
                f"http://127.0.0.1:{self.http_port}/v1/feeds/pl-mf",
                data="\n".join(names) + "\n",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as r:
                body = await r.json()
                assert r.status == 200, body
                return body

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{self.http_port}/metrics") as r:
                return await r.text()


async def primary(tmp_path: Path) -> Primary:
    upstream = await FakeDns().start()
    return Primary(tmp_path, free_port(), free_port(), free_port(), upstream)
