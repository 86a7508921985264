"""ChatTokenizer.encode's fast paths (the Rust ByteLevelBpe for the Qwen2/3 and Llama-3 patterns, any text; the Python
_AsciiEncoder for other regexes, ASCII text) give exactly the ids of tokenizers' own encode."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from radixrouter._core import ByteLevelBpe
from radixrouter.tokenizer import ChatTokenizer, _ascii_regex, _AsciiEncoder, qwen3_files


@pytest.fixture(scope="module")
def qwen() -> ChatTokenizer:
    return ChatTokenizer.qwen3()


def reference(tok: ChatTokenizer, text: str) -> list[int]:
    return tok.tokenizer.encode(text, add_special_tokens=False).ids


# ASCII pieces that exercise the pre-tokenizer regex (contractions in any case, digit runs, whitespace
# before words and line ends, control characters, punctuation runs) and added tokens, whole and partial
_PIECES = [
    *"abzAZ09 \t\n\r\x0b\x0c\x1c\x1f\x00\x7f.,;:!?'\"-_()[]{}<>|/\\#@$%^&*~`+=",
    "'s", "'S", "'ll", "'LL", "'Re", "'ve", "'d", "'M", "  ", "   ", " \n", "\n\n", "\r\n", "\t\n ",
    "Hello", " world", "12345", "x=1", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>",
    "</tool_call>", "<|endoftext|>", "<|im_", "im_end|>", "<|", "|>",
]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_fast_path_equals_tokenizers(qwen, pieces) -> None:
    text = "".join(pieces)
    assert qwen.encode(text) == reference(qwen, text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_any_ascii_text(qwen, text) -> None:
    assert qwen.encode(text) == reference(qwen, text)


def test_qwen3_uses_the_fast_path_and_chat_prompts_match(qwen) -> None:
    assert isinstance(qwen._fast, ByteLevelBpe)
    for k in range(50):
        prompt = qwen.render(
            [
                {"role": "system", "content": "You are helpful.\n\nBe brief."},
                {"role": "user", "content": f"{k}: what's   the time?\tIt's 10:35 -- isn't it?"},
                {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nNo idea."},
                {"role": "user", "content": "Say 'OK'.\r\n"},
            ]
        )
        assert prompt.isascii()
        assert qwen.encode(prompt) == reference(qwen, prompt)
    # the piece cache is filled and used
    assert qwen._fast.cached_pieces > 0


def test_non_ascii_text(qwen, qwen_python) -> None:
    for text in ["naïve café", "日本語 <|im_end|> x", "a\u00a0b", "你好，世界！\n\n"]:
        assert qwen._fast.encode(text) is not None  # the Rust path
        assert qwen.encode(text) == reference(qwen, text)
        assert qwen_python.encode(text) is None  # the Python path is for ASCII text only
    for text in ["e\u0301", "\u212b<|im_end|>"]:  # not NFC: tokenizers normalizes and encodes them
        assert qwen._fast.encode(text) is None
        assert qwen.encode(text) == reference(qwen, text)


@pytest.fixture(scope="module")
def qwen_python(qwen) -> _AsciiEncoder:
    enc = _AsciiEncoder.build(qwen.tokenizer, native=False)
    assert isinstance(enc, _AsciiEncoder)
    return enc


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_python_path_equals_tokenizers(qwen, qwen_python, pieces) -> None:
    text = "".join(pieces)
    assert qwen_python.encode(text) == reference(qwen, text)


def test_gap_falls_back(qwen) -> None:
    # a regex that leaves characters unmatched: the encoder declines and ChatTokenizer uses tokenizers
    enc = _AsciiEncoder({}, _ascii_regex(r"\p{L}+"), qwen.tokenizer.model)
    assert enc.encode("abc def") is None
    assert enc.encode("abcdef") == reference(qwen, "abcdef")


def _variant(mutate) -> Tokenizer:
    spec = json.loads((qwen3_files() / "tokenizer.json").read_text())
    mutate(spec)
    return Tokenizer.from_str(json.dumps(spec))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(normalizer={"type": "Lowercase"}),  # changes ASCII text
        lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed"),
        lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\p{Lu}+|\s+"),
        lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True),
        lambda s: s["added_tokens"][0].update(lstrip=True),
    ],
    ids=["lowercase-normalizer", "removed-behavior", "unsupported-class", "prefix-space", "lstrip-token"],
)
def test_other_pipelines_get_no_fast_path(mutate) -> None:
    assert _AsciiEncoder.build(_variant(mutate)) is None


def _set_pattern(pattern: str):
    return lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=pattern)


def test_other_patterns_keep_the_python_path() -> None:
    # a pattern that is not one of the two known strings: the regex path, still exact
    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok = _variant(_set_pattern(pattern))
    enc = _AsciiEncoder.build(tok)
    assert isinstance(enc, _AsciiEncoder)
    text = "x 12345 it's\n\n  <|im_end|>"
    assert enc.encode(text) == tok.encode(text, add_special_tokens=False).ids


def test_regex_translation() -> None:
    rx = _ascii_regex(r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}")
    assert rx.pattern == r"[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]"
    with pytest.raises(ValueError):
        _ascii_regex(r"\p{Han}+")
    with pytest.raises(ValueError):
        _ascii_regex(r"[a[b]]")


@pytest.mark.parametrize(
    ("normalizer", "any_text"),
    [
        ({"type": "Sequence", "normalizers": [{"type": "NFC"}]}, True),
        ({"type": "NFKC"}, False),  # not implemented in Rust: ASCII text only
        (None, True),
    ],
    ids=["sequence-nfc", "nfkc", "none"],
)
def test_normalizer_decides_what_rust_encodes(normalizer, any_text) -> None:
    tok = _variant(lambda s: s.update(normalizer=normalizer))
    enc = _AsciiEncoder.build(tok)
    assert isinstance(enc, ByteLevelBpe)
    for text in ["x 日本語 ｘ²", "e\u0301"]:
        got = enc.encode(text)
        want = tok.encode(text, add_special_tokens=False).ids
        if any_text and (normalizer is None or text != "e\u0301"):
            assert got == want
        else:
            assert got is None
    assert enc.encode("plain <|im_end|>") == tok.encode("plain <|im_end|>", add_special_tokens=False).ids
