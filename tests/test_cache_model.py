"""``radixrouter.PrefixCache`` against a small pure-Python model of the same semantics.

A hypothesis state machine runs random insert / match / pin / unpin / remove_worker / clear
sequences (multi-byte UTF-8, divergence inside edges, conflicting tokenizations, evictions
under a small budget) on both and compares every result. Positions are ``str`` indices.
"""

from __future__ import annotations

import bisect
import os
import struct

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixrouter import PrefixCache
from radixrouter._core import PrefixPin


def f32(x: float) -> float:
    """Round to float32, as the cache stores logprobs."""
    return struct.unpack("f", struct.pack("f", x))[0]


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Node:
    def __init__(self, text: str, start: int, parent: Node | None, tick: int) -> None:
        self.text = text
        self.start = start
        self.parent = parent
        self.children: dict[str, Node] = {}
        self.ids: list[int] = []
        self.ends: list[int] = []
        self.lps: list[float] | None = None
        self.mask: list[int] | None = None
        self.workers: dict[str, int] = {}
        self.tick = tick
        self.pins = 0

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def weight(self) -> int:
        return len(self.ids) if self.ids else -(-len(self.text) // 4)


class ModelCache:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.root = Node("", 0, None, 0)
        self.clock = 1
        self.pins: dict[int, Node] = {}
        self.next_pin = 1
        self.evictions = 0
        self.worker_names: set[str] = set()
        self.lookups = self.matched_tokens = self.looked_up_tokens = 0

    def _tick(self) -> int:
        self.clock += 1
        return self.clock - 1

    def nodes(self) -> list[Node]:
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def _walk(self, q: str, tick: int) -> tuple[list[tuple[Node, int, int]], int]:
        segs: list[tuple[Node, int, int]] = []
        cur, pos, reach = self.root, 0, 0
        while pos < len(q):
            ch = cur.children.get(q[pos])
            if ch is None:
                break
            ch.tick = max(ch.tick, tick)
            n = common_prefix(ch.text, q[pos:])
            if n == len(ch.text):
                reach = ch.end
                segs.append((ch, len(ch.ids), reach))
                pos += n
                cur = ch
                continue
            reach = ch.start + n
            segs.append((ch, bisect.bisect_right(ch.ends, reach), reach))
            break
        return segs, reach

    def match(self, q: str) -> dict:
        tick = self._tick()
        segs, reach = self._walk(q, tick)
        ids: list[int] = []
        lps: list[float] = []
        mask: list[int] = []
        length = 0
        workers: dict[str, int] = {}
        ages: dict[str, int] = {}
        token_ends: list[int] = []
        for node, k, r in segs:
            ids += node.ids[:k]
            token_ends += node.ends[:k]
            lps += node.lps[:k] if node.lps is not None else [0.0] * k
            mask += node.mask[:k] if node.mask is not None else [0] * k
            if k:
                length = node.ends[k - 1]
            for w, t in node.workers.items():
                workers[w] = r
                ages[w] = tick - t
        unmatched = len(q) - length
        est = -(-unmatched * len(ids) // length) if ids and length else -(-unmatched // 4)
        self.lookups += 1
        self.matched_tokens += len(ids)
        self.looked_up_tokens += len(ids) + est
        return {
            "length": length,
            "matched_chars": reach,
            "token_ids": ids,
            "token_ends": token_ends,
            "logprobs": lps,
            "loss_mask": mask,
            "workers": workers,
            "worker_ages": ages,
        }

    def _split(self, x: Node, n: int) -> Node:
        assert x.parent is not None
        up = Node(x.text[:n], x.start, x.parent, x.tick)
        at = x.start + n
        k = bisect.bisect_right(x.ends, at)
        up.ids, x.ids = x.ids[:k], x.ids[k:]
        up.ends, x.ends = x.ends[:k], x.ends[k:]
        if x.lps is not None:
            up.lps, x.lps = x.lps[:k], x.lps[k:]
        if x.mask is not None:
            up.mask, x.mask = x.mask[:k], x.mask[k:]
        up.workers = dict(x.workers)
        x.parent.children[up.text[0]] = up
        x.text = x.text[n:]
        x.start = at
        x.parent = up
        up.children = {x.text[0]: x}
        return up

    @staticmethod
    def _add_tokens(node: Node, ids, ends, lps, mask, k: int) -> None:
        old, added = len(node.ids), len(ids) - k
        node.ids = node.ids + list(ids[k:])
        node.ends = node.ends + list(ends[k:])
        if node.lps is not None or lps is not None:
            node.lps = (node.lps if node.lps is not None else [0.0] * old) + (
                [f32(v) for v in lps[k:]] if lps is not None else [0.0] * added
            )
        if node.mask is not None or mask is not None:
            node.mask = (node.mask if node.mask is not None else [0] * old) + (
                list(mask[k:]) if mask is not None else [0] * added
            )

    def insert(self, q: str, ids=(), ends=(), logprobs=None, loss_mask=None, worker=None) -> None:
        tick = self._tick()
        if worker is not None:
            self.worker_names.add(worker)

        def visit(n: Node) -> None:
            n.tick = max(n.tick, tick)
            if worker is not None:
                n.workers[worker] = tick

        cur, pos, k, agree = self.root, 0, 0, True
        while pos < len(q):
            ch = cur.children.get(q[pos])
            if ch is None:
                leaf = Node(q[pos:], cur.end if cur is not self.root else 0, cur, tick)
                cur.children[q[pos]] = leaf
                if agree and k < len(ids):
                    self._add_tokens(leaf, ids, ends, logprobs, loss_mask, k)
                visit(leaf)
                self._evict()
                return
            n = common_prefix(ch.text, q[pos:])
            if n < len(ch.text):
                ch = self._split(ch, n)
            if agree:
                m = len(ch.ids)
                if k + m <= len(ids) and ch.ids == list(ids[k : k + m]) and ch.ends == list(ends[k : k + m]):
                    k += m
                else:
                    agree = False
            visit(ch)
            pos += n
            cur = ch
        if cur is not self.root and agree and k < len(ids) and not cur.children:
            self._add_tokens(cur, ids, ends, logprobs, loss_mask, k)
        self._evict()

    def charged(self) -> int:
        return sum(n.weight() for n in self.nodes())

    def _evict(self) -> None:
        charged = self.charged()
        while charged > self.max_tokens:
            leaves = [n for n in self.nodes() if not n.children and n.pins == 0]
            if not leaves:
                break
            victim = min(leaves, key=lambda n: n.tick)
            assert victim.parent is not None
            del victim.parent.children[victim.text[0]]
            charged -= victim.weight()
            self.evictions += 1

    def pin(self, q: str) -> tuple[int | None, int]:
        segs, reach = self._walk(q, self._tick())
        if not segs:
            return None, 0
        node = segs[-1][0]
        node.pins += 1
        pid = self.next_pin
        self.next_pin += 1
        self.pins[pid] = node
        return pid, reach

    def unpin(self, pid: int | None) -> None:
        node = self.pins.pop(pid, None) if pid is not None else None
        if node is not None:
            node.pins -= 1
            self._evict()

    def remove_worker(self, worker: str) -> None:
        self.worker_names.discard(worker)
        for n in self.nodes():
            n.workers.pop(worker, None)

    def clear(self) -> None:
        self.root = Node("", 0, None, 0)
        self.pins.clear()
        self.worker_names.clear()

    def stats(self) -> dict:
        nodes = self.nodes()
        return {
            "nodes": len(nodes),
            "tokens": sum(len(n.ids) for n in nodes),
            "charged": sum(n.weight() for n in nodes),
            "evictions": self.evictions,
            "pins": len(self.pins),
            "workers": len(self.worker_names),
            "lookups": self.lookups,
            "matched_tokens": self.matched_tokens,
            "looked_up_tokens": self.looked_up_tokens,
        }


# ---- the state machine: random operation sequences, the real cache against the model ----

ALPHABET = ["a", "b", " ", "é", "è", "€", "😀", "😁"]  # é/è and 😀/😁 share leading UTF-8 bytes
WORKERS = ["w1", "w2", "w3"]
texts = st.text(alphabet=ALPHABET, min_size=1, max_size=10)


class Vocab:
    """Interns token strings so that ids decode back to text."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], int] = {}
        self.pieces: list[str] = []

    def id(self, piece: str, variant: int) -> int:
        key = (piece, variant)
        if key not in self.ids:
            self.ids[key] = len(self.pieces)
            self.pieces.append(piece)
        return self.ids[key]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.vocab = Vocab()
        self.known: list[str] = ["ab"]
        self.handles: list[tuple[PrefixPin, int | None]] = []
        self.stale: list[PrefixPin] = []

    @initialize(max_tokens=st.integers(min_value=0, max_value=24))
    def setup(self, max_tokens: int) -> None:
        self.cache = PrefixCache(max_tokens=max_tokens)
        self.model = ModelCache(max_tokens)

    def _text(self, data: st.DataObject) -> str:
        if data.draw(st.booleans(), label="extend"):
            base = data.draw(st.sampled_from(self.known), label="base")
            keep = data.draw(st.integers(min_value=0, max_value=len(base)), label="keep")
            return base[:keep] + data.draw(st.text(alphabet=ALPHABET, max_size=8), label="suffix") or "a"
        return data.draw(texts, label="text")

    def _tokenize(self, data: st.DataObject, text: str):
        """Random segmentation; sometimes a second (empty-text) token shares an end, as byte-level
        tokens of one character do; `variant` gives the same pieces different ids."""
        variant = data.draw(st.integers(0, 1), label="variant")
        cuts = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)), label="cuts")
        ids: list[int] = []
        ends: list[int] = []
        start = 0
        for i in range(1, len(text) + 1):
            if i == len(text) or cuts[i]:
                ids.append(self.vocab.id(text[start:i], variant))
                ends.append(i)
                if cuts[i - 1] and text[i - 1] > "\x7f":
                    ids.append(self.vocab.id("", i))
                    ends.append(i)
                start = i
        return ids, ends

    @rule(data=st.data())
    def insert(self, data: st.DataObject) -> None:
        text = self._text(data)
        ids, ends = self._tokenize(data, text)
        if data.draw(st.booleans(), label="short"):  # tokens may stop before the text's end
            cut = data.draw(st.integers(0, len(ids)), label="cut")
            ids, ends = ids[:cut], ends[:cut]
        n = len(ids)
        lps = data.draw(st.none() | st.lists(st.floats(-20, 0), min_size=n, max_size=n), label="logprobs")
        mask = data.draw(st.none() | st.lists(st.integers(0, 1), min_size=n, max_size=n), label="mask")
        worker = data.draw(st.none() | st.sampled_from(WORKERS), label="worker")
        self.cache.insert(text, ids, ends, logprobs=lps, loss_mask=mask, worker=worker)
        self.model.insert(text, ids, ends, lps, mask, worker)
        self.known.append(text)

    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    def insert_text_only(self, data: st.DataObject, worker: str) -> None:
        text = self._text(data)
        self.cache.insert(text, worker=worker)
        self.model.insert(text, worker=worker)
        self.known.append(text)

    @rule(data=st.data())
    def match(self, data: st.DataObject) -> None:
        text = self._text(data)
        m = self.cache.match(text)
        want = self.model.match(text)
        got = {
            "length": m.length,
            "matched_chars": m.matched_chars,
            "token_ids": m.token_ids,
            "token_ends": m.ends_array().tolist(),
            "logprobs": m.logprobs,
            "loss_mask": m.loss_mask,
            "workers": m.workers,
            "worker_ages": m.worker_ages,
        }
        assert got == want
        # Independent of the model: the ids are whole tokens spelling exactly text[:length].
        assert self.vocab.decode(m.token_ids) == text[: m.length]
        assert m.length <= m.matched_chars
        assert orjson.loads(m.ids_json()) == m.token_ids
        assert list(m.ids_array()) == m.token_ids
        assert list(m.logprobs_array()) == m.logprobs
        assert list(m.loss_mask_array()) == m.loss_mask

    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        text = self._text(data)
        handle = self.cache.pin(text)
        pid, reach = self.model.pin(text)
        assert handle.matched_chars == reach
        assert handle.active == (pid is not None)
        self.handles.append((handle, pid))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.handles) - 1), label="pin")
        handle, pid = self.handles.pop(i)
        handle.release()
        self.model.unpin(pid)
        assert not handle.active

    @rule(worker=st.sampled_from(WORKERS))
    def remove_worker(self, worker: str) -> None:
        self.cache.remove_worker(worker)
        self.model.remove_worker(worker)

    @rule(data=st.data())
    def clear(self, data: st.DataObject) -> None:
        self.cache.clear()
        self.model.clear()
        # Stale handles stay valid objects; releasing them later must not touch new pins.
        self.stale += [h for h, _ in self.handles]
        self.handles.clear()

    @precondition(lambda self: self.stale)
    @rule()
    def release_stale(self) -> None:
        self.stale.pop().release()

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "cache"):
            return
        s = self.cache.stats()
        want = self.model.stats()
        assert {k: s[k] for k in want} == want
        pinned_only = all(n.pins or n.children for n in self.model.nodes())
        assert s["charged"] <= s["max_tokens"] or pinned_only

    def teardown(self) -> None:
        for handle, _ in self.handles:
            handle.release()


# A longer run: CACHE_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_cache_model.py --timeout 0
CacheMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("CACHE_FUZZ_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCacheMachine = CacheMachine.TestCase
