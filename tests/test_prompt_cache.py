"""PromptBuilder: tokenization through the prefix cache, with the real Qwen3 tokenizer and template.

Every test runs against the real ``radixrouter.PrefixCache`` (skipped until it is built) and against a
small pure-Python stand-in of interface A below, which exists only so that this layer could be developed
before the Rust cache landed.
"""

from __future__ import annotations

import array
import bisect
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import radixrouter
from radixrouter.tokenizer import ChatTokenizer, Prompt, PromptBuilder

IM_END = 151645


class _ModelMatch:
    def __init__(self, length, ids, ends, logprobs, mask, workers):
        self.length = length
        self.token_count = len(ids)
        self.token_ids = ids
        self.ends = ends
        self.logprobs = logprobs
        self.loss_mask = mask
        self.workers = workers
        self.matched_chars = length

    def ids_array(self):
        return array.array("I", self.token_ids)

    def ids_json(self):
        return ("[" + ",".join(map(str, self.token_ids)) + "]").encode()

    def ends_array(self):
        return array.array("I", self.ends)

    def loss_mask_array(self):
        return array.array("B", self.loss_mask)

    def logprobs_array(self):
        return array.array("f", self.logprobs)


class ModelPrefixCache:
    """Stand-in for interface A with the cache's documented rules: existing tokens win (an insert brings
    token data only if its tokens for the part already on the path are exactly those, same ids at the
    same ends; otherwise its text alone is stored); a lookup gives the whole tokens inside the longest
    common prefix."""

    def __init__(self, max_tokens: int = 16_000_000) -> None:
        self.entries: list[tuple] = []

    def insert(self, text, token_ids, token_ends, *, logprobs=None, loss_mask=None, worker=None) -> None:
        ids, ends = list(token_ids), list(token_ends)
        n = len(ids)
        if (
            len(ends) != n
            or (logprobs is not None and len(logprobs) != n)
            or (loss_mask is not None and len(loss_mask) != n)
        ):
            raise ValueError("mismatched lengths")
        if ends and (
            ends[-1] != len(text) or any(a > b for a, b in zip(ends, ends[1:], strict=False)) or ends[0] < 0
        ):
            raise ValueError("bad offsets")
        on_path = self.match(text)
        j = on_path.token_count
        if ids[:j] != on_path.token_ids or ends[:j] != on_path.ends:
            ids, ends, logprobs, loss_mask, n = [], [], None, None, 0  # a conflict: text only
        self.entries.append(
            (text, ids, ends, list(logprobs or [0.0] * n), list(loss_mask or [0] * n), worker)
        )

    def match(self, text: str) -> _ModelMatch:
        best = (0, -1)
        workers: dict[str, int] = {}
        for i, (etext, _ids, ends, _lps, _mask, worker) in enumerate(self.entries):
            lcp = len(os.path.commonprefix([etext, text]))
            if worker and lcp:
                workers[worker] = max(workers.get(worker, 0), lcp)
            n = bisect.bisect_right(ends, lcp)
            if n > best[0]:
                best = (n, i)
        n, i = best
        if n == 0:
            return _ModelMatch(0, [], [], [], [], workers)
        _text, ids, ends, lps, mask, _worker = self.entries[i]
        return _ModelMatch(ends[n - 1], ids[:n], ends[:n], lps[:n], mask[:n], workers)


@pytest.fixture(scope="module")
def qwen() -> ChatTokenizer:
    return ChatTokenizer.qwen3()


@pytest.fixture(params=["rust", "model"])
def make_cache(request):
    if request.param == "model":
        return ModelPrefixCache
    if not hasattr(radixrouter, "PrefixCache"):
        pytest.skip("PrefixCache not built yet")
    return radixrouter.PrefixCache


@pytest.fixture
def cache(make_cache):
    return make_cache()


@pytest.fixture
def builder(qwen, cache) -> PromptBuilder:
    return PromptBuilder(qwen, cache)


def worker_ids(tok: ChatTokenizer, text: str, *, canonical: bool, eos: bool = True) -> list[int]:
    """Output ids a worker could have sampled for ``text``: the canonical tokenization, or one built from
    pieces tokenized separately (a valid tokenization that re-encoding the text does not give back)."""
    if canonical:
        ids = tok.encode(text)
    else:
        ids = []
        for i in range(0, len(text), 3):
            ids += tok.encode(text[i : i + 3])
    assert tok.decode(ids, skip_special_tokens=False) == text
    return ids + ([IM_END] if eos else [])


def chat(builder: PromptBuilder, messages: list[dict], reply: str, out_ids: list[int], **record_kw) -> Prompt:
    """One turn: render, tokenize through the cache, 'generate' (reply, out_ids), record."""
    text = builder.tokenizer.render(messages)
    prompt = builder.tokenize(text)
    assert builder.tokenizer.decode(prompt.ids, skip_special_tokens=False) == text
    builder.record(prompt, reply, out_ids, **record_kw)
    messages.append({"role": "assistant", "content": reply})
    return prompt


def test_without_cache_is_plain_tokenization(qwen) -> None:
    b = PromptBuilder(qwen, None)
    text = qwen.render([{"role": "user", "content": "hello world"}])
    p = b.tokenize(text)
    assert p.ids == qwen.encode(text) and p.cached_tokens == 0 and p.text == text
    assert p.ids_json() == ("[" + ",".join(map(str, p.ids)) + "]").encode()
    b.record(p, "hi", [6023, IM_END])  # no cache: nothing to do, no error


def test_seams_are_exact_for_qwen3(builder) -> None:
    assert builder.exact_seams


def test_multi_turn_equals_full_tokenization(builder, qwen) -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    previous: Prompt | None = None
    for turn in range(8):
        messages.append(
            {"role": "user", "content": f"Question {turn}: what is {turn} + {turn}? Explain  briefly.\n"}
        )
        reply = f"{turn} + {turn} = {2 * turn}. Adding a number to itself doubles it{'!' * turn}"
        prompt = chat(builder, messages, reply, worker_ids(qwen, reply, canonical=True))
        assert prompt.ids == qwen.encode(prompt.text)
        if previous is None:
            assert prompt.cached_tokens == 0
        else:
            # The whole previous prompt and its answer (with <|im_end|>) came from the cache.
            reused = len(previous.ids) + len(qwen.encode(messages[-3]["content"])) + 1
            assert prompt.cached_tokens == reused
        previous = prompt


def test_worker_ids_come_back_exactly(builder, qwen) -> None:
    assert qwen.encode("hello world") == [14990, 1879]
    sampled = [49122, 385, 1879]  # decodes to "hello world" too
    messages = [{"role": "user", "content": "Say hello world"}]
    p1 = chat(builder, messages, "hello world", sampled + [IM_END])
    messages.append({"role": "user", "content": "Again, but longer"})
    long_reply = "Sure: hello world, hello world, and hello to the whole wide world."
    long_ids = worker_ids(qwen, long_reply, canonical=False)
    p2 = chat(builder, messages, long_reply, long_ids)
    rest = p2.text[len(p1.text) + len("hello world<|im_end|>") :]
    assert rest.startswith("\n<|im_start|>user\nAgain")
    assert p2.ids_json() == orjson.dumps(p1.ids + sampled + [IM_END] + qwen.encode(rest))
    assert p2.ids == p1.ids + sampled + [IM_END] + qwen.encode(rest)
    assert p2.ids != qwen.encode(p2.text)  # the test means something: a re-tokenization differs
    assert p2.cached_tokens == len(p1.ids) + 4
    # One turn later both generated spans are still the worker's.
    messages.append({"role": "user", "content": "Thanks"})
    p3 = builder.tokenize(qwen.render(messages))
    rest3 = p3.text[len(p2.text) + len(long_reply) + len("<|im_end|>") :]
    assert p3.ids == p2.ids + long_ids + qwen.encode(rest3)


def test_length_stop_without_eos_keeps_worker_ids(builder, qwen) -> None:
    messages = [{"role": "user", "content": "Count"}]
    cut = worker_ids(qwen, "one two thr", canonical=False, eos=False)
    p1 = chat(builder, messages, "one two thr", cut, finish_reason={"type": "length", "length": len(cut)})
    # An RL client continuing the same generation sends prompt + partial answer as text: all worker ids.
    cont = builder.tokenize(p1.text + "one two thr")
    assert cont.ids == p1.ids + cut and cont.cached_tokens == len(cont.ids)
    messages.append({"role": "user", "content": "go on"})
    p2 = builder.tokenize(qwen.render(messages))
    # The template closes the turn with <|im_end|>; the seam right after the worker's ids is kept.
    rest = p2.text[len(p1.text) + len("one two thr") :]
    assert rest.startswith("<|im_end|>\n<|im_start|>user")
    assert p2.ids == p1.ids + cut + qwen.encode(rest)


def test_rewritten_history_falls_back_to_exact_tokenization(builder, qwen) -> None:
    # Qwen3 drops <think>...</think> from assistant turns before the last user query, so the next prompt
    # diverges right after "<|im_start|>assistant\n": the worker's ids cannot be reused.
    messages = [{"role": "system", "content": "Think first."}, {"role": "user", "content": "2+2?"}]
    text1 = qwen.render(messages)
    p1 = builder.tokenize(text1)
    reply = "<think>\nTwo and two make four.\n</think>\n\nIt is 4."
    builder.record(p1, reply, worker_ids(qwen, reply, canonical=False))
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "3+3?"}]
    p2 = builder.tokenize(qwen.render(messages))
    assert "<think>" not in p2.text and "It is 4." in p2.text
    assert p2.ids == qwen.encode(p2.text)
    # Reused up to the last special token before the divergence: p1 without "assistant\n".
    assert p2.cached_tokens == len(p1.ids) - len(qwen.encode("assistant\n"))
    assert builder.backoffs >= 1


def test_edited_answer_keeps_the_worker_ids_of_the_kept_part(builder, qwen) -> None:
    messages = [{"role": "user", "content": "Greet"}]
    reply = "hello world, and more"
    sampled = [49122, 385, 1879, 11, 323, 803]  # hel lo  world , and more
    assert qwen.decode(sampled) == reply
    p1 = chat(builder, messages, reply, sampled + [IM_END])
    # The client cut the answer to "hello world" (a token boundary, followed by <|im_end|>).
    messages[-1]["content"] = "hello world"
    messages.append({"role": "user", "content": "Next"})
    p2 = builder.tokenize(qwen.render(messages))
    rest = p2.text[len(p1.text) + len("hello world") :]
    assert p2.ids == p1.ids + [49122, 385, 1879] + qwen.encode(rest)
    # Cut inside a token ("hello wor"): the worker's ids do not spell it; back to a full tokenization.
    messages[-2]["content"] = "hello wor"
    p3 = builder.tokenize(qwen.render(messages))
    assert p3.ids == qwen.encode(p3.text)


def test_tokenizer_that_is_not_byte_level_records_text_only(cache) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(
        models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "<|im_end|>": 3}, unk_token="[UNK]")
    )
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(["<|im_end|>"])
    tok = ChatTokenizer(
        raw, "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}", {"eos_token": "<|im_end|>"}
    )
    assert not tok.byte_level
    b = PromptBuilder(tok, cache)
    assert not b.exact_seams
    p = b.tokenize(tok.render([{"role": "user", "content": "hello world"}]))
    assert p.ids == [1, 2, 3] and p.cached_tokens == 0
    b.record(p, "hello", [1, 3], worker="w")
    m = cache.match(p.text + "hello")
    assert m.token_count == 0 and m.workers.get("w", 0) > 0


@pytest.mark.parametrize("tail", ["ly warm today", "r than yesterday", "st", "  \n\nok"])
def test_seam_backs_off_to_a_special_token(builder, qwen, tail) -> None:
    head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nThe weather is nice"
    builder.record(builder.tokenize(head), "", [])
    full = head + tail
    naive = qwen.encode(head) + qwen.encode(tail)
    p = builder.tokenize(full)
    assert p.ids == qwen.encode(full)
    # The seam went back to the <|im_start|> of the user turn.
    assert p.cached_tokens == len(qwen.encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>"))
    if tail != "  \n\nok":
        assert naive != p.ids  # splitting where the cache ended would have been wrong


def test_trimmed_stop_string_or_mismatched_ids_are_not_recorded(builder, qwen) -> None:
    messages = [{"role": "user", "content": "List two"}]
    ids_with_stop = qwen.encode("a, b END")  # the worker stopped on the string " END"; text is trimmed
    p1 = chat(builder, messages, "a, b", ids_with_stop, finish_reason={"type": "stop", "matched": " END"})
    messages.append({"role": "user", "content": "more"})
    p2 = builder.tokenize(qwen.render(messages))
    assert p2.ids == qwen.encode(p2.text)
    assert p2.cached_tokens == len(p1.ids) - len(qwen.encode("assistant\n"))  # the prompt was recorded
    # Ids that are not the text's (whatever the reason) are refused too.
    before = builder.rejected_outputs
    builder.record(p2, "xyz", [IM_END - 100, IM_END])
    assert builder.rejected_outputs == before + 1
    assert builder.tokenize(p2.text + "xyz<|im_end|>\n").ids == qwen.encode(p2.text + "xyz<|im_end|>\n")


def test_loss_mask_and_logprobs(builder, qwen, cache) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    out1 = worker_ids(qwen, "hello world", canonical=False)
    lp1 = [-0.5 - i for i in range(len(out1))]
    p1 = chat(builder, messages, "hello world", out1, output_logprobs=lp1, worker="w1")
    m = cache.match(p1.text + "hello world<|im_end|>")
    assert m.token_ids == p1.ids + out1
    assert m.loss_mask == [0] * len(p1.ids) + [1] * len(out1)
    assert m.logprobs == pytest.approx([0.0] * len(p1.ids) + lp1)
    assert m.workers.get("w1", 0) > 0
    messages.append({"role": "user", "content": "Bye"})
    out2 = worker_ids(qwen, "bye", canonical=True)
    p2 = chat(builder, messages, "bye", out2, output_logprobs=[-1.0] * len(out2), worker="w2")
    assert p2.match.workers.get("w1", 0) >= len(p1.text)  # the lookup is kept for routing decisions
    m2 = cache.match(p2.text + "bye<|im_end|>")
    assert m2.token_ids == p2.ids + out2
    k1 = len(p1.ids)
    # The first answer keeps its mask and logprobs inside the second turn's prompt.
    assert m2.loss_mask[k1 : k1 + len(out1)] == [1] * len(out1)
    assert m2.logprobs[k1 : k1 + len(out1)] == pytest.approx(lp1)
    assert sum(m2.loss_mask) == len(out1) + len(out2)
    assert m2.logprobs[-len(out2) :] == pytest.approx([-1.0] * len(out2))
    with pytest.raises(ValueError, match="logprobs"):
        builder.record(p2, "bye", out2, output_logprobs=[0.0])


def test_repeating_a_prompt_does_not_pick_up_its_answer(builder, qwen) -> None:
    text = qwen.render([{"role": "user", "content": "Pick a number"}])
    p1 = builder.tokenize(text)
    builder.record(p1, "", [IM_END])  # an empty answer: only the stop token
    builder.record(p1, "7", worker_ids(qwen, "7", canonical=True))
    again = builder.tokenize(text)
    assert again.ids == p1.ids == qwen.encode(text)
    # Reused up to the generation prompt's <|im_start|>; "assistant\n" (not a special-token seam) is
    # tokenized again.
    assert again.cached_tokens == len(p1.ids) - len(qwen.encode("assistant\n"))
    after_empty = builder.tokenize(text + "<|im_end|>\n<|im_start|>user\nAnother")
    assert after_empty.ids == qwen.encode(after_empty.text)


def test_shared_system_prompt_is_reused_by_other_conversations(builder, qwen) -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    messages = [system]
    for turn in range(3):
        messages.append({"role": "user", "content": f"conversation A, question {turn}"})
        chat(builder, messages, f"answer {turn}", worker_ids(qwen, f"answer {turn}", canonical=True))
    other = builder.tokenize(qwen.render([system, {"role": "user", "content": "conversation B"}]))
    assert other.ids == qwen.encode(other.text)
    system_block = qwen.encode(qwen.render([system], add_generation_prompt=False))
    # Everything up to the <|im_start|> of B's user turn came from the cache.
    assert other.cached_tokens == len(system_block) + 1


def _turns():
    words = st.sampled_from(
        [
            "hello",
            " world",
            "\n",
            "\n\n",
            "  ",
            "é",
            "😀",
            "<think>",
            "</think>",
            "x",
            "123",
            "<|im_end|>",
            ".",
            " the",
            "ly",
        ]
    )
    text = st.lists(words, min_size=1, max_size=8).map("".join)
    return st.lists(
        st.tuples(text, text, st.booleans(), st.sampled_from(["eos", "length", "none"])),
        min_size=1,
        max_size=5,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=_turns())
def test_property_ids_always_spell_the_prompt(qwen, make_cache, turns) -> None:
    """Random conversations and worker outputs: the ids always spell the prompt; each turn's output is
    recorded with the worker's ids unless the cache holds a different tokenization of a span the new
    record shares (possible only where the template rewrote history: <think> blocks, or an answer that
    spells a special token); when a recorded turn is re-rendered verbatim, the next prompt is exactly the
    ids the worker saw plus what it generated plus a tokenization of the new text; worker ids never leak
    into an unrelated prompt."""
    cache = make_cache()
    b = PromptBuilder(qwen, cache)
    messages: list[dict] = []
    previous: tuple[Prompt, str, list[int], bool] | None = None
    rewritten = False  # some earlier turn was not re-rendered verbatim
    recorded = False
    for user, reply, canonical, stop in turns:
        messages.append({"role": "user", "content": user})
        text = qwen.render(messages)
        p = b.tokenize(text)
        assert p.ids_json() == orjson.dumps(p.ids)
        assert qwen.decode(p.ids, skip_special_tokens=False) == text
        if previous is None:
            assert p.ids == qwen.encode(text)
        else:
            prev, prev_reply, prev_out, prev_eos = previous
            if not text.startswith(prev.text + prev_reply + "<|im_end|>"):
                rewritten = True
            elif recorded:
                rest = text[len(prev.text) + len(prev_reply) + (len("<|im_end|>") if prev_eos else 0) :]
                assert p.ids == prev.ids + prev_out + qwen.encode(rest)
        out = worker_ids(qwen, reply, canonical=canonical, eos=stop == "eos")
        b.record(p, reply, out, finish_reason={"type": "length"} if stop == "length" else None)
        spelled = reply + ("<|im_end|>" if stop == "eos" else "")
        recorded = cache.match(text + spelled).token_ids == p.ids + out
        assert recorded or rewritten or any(t in reply for t in ("<|im_end|>", "<think>", "</think>"))
        previous = (p, reply, out, stop == "eos")
        messages.append({"role": "assistant", "content": reply})
    fresh = qwen.render([{"role": "user", "content": "unrelated"}])
    assert b.tokenize(fresh).ids == qwen.encode(fresh)
