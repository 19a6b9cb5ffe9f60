"""Turns buffered hits into store rows, in the writer thread, never on the event loop.

Owns the per-hit work that the hot path must not do: client privacy, wire names to text,
dictionary ids (memoised, so a flood of hits for few names costs a few dict lookups each),
the daily roll-ups and first-seen names, and the hand-over of one ``Batch`` per flush to the
store. Must not import the resolver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hits.privacy import ClientPrivacy
from hits.query import name_rev
from hits.store import DAY_MS, Batch, HitStore

_MEMO_CAP = 1 << 20
_PLAIN = re.compile(rb"[a-z0-9._-]*")


def name_text(wire: bytes) -> str:
    """Lower-case wire name to text; bytes outside letters, digits, '-' and '_' as \\DDD (as dig)."""
    labels = []
    off = 0
    while True:
        length = wire[off]
        if not length:
            break
        labels.append(wire[off + 1 : off + 1 + length])
        off += length + 1
    if not labels:
        return "."
    out = []
    for label in labels:
        if _PLAIN.fullmatch(label) and b"." not in label:
            out.append(label.decode())
        else:
            out.append("".join(chr(c) if (48 <= c <= 57 or 97 <= c <= 122 or c in (45, 95)) else f"\\{c:03d}" for c in label))
    return ".".join(out)


class HitWriter:
    """One per store; used by one thread at a time (the recorder's writer)."""

    def __init__(self, store: HitStore, privacy: ClientPrivacy, node: str) -> None:
        self.store = store
        self.privacy = privacy
        self.node = node
        self._node_id: int | None = None
        self._clients: dict[str, tuple[int, str]] = {}  # address -> (id, network)
        self._names: dict[bytes, int] = {}  # wire -> id
        self._rules: dict[int, tuple[Any, int]] = {}  # id(rule) -> (rule, id); the rule is kept alive
        self._policies: dict[int, int] = {}
        self._texts: dict[str, dict[int, str]] = {"node": {}, "client": {}, "name": {}, "rule": {}, "policy": {}}
        self._first_seen: set[int] = set()

    def _trim(self) -> None:
        if len(self._clients) > _MEMO_CAP or len(self._names) > _MEMO_CAP:
            self._clients.clear()
            self._names.clear()
            self._first_seen.clear()
            for kind in ("client", "name"):
                self._texts[kind].clear()

    def encode(self, batch: Iterable[tuple[Any, ...]], agg: dict[tuple[Any, ...], int]) -> Batch | None:
        """Rows for the store; dictionary entries missing from the memo are looked up or inserted."""
        self._trim()
        items: list[tuple[tuple[Any, ...], int]] = [(h, 1) for h in batch]
        items += [((float(k[0]),) + k[1:], n) for k, n in agg.items()]
        if not items:
            return None
        self._resolve_missing(items)
        node = self._node_id
        assert node is not None
        clients, names, rules, policies = self._clients, self._names, self._rules, self._policies
        rows = [
            (int(ts * 1000), node, clients[client][0], names[qname], qtype, names[listed], rules[id(rule)][1], policies[version], n)
            for (ts, client, qname, qtype, rule, listed, version), n in items
        ]
        out = Batch(node=node, rows=rows, texts={})
        # Roll-ups: few distinct keys per batch however many hits, so these loops are short
        # after the first pass that groups them.
        group: dict[tuple[int, int, int, int], int] = {}
        for r in rows:
            k = (r[0] // DAY_MS, r[3], r[6], r[2])
            group[k] = group.get(k, 0) + r[8]
        nets = {cid: net for cid, net in clients.values()}
        for (day, name, rule, client), n in group.items():
            out.daily_rule[(day, rule)] = out.daily_rule.get((day, rule), 0) + n
            out.daily_name[(day, name)] = out.daily_name.get((day, name), 0) + n
            net = nets.get(client, "")
            out.daily_net[(day, net)] = out.daily_net.get((day, net), 0) + n
        for r in rows:
            if r[3] not in self._first_seen:
                prev = out.first_seen.get(r[3])
                if prev is None or r[0] < prev:
                    out.first_seen[r[3]] = r[0]
        self._first_seen.update(out.first_seen)
        refs: dict[str, set[int]] = {"node": {node}, "client": set(), "name": set(), "rule": set(), "policy": set()}
        for _day, name, rule, client in group:
            refs["name"].add(name)
            refs["rule"].add(rule)
            refs["client"].add(client)
        if len(refs["policy"]) == 0:
            refs["policy"].update({r[7] for r in rows})
        refs["name"].update({r[5] for r in rows})
        out.texts = {kind: {i: self._texts[kind][i] for i in ids} for kind, ids in refs.items()}
        return out

    def _resolve_missing(self, items: list[tuple[tuple[Any, ...], int]]) -> None:
        store = self.store
        if self._node_id is None:
            self._node_id = store.ids("node", {self.node: (self.node,)})[self.node]
            self._texts["node"][self._node_id] = self.node
        new_clients: dict[str, tuple[str, ...]] = {}
        new_names: dict[str, tuple[str, ...]] = {}
        wire_of: dict[str, list[bytes]] = {}
        new_rules: dict[str, tuple[str, ...]] = {}
        rule_of: dict[str, list[Any]] = {}
        new_policies: dict[str, tuple[int, ...]] = {}
        clients, names, rules, policies = self._clients, self._names, self._rules, self._policies
        for (_ts, client, qname, _qtype, rule, listed, version), _n in items:
            if client not in clients and client not in new_clients:
                stored, net = self.privacy.apply(client)
                new_clients[client] = (stored, net)
            for wire in (qname, listed):
                if wire not in names:
                    text = name_text(wire)
                    if text not in new_names:
                        new_names[text] = (text, name_rev(text))
                        wire_of[text] = []
                    wire_of[text].append(wire)
            if id(rule) not in rules:
                key = ",".join(rule.agencies) + "|" + rule.action
                new_rules[key] = (",".join(rule.agencies), rule.action)
                rule_of.setdefault(key, []).append(rule)
            if version not in policies and str(version) not in new_policies:
                new_policies[str(version)] = (version,)
        if new_clients:
            by_stored = {v[0]: v for v in new_clients.values()}
            got = store.ids("client", by_stored)
            for address, (stored, net) in new_clients.items():
                cid = got[stored]
                clients[address] = (cid, net)
                self._texts["client"][cid] = f"{stored}\x1f{by_stored[stored][1]}"
        if new_names:
            got = store.ids("name", new_names)
            for text, wires in wire_of.items():
                for wire in wires:
                    names[wire] = got[text]
                self._texts["name"][got[text]] = text
        if new_rules:
            got = store.ids("rule", new_rules)
            for key, rs in rule_of.items():
                for r in rs:
                    rules[id(r)] = (r, got[key])
                self._texts["rule"][got[key]] = key
        if new_policies:
            got = store.ids("policy", new_policies)
            for key, pid in got.items():
                policies[int(key)] = pid
                self._texts["policy"][pid] = key

    def write(self, batch: Iterable[tuple[Any, ...]], agg: dict[tuple[Any, ...], int]) -> int:
        """Encode and store one flush; the number of rows written."""
        encoded = self.encode(batch, agg)
        if encoded is None:
            return 0
        self.store.write_batch(encoded)
        return len(encoded.rows)
