"""The node's own policy beside the agencies' lists: the configured allowlist and protected names
(inline and files, from the ``policy`` settings section) and the admin allowlist in memory.

Owns reading them (at start and on SIGHUP; a bad line is logged and skipped), taking a new
``policy`` section on reload, and the allowlist a compile subtracts. The admin allowlist's rows
live in the store (``AdminDecisions`` writes them); this keeps their wire names for compiles.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from config.settings import PolicySettings
from feeds.compile import AllowItem, PlainList, allow_names
from feeds.guard import Protected
from feeds.lists import to_wire
from feeds.store import FeedStore

log = structlog.get_logger("betblock.feeds")


class PolicyFiles:
    """The configured allowlist and protected names, and the admin allowlist (wire names)."""

    def __init__(self, policy: PolicySettings, resolve: Callable[[Path], Path]) -> None:
        self.policy = policy
        self.resolve = resolve
        self.allow: list[AllowItem] = []  # configured (inline and files)
        self.admin_allow: list[bytes] = []  # added by admins through the API
        self.protected = Protected()

    def compile_allow(self) -> list[AllowItem]:
        """What a compile subtracts: the configured and the admin allowlist."""
        return self.allow + self.admin_allow

    def load_admin(self, store: FeedStore) -> None:
        """The admin allowlist as the store holds it (in a thread)."""
        self.admin_allow = [to_wire(row["name"].encode("ascii")) for row in store.allowlist()]

    def read(self) -> None:
        """Read the allowlist and protected names of the current section (in a thread: files)."""
        reports: dict[str, PlainList] = {}
        self.allow = allow_names(self.policy, self.resolve, reports)
        for source, parsed in reports.items():
            for lineno, text, reason in parsed.rejects[:20]:
                log.warning("allowlist line rejected", source=source, line=lineno, text=text, reason=reason)
        lines = list(self.policy.protected)
        for path in self.policy.protected_files:
            lines.extend(self.resolve(path).read_text(encoding="utf-8").splitlines())
        self.protected, bad = Protected.parse(lines)
        for lineno, text, reason in bad:
            log.warning("protected name rejected", line=lineno, text=text, reason=reason)
