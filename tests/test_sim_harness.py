"""Smoke test of the end-to-end load harness (benches/e2e): a one-second run against a sim worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_harness_direct_nonstream_smoke(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "benches" / "e2e" / "run.py"),
        "--targets",
        "direct,nope-not-a-target:x",
        "--scenarios",
        "nonstream",
        "--duration",
        "1",
        "--no-plots",
        "--out",
        str(tmp_path),
    ]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown target" in bad.stderr + bad.stdout
    cmd[3] = "direct"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "e2e.json").read_text())
    (row,) = report["results"]
    assert row["target"] == "direct" and row["scenario"] == "nonstream"
    assert row["requests"] > 0 and row["errors"] == 0 and row["rps"] > 0
    assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
    assert (
        row["requests_per_worker"] == [row["requests_per_worker"][0]]
        and row["requests_per_worker"][0] >= row["requests"]
    )
    assert 0 < row["cache_hit_ratio"] < 0.5  # unique prompts: only the chat template prefix is shared
    md = (tmp_path / "e2e.md").read_text()
    assert "| direct |" in md and report["meta"]["command"] in md
