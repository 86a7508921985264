"""`radixrouter demo` runs end to end: two simulated workers, the router, a streamed chat; exit 0."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_exits_zero_and_reports_each_turn():
    r = subprocess.run([sys.executable, "-m", "radixrouter.cli", "demo", "--decode-tokens-per-s", "0",
                        "--max-tokens", "8"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    served = re.findall(r"\[turn (\d)\] served by worker-(\d) \(http://127\.0\.0\.1:\d+\): (\d+) prompt tokens, "
                        r"(\d+) of them cached", r.stdout)
    assert [int(t) for t, *_ in served] == [1, 2, 3, 4]
    prompts = [int(p) for _t, _w, p, _c in served]
    assert prompts == sorted(prompts) and prompts[0] > 10
    assert all(int(c) <= int(p) for _t, _w, p, c in served)
    assert "demo finished" in r.stdout
    import radixrouter

    if hasattr(radixrouter, "PrefixCache"):
        # cache_aware: the conversation stays on the worker holding its prefix, which reuses it
        assert len({w for _t, w, _p, _c in served}) == 1
        assert all(int(c) > 0 for _t, _w, _p, c in served[1:])
