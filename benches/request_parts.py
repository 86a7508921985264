"""CPU time of the pieces of one non-streaming chat request, each measured alone (process time over 2,000
requests shaped like benches/e2e's `nonstream` scenario, the Qwen3 tokenizer, a prefix cache that holds a
template prefix). Not a benchmark of the router as a whole: a guide to where its own Python time goes.

    .venv/bin/python benches/request_parts.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

from loadgen import words  # noqa: E402

from radixrouter import PrefixCache  # noqa: E402
from radixrouter.openai_api import parse_chat  # noqa: E402
from radixrouter.tokenizer import ChatTokenizer, PromptBuilder, _AsciiEncoder  # noqa: E402

N = 2_000


def bench(name: str, f) -> None:
    t = time.process_time()
    for i in range(N):
        f(i)
    print(f"{name:28s} {(time.process_time() - t) / N * 1e6:7.1f} us")


def main() -> None:
    tok = ChatTokenizer.qwen3()
    cache = PrefixCache()
    builder = PromptBuilder(tok, cache)
    rng = random.Random(1)
    prompts = [words(rng, 48) for _ in range(256)]
    raw = [orjson.dumps({"model": "sim-model", "max_tokens": 16,
                         "messages": [{"role": "user", "content": f"{k}: {prompts[k % 256]}"}]}) for k in range(N)]
    objs = [orjson.loads(r) for r in raw]
    creqs = [parse_chat(o, "sim-model") for o in objs]
    texts = [tok.render(c.messages, tools=c.tools, add_generation_prompt=True, **c.template_kwargs) for c in creqs]
    cache.insert(texts[0][:40], *tok.encode_with_ends(texts[0][:40]))
    built = [builder.tokenize(t) for t in texts]
    out_ids = tok.encode(" the quick brown fox jumps over the lazy dog and then some more words")[:16]
    out_text = tok.decode(out_ids)

    bench("orjson.loads (body)", lambda i: orjson.loads(raw[i]))
    bench("parse_chat (validation)", lambda i: parse_chat(objs[i], "sim-model"))
    bench("render (chat template)", lambda i: tok.render(creqs[i].messages, tools=creqs[i].tools,
                                                          add_generation_prompt=True, **creqs[i].template_kwargs))
    bench("tokenize through the cache", lambda i: builder.tokenize(texts[i]))
    bench("encode, no cache", lambda i: tok.encode(texts[i]))
    python_ascii = _AsciiEncoder.build(tok.tokenizer, native=False)  # the former ASCII path, for comparison
    for t in texts:
        python_ascii.encode(t)  # its piece cache warm, like the Rust one
    bench("  (Python ASCII path)", lambda i: python_ascii.encode(texts[i]))
    bench("Prompt.ids_json", lambda i: built[i].ids_json())
    bench("record (16 output tokens)", lambda i: builder.record(built[i], out_text, out_ids,
                                                                finish_reason={"type": "length"}, worker="w"))
    bench("decode 16 ids", lambda i: tok.decode(out_ids, skip_special_tokens=False))
    bench("spells (16 ids, the check)", lambda i: tok.spells(out_ids, out_text))
    bench("char_ends of a prompt", lambda i: tok.char_ends(built[i]._ids_array()))


if __name__ == "__main__":
    main()
