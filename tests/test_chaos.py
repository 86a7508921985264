"""A short run of benches/chaos.py (the `make chaos` target runs it longer): the router under a mixed load
while its workers answer 5xx/429, drop connections mid-answer, stall past the first-token timeout and go
unhealthy. Every response must be complete or a clean OpenAI-shaped error, nothing may stay in flight, and
the router must count every request."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benches" / "chaos.py"


def test_chaos_short_run():
    out = subprocess.run([sys.executable, str(SCRIPT), "8"], capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "broken responses: 0" in text and text.rstrip().endswith("PASS"), text
    applied = int(re.search(r"worker faults applied: (\d+)", text).group(1))
    assert applied >= 5, text  # the faults really happened
    retries = re.search(r'radixrouter_retries_total\{reason="worker_failure"\} ([\d.]+)', text)
    assert retries and float(retries.group(1)) > 0, text  # and the router worked around some of them
    ok = sum(int(n) for n in re.findall(r"^\s+\S+\s+ok\s+(\d+)$", text, re.M))
    assert ok > 100, text
