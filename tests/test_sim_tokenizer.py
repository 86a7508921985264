"""The simulated worker's tokenizer: piece-wise cached encoding equals one-shot encoding; templates render."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixrouter.sim.tokenizer import SimTokenizer

QWEN = SimTokenizer.load(tokenizer="qwen3")

PIECES = [
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "\n",
    " ",
    "  ",
    "\n\n",
    "é",
    "日本",
    "hello",
    " world",
    "x" * 40,
    "<|endoftext|>",
    "<|im_end",
    "|>",
    "\t",
    "🙂",
]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=30)), min_size=1, max_size=120))
def test_piecewise_encode_equals_whole(parts):
    tok = QWEN
    text = "".join(parts) * 3  # long enough for the piece-wise path
    assert tok.encode(text) == tok._hf.encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == tok._hf.encode(text, add_special_tokens=False).ids  # again, from the cache


def test_chat_render_matches_template_and_byte_fallback():
    qwen = QWEN
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert (
        qwen.render(msgs)
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert qwen.render(msgs, add_generation_prompt=False).endswith("U<|im_end|>\n")
    fb = SimTokenizer.load()
    assert fb.render(msgs) == qwen.render(msgs)  # the fallback uses ChatML too
    ids = fb.encode(fb.render(msgs))
    assert fb.decode(ids, skip_special_tokens=False) == fb.render(msgs)
    assert fb.decode(ids) == "system\nS\nuser\nU\nassistant\n"
