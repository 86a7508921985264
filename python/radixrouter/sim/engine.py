"""Request parsing, the scheduler, the KV/timing model and text generation of the simulated worker."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from array import array
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

from .kvcache import RadixKV
from .tokenizer import SimTokenizer

WEIGHT_VERSION = "default"
SIM_VERSION = "0.5.23-sim"


class BadRequest(ValueError):
    """Client error: answered with HTTP 400 (or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class CloseConnection(Exception):
    """Fault injection: drop the connection without finishing the response."""


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 30000
    model: str = "sim-model"
    model_path: str | None = None
    tokenizer: str | None = None
    prefill_tokens_per_s: float = 0.0  # 0 = instant
    decode_tokens_per_s: float = 0.0  # 0 = instant
    decode_slowdown: float = 0.02  # each extra running sequence slows decoding by this fraction
    kv_cache_tokens: int = 200_000
    max_running: int = 256
    incremental_streaming_output: bool = False
    stream_interval: int = 1
    seed: int = 0
    min_output_tokens: int = 16
    max_output_tokens: int = 128
    context_length: int = 32768
    log_level: str = "warning"


# ------------------------------------------------------------------------------------------ sampling params
_SP_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 128,
    "stop": None,
    "stop_token_ids": None,
    "stop_regex": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "n": 1,
    "json_schema": None,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "ignore_eos": False,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "no_stop_trim": False,
    "custom_params": None,
    "stream_interval": None,
    "logit_bias": None,
    "sampling_seed": None,
}


def _num(sp: dict, key: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    v = sp[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise BadRequest(
            f"{key} must be an integer, got {v!r}" if kind is int else f"{key} must be a number, got {v!r}"
        )
    return v


class SamplingParams:
    """SGLang's sampling_params: the same keys and defaults; an unknown key is a 400 (as in 0.5.23)."""

    __slots__ = tuple(_SP_DEFAULTS)

    def __init__(self, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadRequest("sampling_params must be an object")
        unknown = [k for k in raw if k not in _SP_DEFAULTS]
        if unknown:
            raise BadRequest(f"SamplingParams.__init__() got an unexpected keyword argument '{unknown[0]}'")
        sp = dict(_SP_DEFAULTS)
        sp.update({k: v for k, v in raw.items() if v is not None or k in ("stop", "stop_token_ids")})
        if sp["max_new_tokens"] is None:
            sp["max_new_tokens"] = _SP_DEFAULTS["max_new_tokens"]
        _num(sp, "max_new_tokens", int)
        _num(sp, "min_new_tokens", int)
        _num(sp, "n", int)
        _num(sp, "top_k", int)
        for k in (
            "temperature",
            "top_p",
            "min_p",
            "frequency_penalty",
            "presence_penalty",
            "repetition_penalty",
        ):
            _num(sp, k)
        if sp["temperature"] < 0:
            raise BadRequest(f"temperature must be non-negative, got {sp['temperature']}.")
        if not 0 < sp["top_p"] <= 1:
            raise BadRequest(f"top_p must be in (0, 1], got {sp['top_p']}.")
        if not 0 <= sp["min_p"] <= 1:
            raise BadRequest(f"min_p must be in [0, 1], got {sp['min_p']}.")
        if sp["top_k"] < 1 and sp["top_k"] != -1:
            raise BadRequest(f"top_k must be -1 (disable), or at least 1, got {sp['top_k']}.")
        for k in ("frequency_penalty", "presence_penalty"):
            if not -2 <= sp[k] <= 2:
                raise BadRequest(f"{k} must be in [-2, 2], got {sp[k]}.")
        if not 0 < sp["repetition_penalty"] <= 2:
            raise BadRequest(f"repetition_penalty must be in (0, 2], got {sp['repetition_penalty']}.")
        if sp["min_new_tokens"] < 0:
            raise BadRequest(f"min_new_tokens must be in [0, max_new_tokens], got {sp['min_new_tokens']}.")
        if sp["max_new_tokens"] < 0:
            raise BadRequest(f"max_new_tokens must be at least 0, got {sp['max_new_tokens']}.")
        if sp["min_new_tokens"] > sp["max_new_tokens"]:
            raise BadRequest(
                f"min_new_tokens must be in [0, max_new_tokens({sp['max_new_tokens']})], got {sp['min_new_tokens']}."
            )
        if sp["n"] < 1:
            raise BadRequest(f"n must be at least 1, got {sp['n']}.")
        if sum(sp[k] is not None for k in ("json_schema", "regex", "ebnf")) > 1:
            raise BadRequest("Only one of regex, json_schema, or ebnf can be set.")
        stop = sp["stop"]
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings")
        sp["stop"] = [s for s in stop if s]
        ids = sp["stop_token_ids"] or []
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest("stop_token_ids must be a list of integers")
        sp["stop_token_ids"] = ids
        si = sp["stream_interval"]
        if si is not None and (not isinstance(si, int) or isinstance(si, bool) or si < 1):
            raise BadRequest("stream_interval must be a positive integer")
        if sp["sampling_seed"] is not None:
            _num(sp, "sampling_seed", int)
        for k, v in sp.items():
            setattr(self, k, v)


# ------------------------------------------------------------------------------------------ faults
@dataclass
class Fault:
    """One injected misbehaviour, applied to the next `count` generation requests (-1: until cleared)."""

    count: int = 1
    status: int | None = None  # answer with this HTTP status (and `body` or an SGLang-style error)
    body: Any = None
    close_after_tokens: int | None = None  # drop the connection after K tokens were sent
    stall_s: float | None = None  # stall this long before the first token
    reply: str | None = None  # generate exactly this text (tokenized), then EOS
    linger_s: float | None = None  # keep the rid registered this long after the request ended (as SGLang
    # does until its scheduler has acknowledged an abort): a new request with the same rid is a duplicate

    @classmethod
    def parse(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict):
            raise BadRequest("a fault must be an object")
        known = {fl.name for fl in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise BadRequest(f"unknown fault field(s): {sorted(unknown)}; known: {sorted(known)}")
        f = cls(**raw)
        if not isinstance(f.count, int) or isinstance(f.count, bool) or f.count == 0 or f.count < -1:
            raise BadRequest("count must be a positive integer or -1")
        if f.status is not None and (not isinstance(f.status, int) or not 100 <= f.status <= 599):
            raise BadRequest("status must be an HTTP status code")
        if f.close_after_tokens is not None and (
            not isinstance(f.close_after_tokens, int) or f.close_after_tokens < 0
        ):
            raise BadRequest("close_after_tokens must be a non-negative integer")
        for name in ("stall_s", "linger_s"):
            v = getattr(f, name)
            if v is not None and (not isinstance(v, (int, float)) or not 0 <= v <= 3600):
                raise BadRequest(f"{name} must be a number of seconds in [0, 3600]")
        if f.reply is not None and not isinstance(f.reply, str):
            raise BadRequest("reply must be a string")
        return f

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# ------------------------------------------------------------------------------------------ requests
class Request:
    """One HTTP generation request: its sequences, abort state and the future it sleeps on."""

    __slots__ = (
        "rid",
        "aborted",
        "wake_fut",
        "start",
        "has_slots",
        "slots",
        "fault",
        "seqs",
        "lp_start",
        "on_wait",
    )

    def __init__(self, rid: str, fault: Fault | None) -> None:
        self.rid = rid
        self.aborted: str | None = None
        self.wake_fut: asyncio.Future | None = None
        self.start = time.perf_counter()
        self.has_slots = False
        self.slots = 0
        self.fault = fault
        self.seqs: list[Seq] = []
        self.lp_start = -1  # logprob_start_len
        self.on_wait: Callable[[], None] | None = None  # called once, before the first wait

    def arm(self) -> None:
        """About to wait: let the HTTP layer start watching for a client disconnect (only now: a request
        that never waits needs no watcher, which keeps the instant mode cheap)."""
        hook = self.on_wait
        if hook is not None:
            self.on_wait = None
            hook()

    def abort(self, message: str) -> None:
        if self.aborted is None:
            self.aborted = message
        fut = self.wake_fut
        if fut is not None and not fut.done():
            fut.set_result(None)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _logprob(token_id: int, pos: int) -> float:
    """A deterministic, plausible log-probability for a generated token."""
    return -(((token_id * 2654435761 + pos * 40503) % 4096) / 1024.0) - 0.001


class Seq:
    """One generated sequence (a prompt and one sample)."""

    __slots__ = (
        "index",
        "prompt",
        "sp",
        "out",
        "text",
        "finish",
        "cached",
        "node",
        "rng",
        "natural_len",
        "pending",
        "script",
        "logprobs",
        "sent_text",
        "sent_ids",
        "sent_lp",
        "stop_ids",
        "eos_ids",
    )

    def __init__(
        self,
        index: int,
        prompt: list[int],
        sp: SamplingParams,
        rng_seed: int,
        natural_len: int,
        script: list[int] | None,
        eos_ids: set[int],
    ) -> None:
        self.index = index
        self.prompt = prompt
        self.sp = sp
        self.out: list[int] = []
        self.text = ""
        self.finish: dict | None = None
        self.cached = 0
        self.node = None
        self.rng = random.Random(rng_seed)
        self.natural_len = natural_len
        self.pending: list[int] = []
        self.script = script
        self.logprobs: list[list] = []
        self.sent_text = 0
        self.sent_ids = 0
        self.sent_lp = 0
        self.eos_ids = set() if sp.ignore_eos else eos_ids
        self.stop_ids = self.eos_ids | set(sp.stop_token_ids)


ProgressFn = Callable[[list[Seq], bool], Awaitable[None]]


class Engine:
    """The simulated scheduler: FIFO admission under --max-running, prefix cache, prefill and decode timing."""

    def __init__(self, cfg: SimConfig, tok: SimTokenizer) -> None:
        self.cfg = cfg
        self.tok = tok
        self.kv = RadixKV(cfg.kv_cache_tokens)
        self.running = 0  # sequences holding a slot
        self.waiting: deque[Request] = deque()
        self.requests: dict[str, Request] = {}
        self.lingering: set[str] = set()  # rids of ended requests still known (fault linger_s)
        self.faults: list[Fault] = []
        self.healthy = True
        self.started = time.time()
        self.reset_stats()

    # ---------------------------------------------------------------- stats
    def reset_stats(self) -> None:
        self.stats: dict[str, Any] = {
            "requests": 0,
            "generate_requests": 0,
            "chat_requests": 0,
            "completion_requests": 0,
            "finished": 0,
            "errors": 0,
            "aborted": 0,
            "disconnects": 0,
            "abort_requests": 0,
            "abort_rids": deque(maxlen=1000),
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "completion_tokens": 0,
            "faults_applied": 0,
        }

    def snapshot(self) -> dict:
        s = dict(self.stats)
        s["abort_rids"] = list(s["abort_rids"])
        s["running"] = self.running
        s["running_requests"] = len(self.requests)
        s["waiting"] = len(self.waiting)
        s["cache_hit_ratio"] = (s["cached_tokens"] / s["prompt_tokens"]) if s["prompt_tokens"] else 0.0
        s["kv_cache_tokens"] = self.kv.size
        s["kv_cache_capacity"] = self.kv.capacity
        s["kv_evicted_tokens"] = self.kv.evicted_tokens
        s["healthy"] = self.healthy
        s["pending_faults"] = [f.describe() for f in self.faults]
        return s

    # ---------------------------------------------------------------- faults
    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take_fault(self, per_request: Any) -> Fault | None:
        if per_request is not None:
            self.stats["faults_applied"] += 1
            return Fault.parse(per_request)
        if not self.faults:
            return None
        f = self.faults[0]
        if f.count > 0:
            f.count -= 1
            if f.count == 0:
                self.faults.pop(0)
        self.stats["faults_applied"] += 1
        return f

    # ---------------------------------------------------------------- abort
    def abort(self, rid: str | None, abort_all: bool = False) -> None:
        self.stats["abort_requests"] += 1
        self.stats["abort_rids"].append(rid if not abort_all else "*")
        if abort_all:
            for req in list(self.requests.values()):
                req.abort("Abort all requests")
        elif rid is not None:
            req = self.requests.get(rid)
            if req is not None:
                req.abort(f"Abort request {rid}")

    # ---------------------------------------------------------------- sequences
    def make_seqs(self, req: Request, prompts: list[list[int]], sp: SamplingParams) -> list[Seq]:
        cfg, tok = self.cfg, self.tok
        script = None
        if req.fault is not None and req.fault.reply is not None:
            script = tok.encode(req.fault.reply)
        seqs = []
        greedy = sp.temperature < 1e-6
        for p_i, prompt in enumerate(prompts):
            if len(prompt) + sp.max_new_tokens > cfg.context_length:
                raise BadRequest(
                    f"Requested token count exceeds the model's maximum context length of {cfg.context_length} "
                    f"tokens. You requested a total of {len(prompt) + sp.max_new_tokens} tokens: {len(prompt)} "
                    f"tokens from the input messages and {sp.max_new_tokens} tokens for the completion."
                )
            h = hashlib.blake2b(array("I", prompt).tobytes(), digest_size=8)
            base = int.from_bytes(h.digest(), "little") ^ (cfg.seed * 0x9E3779B97F4A7C15)
            if sp.sampling_seed is not None:
                base ^= (sp.sampling_seed + 1) * 0xBF58476D1CE4E5B9
            for j in range(sp.n):
                seed = base if greedy else base ^ (j * 0x94D049BB133111EB)
                seed &= (1 << 64) - 1
                natural = cfg.min_output_tokens + seed % (cfg.max_output_tokens - cfg.min_output_tokens + 1)
                seqs.append(
                    Seq(p_i * sp.n + j, prompt, sp, seed, natural, script and list(script), tok.stop_ids)
                )
        return seqs

    def _next_token(self, seq: Seq) -> int:
        if seq.script is not None:
            k = len(seq.out)
            return seq.script[k] if k < len(seq.script) else self.tok.eos_id
        if seq.pending:
            return seq.pending.pop()
        if len(seq.out) >= seq.natural_len and seq.eos_ids:
            return self.tok.eos_id
        rng = seq.rng
        if len(seq.out) > 3 and seq.out[-1] != self.tok.period[-1] and rng.random() < 0.08:
            word = self.tok.period
        else:
            words = self.tok.words
            word = words[int(rng.random() * len(words))]
        if len(word) > 1:
            seq.pending = word[:0:-1]
        return word[0]

    def _step(self, seq: Seq, k: int, want_lp: bool) -> int:
        """Generate up to `k` tokens of `seq`, applying SGLang's stop rules. Returns tokens generated."""
        sp, tok = seq.sp, self.tok
        done = 0
        while done < k and seq.finish is None:
            if len(seq.out) >= sp.max_new_tokens:
                seq.finish = {"type": "length", "length": sp.max_new_tokens}
                break
            t = self._next_token(seq)
            if t in seq.eos_ids and len(seq.out) < sp.min_new_tokens:
                t = tok.words[0][0]  # min_new_tokens: EOS is masked
            seq.out.append(t)
            done += 1
            if want_lp:
                seq.logprobs.append([_logprob(t, len(seq.out)), t, None])
            if t in seq.stop_ids and len(seq.out) > sp.min_new_tokens - 1:
                seq.finish = {"type": "stop", "matched": t}
                if sp.no_stop_trim and not (sp.skip_special_tokens and tok.is_special(t)):
                    seq.text += tok.piece(t)  # kept only with no_stop_trim (and visible)
                break
            if sp.skip_special_tokens and tok.is_special(t):
                piece = ""
            else:
                piece = tok.piece(t)
            before = len(seq.text)
            seq.text += piece
            if sp.stop and piece:
                for s in sp.stop:
                    i = seq.text.find(s, max(0, before - len(s) + 1))
                    if i >= 0:
                        seq.finish = {"type": "stop", "matched": s}
                        if not sp.no_stop_trim:
                            seq.text = seq.text[:i]
                        break
                if seq.finish is not None:
                    break
            if len(seq.out) >= sp.max_new_tokens:
                seq.finish = {"type": "length", "length": sp.max_new_tokens}
        return done

    # ---------------------------------------------------------------- timing helpers
    async def _sleep(self, req: Request, dt: float) -> None:
        """Sleep that an abort (or disconnect) wakes at once."""
        if dt <= 0 or req.aborted is not None:
            return
        req.arm()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        handle = loop.call_later(dt, _wake, fut)
        req.wake_fut = fut
        try:
            await fut
        finally:
            handle.cancel()
            req.wake_fut = None

    async def _acquire(self, req: Request, k: int) -> None:
        cap = self.cfg.max_running
        if not self.waiting and (self.running + k <= cap or self.running == 0):
            self.running += k
            req.has_slots, req.slots = True, k
            return
        req.slots = k
        req.arm()
        self.waiting.append(req)
        loop = asyncio.get_running_loop()
        while not req.has_slots and req.aborted is None:
            fut = req.wake_fut = loop.create_future()
            try:
                await fut
            finally:
                req.wake_fut = None
        if not req.has_slots:
            self.waiting.remove(req)
            self._admit()

    def _admit(self) -> None:
        cap = self.cfg.max_running
        while self.waiting:
            req = self.waiting[0]
            if self.running + req.slots > cap and self.running > 0:
                break
            self.waiting.popleft()
            self.running += req.slots
            req.has_slots = True
            _wake(req.wake_fut) if req.wake_fut is not None else None

    def _release(self, req: Request) -> None:
        if req.has_slots:
            self.running -= req.slots
            req.has_slots = False
            self._admit()

    def decode_interval(self) -> float:
        rate = self.cfg.decode_tokens_per_s
        if rate <= 0:
            return 0.0
        return (1.0 + self.cfg.decode_slowdown * max(0, self.running - 1)) / rate

    # ---------------------------------------------------------------- the generation loop
    async def run(
        self, req: Request, seqs: list[Seq], *, want_lp: bool, interval: int, progress: ProgressFn | None
    ) -> None:
        """Queue, prefill, decode. `progress(seqs, final)` is awaited after each step when streaming."""
        cfg, kv = self.cfg, self.kv
        self.requests[req.rid] = req
        req.seqs = seqs
        locked: list[Seq] = []
        try:
            await self._acquire(req, len(seqs))
            fault = req.fault
            if fault is not None and fault.stall_s:
                await self._sleep(req, fault.stall_s)
            if req.aborted is None:
                uncached = 0
                for seq in seqs:
                    seq.cached, seq.node = kv.insert(seq.prompt)
                    kv.lock(seq.node)
                    locked.append(seq)
                    uncached += len(seq.prompt) - seq.cached
                    self.stats["prompt_tokens"] += len(seq.prompt)
                    self.stats["cached_tokens"] += seq.cached
                kv.evict()
                if cfg.prefill_tokens_per_s > 0:
                    await self._sleep(req, uncached / cfg.prefill_tokens_per_s)
            close_after = fault.close_after_tokens if fault is not None else None
            if progress is not None:
                step = interval
            else:  # non-streaming: about 20 ms of decoding per step, so an abort is noticed quickly
                step = max(1, int(cfg.decode_tokens_per_s * 0.02)) if cfg.decode_tokens_per_s > 0 else 64
            first = True
            loop = asyncio.get_running_loop()
            due = loop.time()
            while req.aborted is None:
                active = [s for s in seqs if s.finish is None]
                if not active:
                    break
                if not first:
                    # tokens are due on a fixed schedule (like a GPU step), so the time spent sending
                    # does not add up; a worker that fell behind catches up by at most one step
                    dt = self.decode_interval() * step
                    if dt > 0:
                        now = loop.time()
                        due = max(due + dt, now - dt)
                        await self._sleep(req, due - now)
                    if req.aborted is not None:
                        break
                k = 1 if first else step  # first token right after prefill (TTFT)
                first = False
                for s in active:
                    self.stats["completion_tokens"] += self._step(s, k, want_lp)
                if close_after is not None and len(seqs[0].out) >= close_after:
                    if progress is not None:
                        await progress(seqs, False)
                    raise CloseConnection
                if progress is not None and any(s.finish is None for s in seqs):
                    await progress(seqs, False)
            if req.aborted is not None:
                for s in seqs:
                    if s.finish is None:
                        s.finish = {
                            "type": "abort",
                            "message": req.aborted,
                            "status_code": None,
                            "err_type": None,
                        }
                self.stats["aborted"] += 1
            else:
                self.stats["finished"] += 1
        finally:
            self._release(req)
            self.requests.pop(req.rid, None)
            linger = req.fault.linger_s if req.fault is not None else None
            if linger:
                self.lingering.add(req.rid)
                asyncio.get_running_loop().call_later(linger, self.lingering.discard, req.rid)
            for seq in locked:
                kv.unlock(seq.node)  # type: ignore[arg-type]
                kv.insert(seq.prompt + seq.out)
            if locked:
                kv.evict()

    # ---------------------------------------------------------------- shapes
    def meta(
        self, req: Request, seq: Seq, cumulative: bool, want_lp: bool, top_n: int = 0, lp_text: bool = False
    ) -> dict:
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": seq.finish,
            "prompt_tokens": len(seq.prompt),
            "weight_version": WEIGHT_VERSION,
            "total_retractions": 0,
            "completion_tokens": len(seq.out),
            "cached_tokens": seq.cached,
            "e2e_latency": time.perf_counter() - req.start,
        }
        if want_lp:
            lps = seq.logprobs if cumulative else seq.logprobs[seq.sent_lp :]
            if lp_text:  # return_text_in_logprobs: the 3rd element of each triple is the token text
                lps = [[lp, t, self.tok.token_text(t)] for lp, t, _ in lps]
            inp: list[list] = []
            if req.lp_start >= 0 and (cumulative or seq.sent_lp == 0):
                start = req.lp_start
                inp = [
                    [None if i == 0 else _logprob(t, -i), t, None]
                    for i, t in enumerate(seq.prompt[start:], start)
                ]
            meta["input_token_logprobs"] = inp
            meta["output_token_logprobs"] = lps
            if top_n > 0:
                meta["input_top_logprobs"] = []
                vocab = self.tok.vocab_size
                meta["output_top_logprobs"] = [
                    [lp] + [[lp[0] - 1.0 - i, (lp[1] + i + 1) % vocab, None] for i in range(top_n - 1)]
                    for lp in lps
                ]
        return meta


def new_rid() -> str:
    return uuid.uuid4().hex


__all__ = [
    "BadRequest",
    "CloseConnection",
    "Engine",
    "Fault",
    "Request",
    "SamplingParams",
    "Seq",
    "SimConfig",
    "new_rid",
]
