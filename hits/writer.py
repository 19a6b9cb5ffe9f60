"""Turns buffered hits into store rows, in the writer thread, never on the event loop.

Owns the per-hit work that the hot path must not do: client privacy, wire names to text,
dictionary ids (memoised, so a flood of hits for few names costs a few dict lookups each),
the daily roll-ups and first-seen names, and the hand-over of one ``Batch`` per flush to the
store. Must not import the resolver.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from operator import add, sub

from hits.batch import HitBatch, hit_columns
from hits.chain import text_line
from config.names import to_text as name_text  # the one name codec (\\DDD escapes)
from hits.privacy import ClientPrivacy
from hits.query import name_rev
from hits.record import Counts, RuleLike
from hits.store import DAY_MS, KINDS, Batch, HitStore

_MEMO_CAP = 1 << 18  # bounded: memory over a long run
_MS = (1000.0).__mul__
# (name, rule) pairs packed into one int, rule << 32 | name: the name in the low bits, because a
# set indexes by the low bits of an int's hash (the int itself), and name << 32 | rule put every
# pair of one agency set in one slot chain (measured: the pairs a third of encoding a batch).
_HI = 1 << 32


class HitWriter:
    """One per store; used by one thread at a time (the recorder's writer).

    Encoding works on columns, not hits: one C-level pass per column (``zip``, ``map`` over the
    memo dicts, ``Counter``) so that the Python work per hit is a handful of dict lookups,
    without a function call or an object of ours per hit. Memos are bounded and kept across
    batches: a flood repeats few clients and rules and cycles through its names."""

    def __init__(self, store: HitStore, privacy: ClientPrivacy, node: str, after_write: Callable[[], object] | None = None) -> None:
        self.store = store
        self.after_write = after_write  # called once a batch is committed (the chain's checkpoint)
        self.privacy = privacy
        self.node = node
        self._node_id: int | None = None
        self._clients: dict[str, int] = {}  # address -> id
        self._nets: dict[int, int] = {}  # client id -> nets id of its network (for the roll-ups)
        self._net_ids: dict[str, int] = {}  # network -> nets id
        self._names: dict[bytes, int] = {}  # wire -> id
        self._rules: dict[int, int] = {}  # id(rule) -> id
        self._rule_refs: dict[int, RuleLike] = {}  # id(rule) -> rule, so that an id() is never reused while memoised
        self._policies: dict[int, int] = {}
        # The chain's line for every memoised dictionary entry (``chain.text_line``).
        self._lines: dict[str, dict[int, bytes]] = {kind: {} for kind in KINDS}
        self._first_seen: set[int] = set()
        self._name_rules: set[int] = set()  # rule << 32 | name

    def _trim(self) -> None:
        if len(self._clients) > _MEMO_CAP or len(self._names) > _MEMO_CAP:
            self._clients.clear()
            self._nets.clear()
            self._net_ids.clear()
            self._names.clear()
            self._first_seen.clear()
            self._name_rules.clear()
            for kind in ("client", "name"):
                self._lines[kind].clear()

    def encode(self, batch: HitBatch, agg: Counts) -> Batch | None:
        """Rows for the store; dictionary entries missing from the memo are looked up or inserted."""
        self._trim()
        cols_in, nb = hit_columns(batch, agg)
        ts_col, client_col, qname_col, qtype_col, rule_col, listed_col, ver_col = cols_in
        n = len(ts_col)
        if not n:
            return None
        cnt_col: list[int] = [1] * nb + list(agg.values()) if agg else [1] * n
        # The listed entry is a suffix of the queried name (its byte offset is stored), except
        # when CNAME inspection matched the target: then it is stored as minus its names id.
        listed = list(map(sub, map(len, qname_col), map(len, listed_col)))
        odd = [] if all(map(bytes.endswith, qname_col, listed_col)) else [
            i for i, ok in enumerate(map(bytes.endswith, qname_col, listed_col)) if not ok
        ]
        odd_wires = [listed_col[i] for i in odd]
        try:
            cols = self._columns(client_col, qname_col, rule_col, odd_wires, ver_col)
        except KeyError:  # a client, name, rule or version not in the memo yet
            self._resolve_missing(client_col, qname_col, rule_col, odd_wires, ver_col)
            cols = self._columns(client_col, qname_col, rule_col, odd_wires, ver_col)
        client_ids, name_ids, rule_ids, odd_ids, policy_ids = cols
        for i, ident in zip(odd, odd_ids):
            listed[i] = -ident
        node = self._node_id
        assert node is not None
        ts_ms = list(map(int, map(_MS, ts_col)))
        min_ts, max_ts = min(ts_ms), max(ts_ms)
        rel = list(map(min_ts.__rsub__, ts_ms))
        columns = (rel, client_ids, name_ids, qtype_col, listed, rule_ids, policy_ids, cnt_col)
        out = Batch(node=node, base_ts=min_ts, max_ts=max_ts, columns=columns, text_block=b"")
        # Roll-ups by counting columns (C level); rows that carry a count above 1 (aggregated
        # under overload) add the rest one by one.
        heavy = [i for i in range(nb, n) if cnt_col[i] != 1] if agg else []
        if min_ts // DAY_MS == max_ts // DAY_MS and len(heavy) < n // 4 + 16:
            day = min_ts // DAY_MS
            by_rule = Counter(rule_ids)
            by_name = Counter(name_ids)
            by_client = Counter(client_ids)
            for i in heavy:
                extra = cnt_col[i] - 1
                by_rule[rule_ids[i]] += extra
                by_name[name_ids[i]] += extra
                by_client[client_ids[i]] += extra
            out.daily_rule = {day: by_rule}
            out.daily_name = {day: by_name}
            nets = self._nets
            by_net: dict[int, int] = {}
            for cid, c in by_client.items():
                net = nets[cid]
                by_net[net] = by_net.get(net, 0) + c
            out.daily_net = {day: by_net}
        else:  # a batch across midnight, or mostly aggregated rows
            nets = self._nets
            for ts, cid, name, rule, c in zip(ts_ms, client_ids, name_ids, rule_ids, cnt_col):
                day = ts // DAY_MS
                for table, key in ((out.daily_rule, rule), (out.daily_name, name), (out.daily_net, nets[cid])):
                    per = table.setdefault(day, {})
                    per[key] = per.get(key, 0) + c
        distinct_names = set(name_ids)
        distinct_rules = set(rule_ids)
        if len(distinct_rules) == 1:
            # One agency set in the batch (the usual case): the pairs are its distinct names,
            # not one big int per hit.
            pairs = set(map((next(iter(distinct_rules)) * _HI).__add__, distinct_names))
        else:
            pairs = set(map(add, map(_HI.__mul__, rule_ids), name_ids))
        pairs.difference_update(self._name_rules)
        if pairs:
            out.name_rules = sorted((p & 0xFFFFFFFF, p >> 32) for p in pairs)
        new_names = distinct_names - self._first_seen
        if new_names:
            fs = out.first_seen
            for ts, name in zip(ts_ms, name_ids):
                if name in new_names:
                    prev = fs.get(name)
                    if prev is None or ts < prev:
                        fs[name] = ts
        # The dictionary lines the chain covers: every entry the rows refer to, memoised bytes.
        lines = self._lines
        distinct_names.update(odd_ids)
        refs = (
            ("client", set(client_ids)),
            ("name", distinct_names),
            ("node", (node,)),
            ("policy", set(policy_ids)),
            ("rule", distinct_rules),
        )
        out.text_block = b"".join(b"".join(map(lines[kind].__getitem__, sorted(ids))) for kind, ids in refs)
        return out

    def _columns(self, client_col: Sequence[str], qname_col: Sequence[bytes], rule_col: Sequence[RuleLike],
                 listed_col: Sequence[bytes], ver_col: Sequence[int]) -> tuple[list[int], ...]:
        if self._node_id is None:
            raise KeyError("node")
        names = self._names.__getitem__
        return (
            list(map(self._clients.__getitem__, client_col)),
            list(map(names, qname_col)),
            list(map(self._rules.__getitem__, map(id, rule_col))),
            list(map(names, listed_col)),
            list(map(self._policies.__getitem__, ver_col)),
        )

    def _resolve_missing(self, client_col: Sequence[str], qname_col: Sequence[bytes], rule_col: Sequence[RuleLike],
                         listed_col: Sequence[bytes], ver_col: Sequence[int]) -> None:
        store = self.store
        lines = self._lines
        if self._node_id is None:
            self._node_id = store.ids("node", {self.node: (self.node,)})[self.node]
            lines["node"][self._node_id] = text_line("node", self._node_id, self.node)
        clients, names, rules, policies = self._clients, self._names, self._rules, self._policies
        new_clients: dict[str, tuple[str, str]] = {a: self.privacy.apply(a) for a in set(client_col) - clients.keys()}
        new_names: dict[str, tuple[str, str]] = {}
        wire_of: dict[str, list[bytes]] = {}
        for wire in (set(qname_col) | set(listed_col)) - names.keys():
            text = name_text(wire)
            if text not in new_names:
                new_names[text] = (name_rev(text),)
                wire_of[text] = []
            wire_of[text].append(wire)
        new_rules: dict[str, tuple[str, str]] = {}
        rule_of: dict[str, list[RuleLike]] = {}
        for key_id, rule in dict(zip(map(id, rule_col), rule_col)).items():
            if key_id not in rules:
                # hit_action: "observe:<action>" for a would-block hit (feeds.snapshot.Rule)
                key = ",".join(rule.agencies) + "|" + rule.hit_action
                new_rules[key] = (",".join(rule.agencies), rule.hit_action)
                rule_of.setdefault(key, []).append(rule)
        new_policies = {str(v): (v,) for v in set(ver_col) - policies.keys()}
        if new_clients:
            by_stored = {v[0]: v for v in new_clients.values()}
            got = store.ids("client", by_stored)
            net_ids = self._net_ids
            new_nets = {net: (net,) for _stored, net in new_clients.values() if net not in net_ids}
            if new_nets:
                net_ids.update(store.ids("net", new_nets))
            for address, (stored, net) in new_clients.items():
                cid = got[stored]
                clients[address] = cid
                self._nets[cid] = net_ids[net]
                lines["client"][cid] = text_line("client", cid, f"{stored}\x1f{by_stored[stored][1]}")
        if new_names:
            got = store.ids("name", new_names)
            for text, wires in wire_of.items():
                for wire in wires:
                    names[wire] = got[text]
                lines["name"][got[text]] = text_line("name", got[text], text)
        if new_rules:
            got = store.ids("rule", new_rules)
            for key, rs in rule_of.items():
                for r in rs:
                    rules[id(r)] = got[key]
                    self._rule_refs[id(r)] = r
                lines["rule"][got[key]] = text_line("rule", got[key], key)
        if new_policies:
            got = store.ids("policy", new_policies)
            for key, pid in got.items():
                policies[int(key)] = pid
                lines["policy"][pid] = text_line("policy", pid, key)

    def write(self, batch: HitBatch, agg: Counts) -> int:
        """Encode and store one flush; the number of rows written."""
        encoded = self.encode(batch, agg)
        if encoded is None:
            return 0
        self.store.write_batch(encoded)
        if self.after_write is not None:
            self.after_write()
        # Remembered only once stored: a batch the store refused is encoded again on retry.
        self._first_seen.update(encoded.first_seen)
        self._name_rules.update((rule << 32) | name for name, rule in encoded.name_rules)
        return len(encoded)
