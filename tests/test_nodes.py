"""tests/nodes.py's NSD config, in the shapes the benchmarks write it (extra server lines, a zone
with options): NSD's own checker accepts it and reads back what was asked for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.nodes import nsd_conf, nsd_zone_section, sbin

CHECKCONF = sbin("nsd-checkconf")


@pytest.mark.skipif(CHECKCONF is None, reason="nsd-checkconf not installed (apt-get install nsd)")
def test_nsd_conf_with_server_lines_and_zone_options_is_valid(tmp_path: Path) -> None:
    zones = nsd_zone_section("a.test", tmp_path / "a.zone") + nsd_zone_section("b.rpz", tmp_path / "b.zone", "  provide-xfr: 127.0.0.1 NOKEY\n")
    conf = tmp_path / "nsd.conf"
    conf.write_text(nsd_conf(tmp_path, 5399, zones, "  rrl-ratelimit: 0\n"))

    def ask(*args: str) -> str:
        return subprocess.run([str(CHECKCONF), *args, str(conf)], check=True, capture_output=True, text=True).stdout.strip()

    assert ask("-o", "rrl-ratelimit") == "0"
    assert ask("-o", "port") == "5399"
    assert ask("-z", "b.rpz", "-o", "provide-xfr") == "127.0.0.1 NOKEY"
    assert ask("-z", "a.test", "-o", "zonefile") == str(tmp_path / "a.zone")
