"""The benchmark harness runs end to end on tiny sizes with only the project's own dependencies.

No timing is asserted: this only proves that `python -m benchmarks` starts the fake server, runs every
workload for Timestep and the two plain floors (aiohttp, httpx2), checks their answers and reports a number for each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("timestep", "plain_aiohttp", "plain_http")
_PARTS = (("W1", ("",)), ("W2", ("-wall", "-mem")), ("W2-1000", ("-wall", "-mem")), ("W3", ("",)), ("W3-10000", ("",)))
WORKLOADS = (
    *(f"{w}{stream}{part}" for w, parts in _PARTS for stream in ("", "-stream") for part in parts),
    "import",
)


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
    assert all(f"| {impl} |" in proc.stdout for impl in IMPLS)
    # every ratio is given against both floors
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| timestep |"))
    assert row.count("× / ") >= 7, row
