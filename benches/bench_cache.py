"""PrefixCache through Python against two pure-Python baselines on the same workload.

Workload: 64 conversations of 4,000 tokens sharing a 200-token system prompt, each inserted
turn by turn (8 turns), ~4.5 characters per token with some non-ASCII letters.

- match: the longest cached prefix of conversation 0 plus a new user turn (4,000 tokens),
  ids delivered in a compact form (JSON bytes / uint32 bytes) or as a list;
- insert: a 4,000-token sequence whose first 3,500 tokens are cached (fresh cache each round);
- char-ends: the end offsets of 4,000 byte-level tokens from their ids and a per-id table of
  characters begun (``radixrouter.token_char_ends`` against the router's former Python version);
- memory: resident bytes per cached token at 1 million tokens with logprobs and loss masks.

Baselines, written here for the comparison (not copies of either project):
- ``SglangStyleTree``: SGLang's RadixCache design: token-id keys, children in a dict keyed by
  the first token, nodes split on partial match, per-node values concatenated at the end; the
  prefix compare as a per-token loop (older SGLang) or by list slices (``chunked``, faster).
- ``SlimeStyleTree``: slime's text tree design: text keys, every child of a node scanned with
  ``startswith`` (longest wins), no node splitting, ids / logprobs / loss masks per node
  returned as three lists, one lock around each operation.

Run: make build-prod && .venv/bin/python -m pytest benches/bench_cache.py --benchmark-only
"""

from __future__ import annotations

import array
import random
import subprocess
import sys
import textwrap
import threading
import time
from itertools import accumulate
from operator import itemgetter

import pytest

from radixrouter import PrefixCache, token_char_ends

LETTERS = "aeionstrlécüdm"


def extend(rng: random.Random, text: str, ids: list[int], ends: list[int], n: int) -> str:
    parts = [text]
    pos = len(text)
    for _ in range(n):
        w = " " + "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 6)))
        parts.append(w)
        pos += len(w)
        ids.append(rng.randrange(151_000))
        ends.append(pos)
    return "".join(parts)


class Seq:
    def __init__(self, text: str, ids: list[int], ends: list[int]) -> None:
        self.text, self.ids, self.ends = text, ids, ends

    def cut(self, n: int) -> Seq:
        return Seq(self.text[: self.ends[n - 1]], self.ids[:n], self.ends[:n])


def conversations(count: int = 64, tokens: int = 4_000, system: int = 200) -> list[Seq]:
    rng = random.Random(42)
    sys_ids: list[int] = []
    sys_ends: list[int] = []
    sys_text = extend(rng, "", sys_ids, sys_ends, system)
    out = []
    for _ in range(count):
        ids, ends = list(sys_ids), list(sys_ends)
        text = extend(rng, sys_text, ids, ends, tokens - system)
        out.append(Seq(text, ids, ends))
    return out


# ---- baseline 1: SGLang's design in pure Python ------------------------------------------


def match_loop(a: list[int], b: list[int]) -> int:
    i = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        i += 1
    return i


def match_chunked(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i, step = 0, 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SgNode:
    __slots__ = ("children", "key", "value", "parent", "last_access")

    def __init__(self, key: list[int], parent: SgNode | None) -> None:
        self.key = key
        self.value = key  # SGLang keeps KV indices here; the ids stand in for them
        self.parent = parent
        self.children: dict[int, SgNode] = {}
        self.last_access = 0.0


class SglangStyleTree:
    """Token-keyed radix tree: dict children by first token, split on partial match."""

    def __init__(self, chunked: bool) -> None:
        self.root = SgNode([], None)
        self.key_match = match_chunked if chunked else match_loop

    def _split(self, child: SgNode, n: int) -> SgNode:
        parent = child.parent
        assert parent is not None
        new = SgNode(child.key[:n], parent)
        new.children = {child.key[n]: child}
        new.last_access = child.last_access
        parent.children[child.key[0]] = new
        child.key = child.value = child.key[n:]
        child.parent = new
        return new

    def match(self, key: list[int]) -> list[int]:
        now = time.monotonic()
        node, values = self.root, []
        while key:
            child = node.children.get(key[0])
            if child is None:
                break
            child.last_access = now
            n = self.key_match(child.key, key)
            if n < len(child.key):
                values.append(self._split(child, n).value)
                break
            values.append(child.value)
            node, key = child, key[n:]
        out: list[int] = []
        for v in values:
            out += v
        return out

    def insert(self, key: list[int]) -> None:
        now = time.monotonic()
        node = self.root
        while key:
            child = node.children.get(key[0])
            if child is None:
                leaf = SgNode(key, node)
                leaf.last_access = now
                node.children[key[0]] = leaf
                return
            n = self.key_match(child.key, key)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, key = child, key[n:]


# ---- baseline 2: slime's design in pure Python -------------------------------------------


class SlNode:
    __slots__ = ("children", "parent", "text", "ids", "logprobs", "loss_mask", "last_access")

    def __init__(self, text: str, ids: list[int], logprobs: list[float], loss_mask: list[int]) -> None:
        self.text, self.ids, self.logprobs, self.loss_mask = text, ids, logprobs, loss_mask
        self.children: list[SlNode] = []
        self.parent: SlNode | None = None
        self.last_access = 0.0


class SlimeStyleTree:
    """Text-keyed tree: children scanned as a list (longest full-edge prefix wins), no node
    splitting, ids / logprobs / loss masks per node, one lock around every operation."""

    def __init__(self) -> None:
        self.root = SlNode("", [], [], [])
        self.lock = threading.RLock()
        self.hits = self.misses = 0

    def _best_child(self, node: SlNode, rest: str) -> SlNode | None:
        best, best_len = None, 0
        for child in node.children:
            if rest.startswith(child.text) and len(child.text) > best_len:
                best, best_len = child, len(child.text)
        return best

    def match(self, text: str) -> tuple[list[int], list[float], list[int]]:
        with self.lock:
            ids: list[int] = []
            lps: list[float] = []
            mask: list[int] = []
            matched = ""
            node, rest = self.root, text
            while rest:
                best = self._best_child(node, rest)
                if best is None:
                    break
                best.last_access = time.monotonic()
                node = best
                matched += best.text
                rest = rest[len(best.text) :]
                if best.ids:
                    ids.extend(best.ids)
                    lps.extend(best.logprobs)
                    mask.extend(best.loss_mask)
                    self.hits += 1
            if not ids:
                self.misses += 1
            return ids, lps, mask

    def insert(self, text: str, ids: list[int], logprobs=None, loss_mask=None) -> None:
        with self.lock:
            n = len(ids)
            r_ids = ids[:]
            r_lps = list(logprobs) if logprobs is not None else [0.0] * n
            r_mask = list(loss_mask) if loss_mask is not None else [0] * n
            node, rest = self.root, text
            while rest:
                best = self._best_child(node, rest)
                if best is None:
                    new = SlNode(rest, r_ids, r_lps, r_mask)
                    new.parent = node
                    new.last_access = time.monotonic()
                    node.children.append(new)
                    return
                node = best
                rest = rest[len(best.text) :]
                k = len(best.ids)
                r_ids, r_lps, r_mask = r_ids[k:], r_lps[k:], r_mask[k:]


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workload():
    convs = conversations()
    cache = PrefixCache()
    sg_loop, sg_chunked, slime = SglangStyleTree(False), SglangStyleTree(True), SlimeStyleTree()
    for turn in range(1, 9):
        for s in convs:
            part = s.cut(200 + 3_800 * turn // 8)
            cache.insert(part.text, part.ids, part.ends, worker="worker-1")
            sg_loop.insert(part.ids)
            sg_chunked.insert(part.ids)
            slime.insert(part.text, part.ids)
    suffix = " <|im_start|>user\nand now?"
    query = convs[0].text + suffix
    query_ids = convs[0].ids + [151_644, 872, 198, 437, 1431, 30]
    want = convs[0].ids
    assert cache.match(query).token_ids == want
    assert sg_loop.match(query_ids) == want == sg_chunked.match(query_ids)
    assert slime.match(query)[0] == want
    return {
        "convs": convs,
        "cache": cache,
        "sg_loop": sg_loop,
        "sg_chunked": sg_chunked,
        "slime": slime,
        "query": query,
        "query_ids": query_ids,
    }


# ---- match ---------------------------------------------------------------------------------


@pytest.mark.benchmark(group="match-4000")
def test_match_radixrouter_ids_json(benchmark, workload) -> None:
    cache, q = workload["cache"], workload["query"]
    out = benchmark(lambda: cache.match(q).ids_json())
    assert out.count(b",") == 3_999


@pytest.mark.benchmark(group="match-4000")
def test_match_radixrouter_ids_bytes(benchmark, workload) -> None:
    cache, q = workload["cache"], workload["query"]
    out = benchmark(lambda: cache.match(q).ids_bytes())
    assert len(out) == 16_000


@pytest.mark.benchmark(group="match-4000")
def test_match_radixrouter_ids_array(benchmark, workload) -> None:
    cache, q = workload["cache"], workload["query"]
    out = benchmark(lambda: cache.match(q).ids_array())
    assert len(out) == 4_000


@pytest.mark.benchmark(group="match-4000")
def test_match_radixrouter_ends_array(benchmark, workload) -> None:
    cache, q = workload["cache"], workload["query"]
    out = benchmark(lambda: cache.match(q).ends_array())
    assert out[-1] == len(workload["convs"][0].text)


@pytest.mark.benchmark(group="match-4000")
def test_match_radixrouter_ids_list(benchmark, workload) -> None:
    cache, q = workload["cache"], workload["query"]
    out = benchmark(lambda: cache.match(q).token_ids)
    assert len(out) == 4_000


@pytest.mark.benchmark(group="match-4000")
def test_match_radixrouter_no_ids(benchmark, workload) -> None:
    cache, q = workload["cache"], workload["query"]
    out = benchmark(lambda: cache.match(q).length)
    assert out == len(workload["convs"][0].text)


# Where the time of a match goes (same workload): the call alone, and the compact forms of a
# match already made (a copy of 16 KB of ids, of 26 KB of cached decimal text).


@pytest.mark.benchmark(group="match-4000-parts")
def test_part_match_call_empty_text(benchmark, workload) -> None:
    cache = workload["cache"]
    assert benchmark(lambda: cache.match("").length) == 0


@pytest.mark.benchmark(group="match-4000-parts")
def test_part_ids_bytes_of_a_match(benchmark, workload) -> None:
    m = workload["cache"].match(workload["query"])
    assert len(benchmark(m.ids_bytes)) == 16_000


@pytest.mark.benchmark(group="match-4000-parts")
def test_part_ids_json_of_a_match(benchmark, workload) -> None:
    m = workload["cache"].match(workload["query"])
    assert benchmark(m.ids_json).count(b",") == 3_999


@pytest.mark.benchmark(group="match-4000")
def test_match_sglang_style_loop(benchmark, workload) -> None:
    tree, q = workload["sg_loop"], workload["query_ids"]
    assert len(benchmark(tree.match, q)) == 4_000


@pytest.mark.benchmark(group="match-4000")
def test_match_sglang_style_chunked(benchmark, workload) -> None:
    tree, q = workload["sg_chunked"], workload["query_ids"]
    assert len(benchmark(tree.match, q)) == 4_000


@pytest.mark.benchmark(group="match-4000")
def test_match_slime_style(benchmark, workload) -> None:
    tree, q = workload["slime"], workload["query"]
    assert len(benchmark(tree.match, q)[0]) == 4_000


# ---- insert --------------------------------------------------------------------------------

ROUNDS = 300


@pytest.mark.benchmark(group="insert-extend-3500-to-4000")
def test_insert_radixrouter_list(benchmark, workload) -> None:
    s = workload["convs"][0]
    p = s.cut(3_500)

    def setup():
        cache = PrefixCache()
        cache.insert(p.text, p.ids, p.ends)
        return (cache,), {}

    benchmark.pedantic(lambda c: c.insert(s.text, s.ids, s.ends, worker="w"), setup=setup, rounds=ROUNDS)


@pytest.mark.benchmark(group="insert-extend-3500-to-4000")
def test_insert_radixrouter_array(benchmark, workload) -> None:
    s = workload["convs"][0]
    p = s.cut(3_500)
    ids, ends = array.array("I", s.ids), array.array("I", s.ends)

    def setup():
        cache = PrefixCache()
        cache.insert(p.text, p.ids, p.ends)
        return (cache,), {}

    benchmark.pedantic(lambda c: c.insert(s.text, ids, ends, worker="w"), setup=setup, rounds=ROUNDS)


@pytest.mark.benchmark(group="insert-extend-3500-to-4000")
def test_insert_sglang_style_chunked(benchmark, workload) -> None:
    s = workload["convs"][0]

    def setup():
        tree = SglangStyleTree(True)
        tree.insert(s.ids[:3_500])
        return (tree,), {}

    benchmark.pedantic(lambda t: t.insert(s.ids), setup=setup, rounds=ROUNDS)


@pytest.mark.benchmark(group="insert-extend-3500-to-4000")
def test_insert_sglang_style_loop(benchmark, workload) -> None:
    s = workload["convs"][0]

    def setup():
        tree = SglangStyleTree(False)
        tree.insert(s.ids[:3_500])
        return (tree,), {}

    benchmark.pedantic(lambda t: t.insert(s.ids), setup=setup, rounds=ROUNDS)


@pytest.mark.benchmark(group="insert-extend-3500-to-4000")
def test_insert_slime_style(benchmark, workload) -> None:
    s = workload["convs"][0]
    p = s.cut(3_500)

    def setup():
        tree = SlimeStyleTree()
        tree.insert(p.text, p.ids)
        return (tree,), {}

    benchmark.pedantic(lambda t: t.insert(s.text, s.ids), setup=setup, rounds=ROUNDS)


# ---- token end offsets from ids ----------------------------------------------------------


def python_char_ends(ids, lead, start: int = 0) -> list[int]:
    """The router's former Python version (radixrouter.tokenizer.ChatTokenizer.char_ends)."""
    if len(ids) < 2:
        return [start + lead[ids[0]]] if ids else []
    ends = list(accumulate(itemgetter(*ids)(lead), initial=start))
    del ends[0]
    return ends


@pytest.fixture(scope="module")
def char_ends_case():
    rng = random.Random(3)
    table = bytes(rng.choice((0, 1, 1, 1, 2, 3, 4)) for _ in range(151_936))  # characters begun per id
    ids = [rng.randrange(151_936) for _ in range(4_000)]
    want = python_char_ends(ids, table, 7)
    assert token_char_ends(ids, table, 7).tolist() == want
    return ids, table, want


@pytest.mark.benchmark(group="char-ends-4000")
def test_char_ends_rust_array(benchmark, char_ends_case) -> None:
    ids, table, want = char_ends_case
    ids_a = array.array("I", ids)
    assert benchmark(token_char_ends, ids_a, table, 7).tolist() == want


@pytest.mark.benchmark(group="char-ends-4000")
def test_char_ends_rust_list(benchmark, char_ends_case) -> None:
    ids, table, want = char_ends_case
    assert benchmark(token_char_ends, ids, table, 7).tolist() == want


@pytest.mark.benchmark(group="char-ends-4000")
def test_char_ends_python(benchmark, char_ends_case) -> None:
    ids, table, want = char_ends_case
    assert benchmark(python_char_ends, ids, table, 7) == want


# ---- memory --------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, json, random, sys
    sys.path.insert(0, sys.argv[1])
    from bench_cache import SlimeStyleTree, extend
    from radixrouter import PrefixCache, token_char_ends

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    kind = sys.argv[2]
    rng = random.Random(7)
    rust = kind.startswith("radixrouter")
    store = PrefixCache(max_tokens=2_000_000) if rust else SlimeStyleTree()
    gc.collect()
    before = rss()
    total = 0
    for i in range(250):  # 250 distinct sequences x 4,000 tokens = 1,000,000 tokens
        ids, ends = [], []
        text = extend(rng, f"{i:05d}", ids, ends, 4_000)
        lps = [-rng.random() * 5 for _ in ids]
        mask = [1] * len(ids)
        if rust:
            store.insert(text, ids, ends, logprobs=lps, loss_mask=mask)
            if kind == "radixrouter+json":  # the JSON form, once made, stays with the node
                store.match(text).ids_json()
        else:
            store.insert(text, ids, lps, mask)
        total += len(ids)
        del ids, ends, text, lps, mask
    gc.collect()
    used = rss() - before
    stats = store.stats() if rust else {}
    if rust:
        store.clear()
    else:
        store.root.children.clear()
    gc.collect()
    print(json.dumps({"tokens": total, "rss_bytes": used, "per_token": used / total,
                      "estimated_heap": stats.get("bytes"), "rss_after_clear": rss() - before}))
    """
)


@pytest.mark.parametrize("kind", ["radixrouter", "radixrouter+json", "slime-style"])
def test_memory_per_token_1m(benchmark, kind) -> None:
    import json
    import os

    here = os.path.dirname(os.path.abspath(__file__))

    def run():
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, here, kind],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return json.loads(out.stdout)

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(f"\n{kind}: {res['per_token']:.1f} resident bytes per token at {res['tokens']:,} tokens ({res})")
    assert res["tokens"] == 1_000_000
