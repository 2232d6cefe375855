"""The benchmark harness runs end to end on tiny sizes with only the project's own dependencies.

No timing is asserted: this only proves that `python -m benchmarks` starts the fake server, runs every
workload for Timestep and the plain-HTTP floor, checks their answers and reports a number for each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("timestep", "plain_http")
WORKLOADS = ("W1", "W1-stream", "W2-wall", "W2-mem", "W3", "import")


def test_quick_benchmark_reports_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", ",".join(IMPLS), "--runs", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    medians = {(r["impl"], r["workload"]): r["value"] for r in records if r["type"] == "median"}
    for impl in IMPLS:
        for workload in WORKLOADS:
            value = medians.get((impl, workload))
            assert isinstance(value, int | float), f"no {workload} for {impl}"
            assert value > 0, f"{impl} {workload} = {value}"
    appends = [v for (impl, w), v in medians.items() if impl == "timestep" and w.startswith("append@")]
    assert appends and all(v > 0 for v in appends)
    assert not [r for r in records if r["type"] == "failed"]
    assert "| timestep |" in proc.stdout and "| plain_http |" in proc.stdout
