"""Turns buffered hits into store rows, in the writer thread, never on the event loop.

Owns the per-hit work that the hot path must not do: client privacy, wire names to text,
dictionary ids (memoised, so a flood of hits for few names costs a few dict lookups each),
the daily roll-ups and first-seen names, and the hand-over of one ``Batch`` per flush to the
store. Must not import the resolver.
"""

from __future__ import annotations

import re
from collections import Counter
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
        self._name_rules: set[tuple[int, int]] = set()

    def _trim(self) -> None:
        if len(self._clients) > _MEMO_CAP or len(self._names) > _MEMO_CAP:
            self._clients.clear()
            self._names.clear()
            self._first_seen.clear()
            self._name_rules.clear()
            for kind in ("client", "name"):
                self._texts[kind].clear()

    def encode(self, batch: Iterable[tuple[Any, ...]], agg: dict[tuple[Any, ...], int]) -> Batch | None:
        """Rows for the store; dictionary entries missing from the memo are looked up or inserted."""
        self._trim()
        batch = batch if isinstance(batch, list) else list(batch)
        aggregated = [((float(k[0]),) + k[1:], n) for k, n in agg.items()]
        if not batch and not aggregated:
            return None
        try:
            rows = self._rows(batch, aggregated)
        except KeyError:  # a client, name, rule or version not in the memo yet
            self._resolve_missing([(h, 1) for h in batch] + aggregated)
            rows = self._rows(batch, aggregated)
        node = self._node_id
        assert node is not None
        clients = self._clients
        out = Batch(node=node, rows=rows, texts={})
        # Roll-ups and chain references from the columns (C-level transposition and counting):
        # a flood repeats few keys, and per-row Python work is what the writer must not grow.
        cols = list(zip(*rows))
        ts_col, client_col, name_col = cols[0], cols[2], cols[3]
        nb = len(batch)  # rows from the plain buffer (count 1), then the aggregated ones
        day_lo, day_hi = min(ts_col) // DAY_MS, max(ts_col) // DAY_MS
        if day_lo == day_hi:
            group = Counter(zip(name_col[:nb], cols[6][:nb], client_col[:nb]))
            keyed = {(day_lo,) + k: n for k, n in group.items()}
        else:  # a batch across midnight
            keyed = dict(Counter((r[0] // DAY_MS, r[3], r[6], r[2]) for r in rows[:nb]))
        for r in rows[nb:]:
            k = (r[0] // DAY_MS, r[3], r[6], r[2])
            keyed[k] = keyed.get(k, 0) + r[8]
        nets = {cid: net for cid, net in clients.values()} if len(clients) < 4 * len(keyed) + 1024 else None
        for (day, name, rule, client), n in keyed.items():
            out.daily_rule[(day, rule)] = out.daily_rule.get((day, rule), 0) + n
            out.daily_name[(day, name)] = out.daily_name.get((day, name), 0) + n
            net = nets.get(client, "") if nets is not None else self._net_of(client)
            out.daily_net[(day, net)] = out.daily_net.get((day, net), 0) + n
        pairs = {(name, rule) for _day, name, rule, _client in keyed} - self._name_rules
        if pairs:
            out.name_rules = sorted(pairs)
        new_names = set(name_col) - self._first_seen
        if new_names:
            for r in rows:
                if r[3] in new_names:
                    prev = out.first_seen.get(r[3])
                    if prev is None or r[0] < prev:
                        out.first_seen[r[3]] = r[0]
        refs = {
            "node": {node},
            "client": set(client_col),
            "name": set(name_col) | set(cols[5]),
            "rule": set(cols[6]),
            "policy": set(cols[7]),
        }
        out.texts = {kind: {i: self._texts[kind][i] for i in ids} for kind, ids in refs.items()}
        return out

    def _rows(self, batch: list[tuple[Any, ...]], aggregated: list[tuple[tuple[Any, ...], int]]) -> list[Any]:
        node = self._node_id
        if node is None:
            raise KeyError("node")
        clients, names, rules, policies = self._clients, self._names, self._rules, self._policies
        rows = [
            (int(ts * 1000), node, clients[client][0], names[qname], qtype, names[listed], rules[id(rule)][1], policies[version], 1)
            for ts, client, qname, qtype, rule, listed, version in batch
        ]
        if aggregated:
            rows += [
                (int(ts * 1000), node, clients[client][0], names[qname], qtype, names[listed], rules[id(rule)][1], policies[version], n)
                for (ts, client, qname, qtype, rule, listed, version), n in aggregated
            ]
        return rows

    def _net_of(self, client_id: int) -> str:
        text = self._texts["client"].get(client_id, "")
        return text.partition("\x1f")[2]

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
        # Remembered only once stored: a batch the store refused is encoded again on retry.
        self._first_seen.update(encoded.first_seen)
        self._name_rules.update(encoded.name_rules)
        return len(encoded.rows)
