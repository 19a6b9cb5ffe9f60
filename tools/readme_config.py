"""Rewrite the configuration table in README.md from the settings tree (`make readme`)."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import field_table

README = Path(__file__).resolve().parent.parent / "README.md"
rows = ["| key | default | description |", "|---|---|---|"]
rows += [f"| `{key}` | `{default}` | {desc} |" for key, default, desc in field_table()]
text = README.read_text()
text = re.sub(
    r"(<!-- config-table:start -->\n).*?(<!-- config-table:end -->)",
    lambda m: m.group(1) + "\n".join(rows) + "\n" + m.group(2),
    text,
    flags=re.S,
)
README.write_text(text)
