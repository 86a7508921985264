"""radixrouter._core.ByteLevelBpe against Hugging Face tokenizers: encode (Qwen3, and a Llama-3-style variant of it)
on random ASCII and multilingual text, decode / spells on random ids, argument errors, and its use by ChatTokenizer /
PromptBuilder."""

from __future__ import annotations

import importlib.util
import json
import string
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers

from radixrouter._core import ByteLevelBpe
from radixrouter.tokenizer import (
    _NATIVE_PATTERNS,
    ChatTokenizer,
    PromptBuilder,
    _AsciiEncoder,
    _byte_alphabet,
    qwen3_files,
)

QWEN_PATTERN, LLAMA3_PATTERN = list(_NATIVE_PATTERNS)


def _spec() -> dict:
    return json.loads((qwen3_files() / "tokenizer.json").read_text())


def _native(tok: Tokenizer) -> ByteLevelBpe:
    enc = _AsciiEncoder.build(tok)
    assert isinstance(enc, ByteLevelBpe)
    return enc


@pytest.fixture(scope="module")
def qwen() -> Tokenizer:
    return Tokenizer.from_file(str(qwen3_files() / "tokenizer.json"))


# Tokens added to the Llama-3-style variant: digit groups (Qwen has single digits only), reached by merges
# ("12", "123") or only as whole pieces with ignore_merges ("456", " xyzzy")
_EXTRA = {"12": 151_700, "123": 151_701, "456": 151_702, "Ġxyzzy": 151_703}


@pytest.fixture(scope="module")
def llama3() -> Tokenizer:
    """Qwen3's vocabulary with Llama-3's pre-tokenizer pattern (digits in threes), ignore_merges and no
    normalizer, as Llama-3's tokenizer.json has (no Llama-3 tokenizer ships in a package we install), plus
    ``_EXTRA``."""
    spec = _spec()
    spec["normalizer"] = None
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_PATTERN
    spec["model"]["ignore_merges"] = True
    spec["model"]["vocab"].update(_EXTRA)
    spec["model"]["merges"] += [["1", "2"], ["12", "3"]]
    return Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def qwen_bpe(qwen) -> ByteLevelBpe:
    return _native(qwen)


@pytest.fixture(scope="module")
def llama3_bpe(llama3) -> ByteLevelBpe:
    return _native(llama3)


def test_patterns_are_the_tokenizer_json_strings(qwen) -> None:
    pre = json.loads(qwen.pre_tokenizer.__getstate__())
    assert pre["pretokenizers"][0]["pattern"]["Regex"] == QWEN_PATTERN
    assert LLAMA3_PATTERN == QWEN_PATTERN.replace(r"\p{N}|", r"\p{N}{1,3}|")
    assert _NATIVE_PATTERNS == {QWEN_PATTERN: 1, LLAMA3_PATTERN: 3}


# Random ASCII text: any character (control characters included), runs of white space / digits / letters /
# punctuation, contractions in any case, added tokens whole and cut
_ADDED = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
_FRAGMENTS = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=6),
    st.text(alphabet=" \t\n\r\x0b\x0c", min_size=1, max_size=8),
    st.text(alphabet=string.digits, min_size=1, max_size=9),
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=12),
    st.text(alphabet=string.punctuation + "\x00\x1c\x1d\x1e\x1f\x7f", min_size=1, max_size=5),
    st.sampled_from(["'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'Ll", "'d", "'x", "''"]),
    st.sampled_from([*_ADDED, "<|im_", "im_end|>", "<|", "|>", "<think", "</"]),
)
_TEXTS = st.lists(_FRAGMENTS, max_size=30).map("".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS)
def test_qwen3_encode_equals_tokenizers(qwen, qwen_bpe, text) -> None:
    assert qwen_bpe.encode(text) == qwen.encode(text, add_special_tokens=False).ids


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS)
def test_llama3_pattern_encode_equals_tokenizers(llama3, llama3_bpe, text) -> None:
    assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
def test_any_ascii_text(qwen, llama3, qwen_bpe, llama3_bpe, text) -> None:
    assert qwen_bpe.encode(text) == qwen.encode(text, add_special_tokens=False).ids
    assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids


# ---- any text ----------------------------------------------------------------------------------------

# Onig's \s beyond ASCII (Unicode White_Space); \x1c-\x1f and U+200B, U+FEFF, U+180E are not white space
_SPACES = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_NOT_SPACES = "\x1c\x1d\x1e\x1f\u200b\u180e\ufeff"
_SCRIPTS = [
    "你好，世界！这是一个测试。「引用」、还有《书名》……",  # CJK with fullwidth punctuation
    "日本語のテキストです。カタカナ ｶﾀｶﾅ",
    "안녕하세요 세계",
    "Привет, мир! Ёлка ёж",
    "مرحبا بالعالم، هذا اختبار؟",  # Arabic
    "नमस्ते दुनिया। क़ ज़",  # Devanagari (nukta: composition-excluded, stays decomposed in NFC)
    "கா கொ ปลา",  # Tamil vowel signs (NFC quick check "maybe"), Thai
    "Ελληνικά ΣΊΣΥΦΟΣ",
    "🙂👍🏽👨‍👩‍👧 🇩🇪 ❤️",  # emoji: modifiers, ZWJ sequences, flags, variation selector
    "١٢٣٤ ۱۲۳ १२३ １２３ ²³ ½ Ⅻ ⑳",  # digits of other scripts, fullwidth, other numbers (\p{N})
    "café naïve Ångström ﬁ",  # precomposed
    "cafe\u0301 nai\u0308ve A\u030angstro\u0308m",  # decomposed: not NFC
    "a\u0316\u0301 a\u0301\u0316 \u0301x",  # marks in and out of canonical order, a mark first
    "\u212b \u2126 \u0958 \u1e9b\u0323",  # singletons and composition exclusions (NFC changes them)
    "a\u1abf\u0301 \xe1\u1abf \u0898 \u0c3c",  # marks newer than tokenizers' NFC tables (Unicode 9)
    "'ſ 'S 'ſt ſ's 'ＳＳ 'ß 'K 'k \u212a's",  # contractions: U+017F folds to s; fullwidth / Kelvin do not match
    "\u200b\u200c\u200d\u2060\ufeff\u00ad",  # format characters (not letters, not white space)
    "\ue000\U000f0000\U0010fffd",  # private use
]
_UNICODE_FRAGMENTS = st.one_of(
    _FRAGMENTS,
    st.sampled_from(_SCRIPTS).flatmap(lambda t: st.integers(0, len(t)).map(lambda k: t[k : k + 12])),
    st.text(alphabet=_SPACES + _NOT_SPACES + " \n\r\t", min_size=1, max_size=6),
    st.text(alphabet=st.characters(exclude_categories=("Cs", "Cn")), max_size=6),
    st.text(alphabet=st.characters(max_codepoint=0x3000, exclude_categories=("Cs", "Cn")), max_size=6),
)
_UNICODE_TEXTS = st.lists(_UNICODE_FRAGMENTS, max_size=24).map("".join)


def _segments(text: str) -> list[str]:
    """The text between added tokens (tokenizers normalizes each apart)."""
    out, rest = [], text
    while rest:
        hits = [(rest.find(t), -len(t), t) for t in _ADDED if t in rest]
        if not hits:
            break
        k, _, t = min(hits)
        out.append(rest[:k])
        rest = rest[k + len(t) :]
    return [*out, rest]


def _check_nfc_text(tok: Tokenizer, bpe: ByteLevelBpe, text: str) -> None:
    got = bpe.encode(text)
    not_nfc = any(not unicodedata.is_normalized("NFC", seg) for seg in _segments(text))
    assert (got is None) == not_nfc, text
    if got is not None:
        assert got == tok.encode(text, add_special_tokens=False).ids


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_UNICODE_TEXTS)
def test_qwen3_any_text_equals_tokenizers(qwen, qwen_bpe, text) -> None:
    """Qwen3 (NFC normalizer): ids equal tokenizers', None exactly where a segment is not in NFC. (The characters
    are those Python's Unicode tables know, so that its NFC check is the encoder's.)"""
    _check_nfc_text(qwen, qwen_bpe, text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_UNICODE_TEXTS)
def test_llama3_any_text_equals_tokenizers(llama3, llama3_bpe, text) -> None:
    """No normalizer: every text is encoded, with tokenizers' ids."""
    assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
def test_any_code_points(qwen, llama3, qwen_bpe, llama3_bpe, text) -> None:
    # every code point, unassigned ones and those newer than Python's tables included
    assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids
    got = qwen_bpe.encode(text)
    if got is not None:
        assert got == qwen.encode(text, add_special_tokens=False).ids
    else:
        assert not text.isascii()


def test_scripts_whole(qwen, llama3, qwen_bpe, llama3_bpe) -> None:
    for text in [*_SCRIPTS, "".join(_SCRIPTS), "\n\n".join(_SCRIPTS) + "<|im_end|>\n"]:
        _check_nfc_text(qwen, qwen_bpe, text)
        assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids
    assert qwen_bpe.encode(_SCRIPTS[0]) is not None


def test_white_space_is_onigs() -> None:
    """The white space the scanner knows is exactly what tokenizers' regex engine matches as \\s."""
    split = pre_tokenizers.Split(Regex(r"\s+"), behavior="removed", invert=True)
    everything = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000)
    found = "".join(everything[a:b] for _, (a, b) in split.pre_tokenize_str(everything))
    assert found == "\t\n\x0b\x0c\r " + _SPACES


@pytest.mark.parametrize("c", [*_SPACES, *_NOT_SPACES])
def test_special_white_space(qwen, llama3, qwen_bpe, llama3_bpe, c) -> None:
    for text in [f"a{c}b", f"a{c}{c}b", f"a{c}\n{c}", f"{c}!", f"x {c}1", f"{c}{c}", f"1{c}{c}  z", f"'{c}s"]:
        _check_nfc_text(qwen, qwen_bpe, text)  # U+2000 / U+2001 are not NFC (they become U+2002 / U+2003)
        assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids


def test_contraction_case_folding(llama3, llama3_bpe) -> None:
    """Every character whose case mappings involve a contraction's letters, after an apostrophe (and before an
    "e" / "l"): onig's case-insensitive match takes U+017F for "s", nothing else beyond ASCII."""
    candidates = [
        chr(c)
        for c in range(0x80, 0x110000)
        if not 0xD800 <= c < 0xE000
        and set((chr(c).lower() + chr(c).upper() + chr(c).casefold()).lower()) & set("strevmld")
    ]
    assert "ſ" in candidates and "ß" in candidates and "ﬆ" in candidates
    texts = [t for c in candidates for t in (f"'{c}x", f"'{c}e", f"'{c}l", f"'r{c}", f"'l{c}", f"'v{c}")]
    text = " ".join(texts)
    assert llama3_bpe.encode(text) == llama3.encode(text, add_special_tokens=False).ids


def test_class_table_is_current() -> None:
    """rust/tok/classes.rs is what gen_classes.py reads off the installed tokenizers (regenerate if not)."""
    path = Path(__file__).resolve().parents[1] / "rust" / "tok" / "gen_classes.py"
    spec = importlib.util.spec_from_file_location("gen_classes", path)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render() == path.with_name("classes.rs").read_text()


def test_other_normalizers_are_ascii_only(qwen) -> None:
    model = json.loads(qwen.model.__getstate__())
    added = {a.content: i for i, a in qwen.get_added_tokens_decoder().items()}
    for name in ["NFKC"]:  # NFD and NFKD are the same case (one build takes 0.4 s)
        bpe = ByteLevelBpe(model["vocab"], model["merges"], added, max_digits=1, normalizer=name)
        assert bpe.encode("naïve") is None and bpe.encode("日本") is None
        assert bpe.encode("naive<|im_end|>") == qwen.encode("naive<|im_end|>", add_special_tokens=False).ids
    with pytest.raises(ValueError, match="normalizer must be None"):
        ByteLevelBpe(model["vocab"], model["merges"], added, max_digits=1, normalizer="Lowercase")


_BYTE_CHAR = {b: c for c, b in _byte_alphabet().items()}
# Short texts: every substring becomes a vocabulary entry below. Added tokens are plain text here (neither
# pre_tokenize_str nor a ByteLevelBpe without added tokens treats them specially).
_SHORT_TEXTS = st.lists(_FRAGMENTS, max_size=8).map(lambda parts: "".join(parts)[:32])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SHORT_TEXTS, st.sampled_from(["qwen", "llama3"]))
def test_scanner_pieces_equal_the_regex(qwen, llama3, text, kind) -> None:
    """The scanner's pieces are exactly the regex's: with every substring of the text in the vocabulary as its
    own token and ignore_merges, each piece becomes one id, so the ids spell out the segmentation."""
    tok = llama3 if kind == "llama3" else qwen
    want_pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
    vocab = {c: b for b, c in _BYTE_CHAR.items()}
    bl = "".join(_BYTE_CHAR[ord(c)] for c in text)
    for i in range(len(bl)):
        for j in range(i + 2, len(bl) + 1):
            vocab.setdefault(bl[i:j], 256 + len(vocab))
    bpe = ByteLevelBpe(vocab, [], {}, max_digits=3 if kind == "llama3" else 1, ignore_merges=True)
    assert bpe.encode(text) == [vocab[p] for p in want_pieces]


def test_digits_grouping_and_ignore_merges(qwen_bpe, llama3_bpe) -> None:
    assert len(qwen_bpe.encode("1234567")) == 7
    seven = qwen_bpe.encode("7")
    assert llama3_bpe.encode("1234567") == [_EXTRA["123"], _EXTRA["456"], *seven]  # 123 456 7
    assert llama3_bpe.encode("12") == [_EXTRA["12"]]
    assert llama3_bpe.encode(" xyzzy") == [_EXTRA["Ġxyzzy"]]
    assert len(qwen_bpe.encode(" xyzzy")) > 1


def test_long_and_repetitive_text(qwen, qwen_bpe) -> None:
    # long white space / digit / punctuation runs (pieces past the cache's length limit), and a text long
    # enough to be encoded with the thread detached
    for text in [
        " " * 5000 + "x",
        "\n" * 3001,
        "9" * 2000,
        "!" * 1000 + "\r\n" * 10,
        "ab" * 40_000,
        "a " * 40_000,
    ]:
        assert qwen_bpe.encode(text) == qwen.encode(text, add_special_tokens=False).ids


def test_nfc(qwen, qwen_bpe) -> None:
    for text in ["naïve", "日本語", "a\u00a0b", "\x80", "", "x<|im_end|>\u0301"]:
        assert qwen_bpe.encode(text) == qwen.encode(text, add_special_tokens=False).ids
    for text in ["nai\u0308ve", "\u212b", "<|im_end|>e\u0301"]:
        assert qwen_bpe.encode(text) is None  # NFC changes them: tokenizers' job


def test_threads_share_one_encoder(qwen, qwen_bpe) -> None:
    texts = [
        f"request {k}: it's {k * 7919} o'clock\n\n<|im_end|>\n<|im_start|>assistant\n" for k in range(200)
    ]
    want = [qwen.encode(t, add_special_tokens=False).ids for t in texts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(qwen_bpe.encode, texts * 4)) == want * 4


# ---- decoding ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 151_700), st.sampled_from(range(151_643, 151_669))), max_size=12))
def test_decode_equals_tokenizers(qwen, qwen_bpe, ids) -> None:
    text = qwen.decode(ids, skip_special_tokens=False)
    assert qwen_bpe.spells(ids, text)
    assert not qwen_bpe.spells(ids, text + "x")
    if text:
        assert not qwen_bpe.spells(ids, text[:-1])
    known = all(qwen.id_to_token(i) is not None for i in ids)
    raw = qwen_bpe.decode_bytes(ids)
    assert (raw is not None) == known
    if raw is not None:
        assert raw.decode("utf-8", "replace") == text


def test_decode_of_unusual_added_tokens() -> None:
    # The ByteLevel decoder maps a token's characters back to bytes when all of them are in the byte-level
    # alphabet (so "é" becomes byte 0xE9, "Ġ" a space), else passes the token's UTF-8 text through.
    tok = Tokenizer.from_file(str(qwen3_files() / "tokenizer.json"))
    contents = ["é", "a b", "Ġxy", "▁y", "Āz", "<sep>"]
    tok.add_tokens([AddedToken(c, normalized=False) for c in contents])
    model = json.loads(tok.model.__getstate__())
    added = {a.content: i for i, a in tok.get_added_tokens_decoder().items()}
    bpe = ByteLevelBpe(model["vocab"], model["merges"], added, max_digits=1)
    ids = [added[c] for c in contents]
    for sample in [ids, ids[::-1], [9707, *ids, 11, 1879], [added["é"], 9707]]:
        text = tok.decode(sample, skip_special_tokens=False)
        assert bpe.spells(sample, text)
        assert bpe.decode_bytes(sample).decode("utf-8", "replace") == text
    assert bpe.decode_bytes([added["Ġxy"], added["a b"]]) == b" xya b"
    assert bpe.decode_bytes([added["é"]]) == b"\xe9"
    # only ASCII added tokens can appear in ASCII text; they are matched like the others
    assert bpe.encode("1<sep>2") == tok.encode("1<sep>2", add_special_tokens=False).ids


def test_spells_accepts_sequences(qwen, qwen_bpe) -> None:
    ids = qwen.encode("Hello world<|im_end|>", add_special_tokens=False).ids
    for seq in (ids, tuple(ids), iter(ids), range(0)):
        assert qwen_bpe.spells(seq, "Hello world<|im_end|>" if seq != range(0) else "")


# ---- arguments ----------------------------------------------------------------------------------------


def _bytes_vocab() -> dict[str, int]:
    """Each byte's character -> the byte value."""
    return dict(_byte_alphabet())


def test_constructor_errors() -> None:
    vocab = _bytes_vocab()
    ByteLevelBpe(vocab, [], {}, max_digits=1)  # bytes only: fine
    ByteLevelBpe(vocab, [], {"<x>": 300}, max_digits=3, ignore_merges=True)
    with pytest.raises(ValueError, match=r"merges\[0\]: \"ab\" is not in the vocabulary"):
        ByteLevelBpe(vocab, [["a", "b"]], {}, max_digits=1)
    with pytest.raises(ValueError, match="no token for byte 0x20"):
        ByteLevelBpe({k: v for k, v in vocab.items() if v != 0x20}, [], {}, max_digits=1)
    with pytest.raises(ValueError, match="max_digits"):
        ByteLevelBpe(vocab, [], {}, max_digits=0)
    with pytest.raises(ValueError, match="empty content"):
        ByteLevelBpe(vocab, [], {"": 300}, max_digits=1)
    with pytest.raises(TypeError, match=r"merges\[1\] must be a pair"):
        ByteLevelBpe({**vocab, "ab": 256}, ["a b", "abc"], {}, max_digits=1)
    with pytest.raises(TypeError, match=r"merges\[0\] must be a pair"):
        ByteLevelBpe(vocab, [("a", "b", "c")], {}, max_digits=1)
    with pytest.raises(TypeError, match="vocab keys must be str"):
        ByteLevelBpe({**vocab, 5: 1}, [], {}, max_digits=1)
    with pytest.raises(ValueError, match=r"vocab\[\"x\"\] must be an int"):
        ByteLevelBpe({**vocab, "x": -1}, [], {}, max_digits=1)
    with pytest.raises(TypeError):
        ByteLevelBpe([], [], {}, max_digits=1)


def test_merges_in_either_format() -> None:
    vocab = {**_bytes_vocab(), "ab": 256, "abc": 257}
    for merges in ([["a", "b"], ["ab", "c"]], [("a", "b"), ("ab", "c")], ["a b", "ab c"]):
        # "abc" -> ab + c -> abc; " abd" -> Ġ + ab + d (Ġ stands for the space: id 0x20 here)
        assert ByteLevelBpe(vocab, merges, {}, max_digits=1).encode("abc abd") == [257, 0x20, 256, ord("d")]


def test_bad_ids(qwen_bpe) -> None:
    with pytest.raises(ValueError, match=r"ids\[1\] must be an int in 0..2\*\*32, not -1"):
        qwen_bpe.spells([1, -1], "")
    with pytest.raises(ValueError, match=r"ids\[0\] must be an int"):
        qwen_bpe.decode_bytes(["a"])
    with pytest.raises(TypeError, match="not str"):
        qwen_bpe.spells("abc", "")
    with pytest.raises(TypeError):
        qwen_bpe.encode(b"abc")


# ---- ChatTokenizer / PromptBuilder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat() -> ChatTokenizer:
    return ChatTokenizer.qwen3()


def test_chat_tokenizer_spells_either_way(chat, monkeypatch) -> None:
    assert chat._bpe is chat._fast
    cases = [([9707, 1879], "Hello world"), ([9707, 151645], "Hello<|im_end|>"), ([9707], "Hello!"), ([], "")]
    native = [chat.spells(ids, text) for ids, text in cases]
    monkeypatch.setattr(chat, "_bpe", None)  # as for a tokenizer ByteLevelBpe does not handle
    assert [chat.spells(ids, text) for ids, text in cases] == native == [True, True, False, True]


def test_no_native_spells_without_a_byte_level_decoder() -> None:
    raw = Tokenizer.from_file(str(qwen3_files() / "tokenizer.json"))
    raw.decoder = decoders.Fuse()
    tok = ChatTokenizer(raw)
    assert isinstance(tok._fast, ByteLevelBpe)
    assert tok._bpe is None


def test_record_checks_output_ids_natively(chat) -> None:
    from radixrouter import PrefixCache

    tok = chat
    builder = PromptBuilder(tok, PrefixCache())
    prompt = builder.tokenize(tok.render([{"role": "user", "content": "Say hello."}]))
    out = tok.encode("Hello there!") + [tok.added_tokens["<|im_end|>"]]
    assert builder._output_text("Hello there!", out, None) == "Hello there!<|im_end|>"
    assert builder._output_text("Hello there!<|im_end|>", out, None) == "Hello there!<|im_end|>"
    assert builder._output_text("Hello there", out, None) is None
    builder.record(prompt, "Hello there!", out)
    assert builder.recorded_outputs == 1
    builder.record(prompt, "Hello the", out)
    assert builder.rejected_outputs == 1
