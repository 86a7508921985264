"""Separate a reasoning model's thinking block into ``reasoning_content``.

Reasoning models wrap their chain of thought in tags, ``<think>...</think>`` for Qwen3, DeepSeek-R1, GLM-4.5
and most others.  :class:`ReasoningParser` is fed the generated text delta by delta and returns OpenAI delta
pieces: ``{"reasoning_content": str}`` for the thinking and ``{"content": str}`` for the answer.  Nothing
waits for the end of the output; the parser only holds back what could still turn out to be a tag (a partial
``</think>`` at the end of a delta) and whitespace at the edges of the reasoning.

Output conventions (identical in streaming and non-streaming use, whatever the chunking):
- ``reasoning_content`` is the text between the tags with surrounding whitespace removed (the Qwen3 template
  puts it back as ``<think>\\n{reasoning}\\n</think>\\n\\n``), never containing the tags;
- content following ``</think>`` has its leading whitespace removed; content is otherwise untouched;
- a second ``<think>`` after the block is ordinary content.

Where the output starts (``in_reasoning``):
- ``True``: the opening tag is in the prompt (DeepSeek-R1 templates, Qwen3 "thinking" models), so the output
  begins inside the reasoning; an opening tag the model repeats is dropped.  Without a closing tag, the whole
  output is reasoning (a truncated thought).
- ``False``: no reasoning at all (for example Qwen3 with ``enable_thinking: false``, whose prompt already ends
  with an empty ``<think>\\n\\n</think>\\n\\n``); the text passes through as content.
- ``None``: the format's default.  ``deepseek-r1`` (and ``qwen3-thinking``) assume ``True``; the others
  (``qwen3``...) look at the start of the output: ``<think>`` there opens the block, anything else is content.
Use :func:`prompt_in_reasoning` on the rendered prompt to choose: it says ``True`` when the prompt ends with the
opening tag and ``False`` when it ends with a closed block.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "REASONING_FORMATS",
    "ReasoningParser",
    "detect_reasoning_format",
    "normalize_reasoning_format",
    "parse_reasoning",
    "prompt_in_reasoning",
]


@dataclass(frozen=True)
class _Format:
    start: str
    end: str
    forced: bool  # output begins inside the reasoning when the caller does not say otherwise


_THINK = ("<think>", "</think>")
_FORMATS: dict[str, _Format] = {
    "qwen3": _Format(*_THINK, forced=False),
    "qwen3-thinking": _Format(*_THINK, forced=True),
    "deepseek-r1": _Format(*_THINK, forced=True),
    "deepseek-v3": _Format(*_THINK, forced=False),
    "glm45": _Format(*_THINK, forced=False),
    "step3": _Format(*_THINK, forced=True),
    "kimi": _Format("\u25c1think\u25b7", "\u25c1/think\u25b7", forced=False),
}
_ALIASES = {
    "qwen": "qwen3",
    "qwq": "deepseek-r1",
    "r1": "deepseek-r1",
    "deepseek": "deepseek-r1",
    "glm4.5": "glm45",
    "glm4-moe": "glm45",
}
#: The accepted ``--reasoning-parser`` names.
REASONING_FORMATS: tuple[str, ...] = tuple(_FORMATS)


def normalize_reasoning_format(name: str) -> str:
    """Canonical name for a ``--reasoning-parser`` value (``_`` and ``-`` are interchangeable); ValueError."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _FORMATS:
        raise ValueError(
            f"unknown reasoning parser {name!r}; expected one of: {', '.join(REASONING_FORMATS)}"
        )
    return key


def detect_reasoning_format(chat_template: str | None) -> str | None:
    """Guess the reasoning format from a chat template's text (``None`` when it shows no thinking tags)."""
    if not chat_template:
        return None
    if "\u25c1think\u25b7" in chat_template:
        return "kimi"
    if "<think>" not in chat_template and "</think>" not in chat_template:
        return None
    if "<\uff5cAssistant\uff5c>" in chat_template:  # DeepSeek's full-width bars
        return "deepseek-r1"
    return "qwen3"


def prompt_in_reasoning(prompt: str, fmt: str = "qwen3") -> bool | None:
    """Whether a rendered prompt leaves the model inside a reasoning block.

    ``True`` if the prompt ends with the opening tag (optionally followed by whitespace), ``False`` if it ends
    with the closing tag (thinking switched off), ``None`` if it says nothing.
    """
    spec = _FORMATS[normalize_reasoning_format(fmt)]
    tail = prompt.rstrip()
    if tail.endswith(spec.start):
        return True
    if tail.endswith(spec.end):
        return False
    return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    first = marker[0]
    start = max(0, len(text) - len(marker) + 1)
    while True:
        i = text.find(first, start)
        if i < 0:
            return 0
        if marker.startswith(text[i:]):
            return len(text) - i
        start = i + 1


_START, _REASONING, _AFTER_END, _CONTENT = range(4)


class ReasoningParser:
    """Incremental splitter of reasoning and content; one instance per generated choice.

    ``feed(delta)`` and ``finish()`` return lists of ``{"reasoning_content": str}`` / ``{"content": str}``
    pieces (never empty strings).  ``reasoning`` and ``content`` hold everything returned so far.
    """

    __slots__ = ("_buf", "_content", "_end", "_forced", "_reasoning", "_start", "_state")

    def __init__(self, fmt: str = "qwen3", *, in_reasoning: bool | None = None) -> None:
        spec = _FORMATS[normalize_reasoning_format(fmt)]
        self._start = spec.start
        self._end = spec.end
        self._forced = spec.forced if in_reasoning is None else in_reasoning
        self._state = _CONTENT if in_reasoning is False else _START
        self._buf = ""
        self._reasoning: list[str] = []
        self._content: list[str] = []

    @property
    def reasoning(self) -> str:
        """All reasoning text returned so far."""
        return "".join(self._reasoning)

    @property
    def content(self) -> str:
        """All content returned so far."""
        return "".join(self._content)

    @property
    def in_reasoning(self) -> bool:
        """True while the parser is inside the reasoning block (or still deciding whether it is)."""
        return self._state in (_START, _REASONING)

    def feed(self, delta: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if not delta:
            return out
        if self._state == _CONTENT:
            self._emit_content(out, delta)
            return out
        self._buf += delta
        self._run(out)
        return out

    def finish(self) -> list[dict[str, str]]:
        """Flush what was held back at the end of the output."""
        out: list[dict[str, str]] = []
        buf, self._buf = self._buf, ""
        if self._state == _START:
            if self._forced:
                self._emit_reasoning(out, buf.strip())
            else:
                self._emit_content(out, buf)
        elif self._state == _REASONING:
            self._emit_reasoning(out, buf.rstrip())
        self._state = _CONTENT
        return out

    # -- internals -----------------------------------------------------------------------------------
    def _run(self, out: list[dict[str, str]]) -> None:
        if self._state == _START:
            stripped = self._buf.lstrip()
            if not stripped or self._start.startswith(stripped):
                return  # still undecided: whitespace or a partial opening tag
            if stripped.startswith(self._start):
                self._state = _REASONING
                self._buf = stripped[len(self._start):]
            elif self._forced:
                self._state = _REASONING
                self._buf = stripped
            else:
                self._state = _CONTENT
                buf, self._buf = self._buf, ""
                self._emit_content(out, buf)
                return
        if self._state == _REASONING:
            buf = self._buf
            i = buf.find(self._end)
            if i >= 0:
                self._emit_reasoning(out, buf[:i].rstrip())
                self._state = _AFTER_END
                self._buf = ""
                rest = buf[i + len(self._end):]
                if rest:
                    self._after_end(out, rest)
                return
            hold = _partial_suffix(buf, self._end)
            ready = buf[: len(buf) - hold]
            body = ready.rstrip()
            # trailing whitespace waits: it is dropped if the closing tag follows it
            self._buf = ready[len(body):] + buf[len(buf) - hold:]
            self._emit_reasoning(out, body)
        elif self._state == _AFTER_END:
            buf, self._buf = self._buf, ""
            self._after_end(out, buf)

    def _after_end(self, out: list[dict[str, str]], text: str) -> None:
        text = text.lstrip()
        if text:
            self._state = _CONTENT
            self._emit_content(out, text)

    def _emit_reasoning(self, out: list[dict[str, str]], text: str) -> None:
        if not self._reasoning:
            text = text.lstrip()
        if text:
            self._reasoning.append(text)
            out.append({"reasoning_content": text})

    def _emit_content(self, out: list[dict[str, str]], text: str) -> None:
        if text:
            self._content.append(text)
            out.append({"content": text})


def parse_reasoning(text: str, fmt: str = "qwen3", *, in_reasoning: bool | None = None) -> tuple[str | None, str]:
    """Non-streaming form: ``(reasoning_content or None, content)`` for a whole output."""
    parser = ReasoningParser(fmt, in_reasoning=in_reasoning)
    parser.feed(text)
    parser.finish()
    return (parser.reasoning or None), parser.content
