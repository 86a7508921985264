"""Thread CPU time of the router's synchronous stages, measured inside a running `radixrouter serve`.

Put this folder on PYTHONPATH with RADIXROUTER_STAGE_CPU=1 in the environment of the router process (the
harness passes its environment on), e.g.

    RADIXROUTER_STAGE_CPU=1 PYTHONPATH=benches/e2e/stage_cpu \\
        .venv/bin/python benches/e2e/router_cpu.py radixrouter:round_robin 6

Every 2,000 requests the granian worker writes /tmp/radixrouter-stage-cpu-<pid>.txt: the event-loop
thread's CPU per request since the first request, and per stage (time.thread_time_ns around each call, so
other tasks' work never counts; each measurement itself costs about a microsecond). Only synchronous
functions can be timed this way; what is not listed is granian, the event loop, the upstream exchange and
the async glue. A diagnostic, not part of the router.
"""

from __future__ import annotations

import builtins
import collections
import functools
import os
import time

if os.environ.get("RADIXROUTER_STAGE_CPU"):
    _spent: collections.Counter = collections.Counter()
    _calls: collections.Counter = collections.Counter()
    _state = {"n": 0, "t0": 0}

    def _timed(owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def wrapper(*a, **k):
            t = time.thread_time_ns()
            try:
                return f(*a, **k)
            finally:
                _spent[label] += time.thread_time_ns() - t
                _calls[label] += 1

        setattr(owner, name, wrapper)

    def _dump() -> None:
        n = _state["n"]
        total = time.thread_time_ns() - _state["t0"]
        lines = [f"requests {n}, event-loop thread CPU per request {total / n / 1000:.1f} us"]
        for label, ns in _spent.most_common():
            lines.append(f"{ns / n / 1000:8.2f} us/request {ns / _calls[label] / 1000:8.2f} us/call  {label}")
        with open(f"/tmp/radixrouter-stage-cpu-{os.getpid()}.txt", "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def _install() -> None:
        from radixrouter import app as A
        from radixrouter import tokenizer as T

        for owner, name, label in (
            (A, "parse_chat", "parse_chat (validation)"),
            (T.ChatTokenizer, "render", "render (chat template)"),
            (A.App, "_prepare_json", "tokenize through the cache + ids as JSON"),
            (A.App, "_record", "record in the prefix cache"),
            (A.App, "_watch", "disconnect watch (created)"),
            (A.DisconnectWatch, "_start", "disconnect watch (set up)"),
            (A.RsgiExchange, "release", "exchange release"),
            (A.RsgiExchange, "__init__", "exchange init"),
            (A.App, "_sub_requests", "/generate body"),
            (A.App, "_observe", "metrics"),
            (A.Choice, "update", "worker response -> choice"),
            (A, "_route_ctx", "routing context"),
            (A.App, "_pin", "cache pin"),
        ):
            _timed(owner, name, label)
        serve = A.App._serve

        async def counted(self, ex):
            if not _state["n"]:
                _state["t0"] = time.thread_time_ns()
            _state["n"] += 1
            if _state["n"] % 2000 == 0:
                _dump()
            return await serve(self, ex)

        A.App._serve = counted

    _import = builtins.__import__

    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        if name == "radixrouter.app":
            builtins.__import__ = _import
            _install()
        return module

    builtins.__import__ = _hook
