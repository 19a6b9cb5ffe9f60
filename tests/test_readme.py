"""The README keeps its promises: the two commands first, and the config table in sync."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import field_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_first_section_gives_exactly_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def test_config_table_matches_the_settings_tree() -> None:
    table = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    documented = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    assert documented == [key for key, _default, _desc in field_table()], "run `make readme`"
