"""``python -m benchmarks``: runs every workload of every implementation and reports medians and ratios."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.adapters import DEFAULT_ORDER, FLOORS, FULL_SET, SPECS, missing, versions
from benchmarks.common import FULL, QUICK, Sizes
from benchmarks.server import ROOT, FakeServer, child_env, fake_server
from benchmarks.worker import RESULT_PREFIX, SERVER_PID_ENV

BASELINE = FLOORS[0]  # overhead per call and the targets are counted against the lower floor
WORKER_WORKLOADS = tuple(w + stream for w in ("W1", "W2", "W2-1000", "W3", "W3-10000") for stream in ("", "-stream"))
PEER_WORKLOADS = ("W1", "W1-stream", "W2", "W3")  # the peers take minutes at the larger sizes


def _columns(stream: str) -> tuple[tuple[str, str, str], ...]:
    return (
        (f"W1{stream}", "W1 s", "s"),
        (f"W2{stream}-wall", "W2 s", "s"),
        (f"W2{stream}-mem", "W2 MB", "MB"),
        (f"W2-1000{stream}-wall", "W2×1000 s", "s"),
        (f"W2-1000{stream}-mem", "W2×1000 MB", "MB"),
        (f"W3{stream}", "W3 ms/turn", "ms"),
        (f"W3-10000{stream}", "W3×10k ms/turn", "ms"),
    )


# (key, column title, unit)
COLUMNS = (*_columns(""), ("import", "import s", "s"))
STREAM_COLUMNS = _columns("-stream")
UNITS = {key: unit for key, _, unit in (*COLUMNS, *STREAM_COLUMNS)}
# CPU seconds during the timed part: the implementation's process, and the fake server's
CPU_KEYS: tuple[tuple[str, str, str], ...] = (
    ("W1", "W1", "s"),
    ("W1-stream", "W1 stream", "s"),
    ("W2", "W2", "s"),
    ("W2-1000", "W2×1000", "s"),
    ("W3", "W3 (per turn)", "ms"),
    ("W3-10000", "W3×10k (per turn)", "ms"),
)
for _key in WORKER_WORKLOADS:
    _unit = "ms" if _key.startswith("W3") else "s"
    UNITS[f"{_key}-cpu"] = UNITS[f"{_key}-server-cpu"] = _unit
TARGET = 1.3  # every wall time and memory growth, against the plain aiohttp loop
TARGETS = {key: TARGET for key, _, unit in (*COLUMNS, *STREAM_COLUMNS) if key != "import"}
IMPORT_TARGET_S = 0.15
# shared dependencies whose versions matter to the numbers, reported next to each adapter's own
SHARED_DISTRIBUTIONS = (
    "aiohttp",
    "httpx2",
    "httpcore2",
    "h11",
    "anyio",
    "pydantic",
    "langchain-core",
    "langgraph-prebuilt",
    "langgraph-checkpoint",
    "matplotlib",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, impl: str, workload: str, run: int, value: float) -> None:
        self.values[(impl, workload)].append(value)
        unit = UNITS.get(workload, "us")
        self.records.append(
            {"type": "run", "impl": impl, "workload": workload, "run": run, "value": value, "unit": unit}
        )

    def median(self, impl: str, workload: str) -> float | None:
        vals = self.values.get((impl, workload))
        return statistics.median(vals) if vals else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--only", help=f"comma-separated implementations (default: {','.join(DEFAULT_ORDER)})")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the median is reported")
    parser.add_argument("--json", type=Path, help="write results as JSON lines to this file")
    parser.add_argument("--chart", type=Path, help="draw a bar chart of the ratios to this PNG (needs matplotlib)")
    parser.add_argument("--base-url", help="use this running fake server instead of starting one")
    parser.add_argument("--slow-base-url", help="use this running fake server (with model latency) for W2")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(DEFAULT_ORDER)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        parser.error(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.names = names
    return args


@contextmanager
def servers(args: argparse.Namespace, sizes: Sizes) -> Iterator[tuple[FakeServer, FakeServer]]:
    with ExitStack() as stack:
        fast = FakeServer(args.base_url, None) if args.base_url else stack.enter_context(fake_server(0.0))
        slow = (
            FakeServer(args.slow_base_url, None)
            if args.slow_base_url
            else stack.enter_context(fake_server(sizes.w2_latency))
        )
        log(f"fake server: {fast.url} (no latency), {slow.url} ({sizes.w2_latency * 1000:.0f} ms latency)")
        yield fast, slow


def run_worker(impl: str, workload: str, server: FakeServer, quick: bool) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.worker", impl, workload, server.url]
    if quick:
        cmd.append("--quick")
    extra = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-bench"}
    if server.pid is not None:
        extra[SERVER_PID_ENV] = str(server.pid)
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=child_env(**extra),
        capture_output=True,
        text=True,
        timeout=300 if quick else 1800,
        stdin=subprocess.DEVNULL,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX) and proc.returncode == 0:
            values: dict[str, float] = json.loads(line[len(RESULT_PREFIX) :])
            return values
    tail = (proc.stderr or proc.stdout)[-2500:]
    raise RuntimeError(f"exit code {proc.returncode}\n{tail}")


def import_seconds(stmt: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", stmt], cwd=ROOT, env=child_env(), check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure_imports(names: list[str], runs: int, results: Results) -> None:
    for name in names:  # once untimed: compiles bytecode and warms the page cache
        import_seconds(SPECS[name].import_stmt)
    for run in range(runs):
        bare = import_seconds("pass")
        results.add("python", "startup", run, bare)
        for name in names:
            net = max(import_seconds(SPECS[name].import_stmt) - bare, 0.0)
            results.add(name, "import", run, net)
            log(f"[run {run + 1}/{runs}] {name:14} import {net:.3f} s (interpreter start-up {bare:.3f} s)")


def run_workloads(
    args: argparse.Namespace, names: list[str], results: Results, urls: tuple[FakeServer, FakeServer]
) -> None:
    """Workload by workload, each implementation in turn (order reversed every other run), so that a
    burst of other activity on the machine lands on several implementations rather than one."""
    fast, slow = urls
    for run in range(args.runs):
        order = names if run % 2 == 0 else names[::-1]
        for workload in (*WORKER_WORKLOADS, "append"):
            for name in order:
                if workload == "append" and name != "timestep":
                    continue
                if workload != "append" and name not in FULL_SET and workload not in PEER_WORKLOADS:
                    continue
                run_one(args, name, workload, run, slow if workload.startswith("W2") else fast, results)


def run_one(args: argparse.Namespace, name: str, workload: str, run: int, server: FakeServer, results: Results) -> None:
    key = f"{workload}-wall" if workload.startswith("W2") else workload
    if (name, key) in results.failed:
        return
    log(f"[run {run + 1}/{args.runs}] {name:14} {workload:9} ...")
    try:
        values = run_worker(name, workload, server, args.quick)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        results.failed[(name, key)] = str(exc)
        log(f"    FAILED: {exc}")
        return
    for k, value in values.items():
        results.add(name, k, run, value)
    log("    " + ", ".join(f"{k} {v:.4g} {UNITS.get(k, 'us')}" for k, v in values.items() if not k.endswith("-cpu")))


def fmt(value: float, unit: str) -> str:
    if unit == "ms" or unit == "MB":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def ratio(results: Results, impl: str, key: str, base: str = BASELINE) -> float | None:
    value, floor = results.median(impl, key), results.median(base, key)
    if value is None or floor is None or floor <= 0:
        return None
    return value / floor


def cell(results: Results, impl: str, key: str, unit: str) -> str:
    """The median, then its ratio to each floor: ``0.72 (1.10× / 0.65×)`` is aiohttp / httpx2."""
    value = results.median(impl, key)
    if value is None:
        if (impl, key) in results.failed or (impl, key.replace("-mem", "-wall")) in results.failed:
            return "FAILED"
        return "—"
    ratios = [ratio(results, impl, key, floor) for floor in FLOORS]
    if all(r is None for r in ratios):
        return fmt(value, unit)
    return fmt(value, unit) + " (" + " / ".join("—" if r is None else f"{r:.2f}×" for r in ratios) + ")"


def overhead_ms(results: Results, impl: str, sizes: Sizes) -> str:
    value, base = results.median(impl, "W1"), results.median(BASELINE, "W1")
    if value is None or base is None:
        return "—"
    calls = sizes.w1_conversations * sizes.w1_turns * 2
    return f"{(value - base) / calls * 1000:+.2f}"


def table(results: Results, names: list[str], sizes: Sizes, columns: tuple[tuple[str, str, str], ...]) -> str:
    header = ["implementation", columns[0][1], "overhead ms/call", *(title for _, title, _ in columns[1:])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        if name in results.skipped:
            lines.append(f"| {name} | " + " | ".join([results.skipped[name]] * (len(header) - 1)) + " |")
            continue
        cells = [cell(results, name, key, unit) for key, _, unit in columns]
        over = overhead_ms(results, name, sizes) if columns[0][0] == "W1" else "—"
        lines.append("| " + " | ".join([name, cells[0], over, *cells[1:]]) + " |")
    return "\n".join(lines)


def cpu_table(results: Results, names: list[str]) -> str:
    """CPU used during the timed part, implementation's process / fake server's process."""
    header = ["implementation", *(f"{title} {unit}" for _, title, unit in CPU_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        if name in results.skipped:
            continue
        cells = []
        for key, _, unit in CPU_KEYS:
            client, server = results.median(name, f"{key}-cpu"), results.median(name, f"{key}-server-cpu")
            if client is None:
                cells.append("—")
            else:
                cells.append(fmt(client, unit) + ("" if server is None else f" / {fmt(server, unit)}"))
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def append_table(results: Results, sizes: Sizes) -> str:
    lines = ["| messages already stored | one add_items µs |", "|---|---|"]
    for n in sizes.append_levels:
        value = results.median("timestep", f"append@{n}")
        lines.append(f"| {n:,} | {'—' if value is None else f'{value:,.0f}'} |")
    return "\n".join(lines)


def targets(results: Results) -> str:
    lines = []
    for key, limit in TARGETS.items():
        r = ratio(results, "timestep", key)
        verdict = "not measured" if r is None else ("met" if r <= limit else "MISSED")
        shown = "—" if r is None else f"{r:.2f}×"
        lines.append(f"- {key}: {shown} of {BASELINE} (target ≤ {limit}×): {verdict}")
    imp = results.median("timestep", "import")
    verdict = "not measured" if imp is None else ("met" if imp <= IMPORT_TARGET_S else "MISSED")
    shown = "—" if imp is None else f"{imp:.3f} s"
    lines.append(f"- import timestep: {shown} (target ≤ {IMPORT_TARGET_S} s): {verdict}")
    return "\n".join(lines)


def meta(args: argparse.Namespace, names: list[str], sizes: Sizes) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "type": "meta",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "nproc": os.cpu_count(),
        "runs": args.runs,
        "quick": args.quick,
        "sizes": {k: v for k, v in sizes.__dict__.items()},
        "versions": {name: versions(SPECS[name]) for name in names},
        "shared_versions": installed_versions(SHARED_DISTRIBUTIONS),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git": git_state(),
    }


def git_state() -> dict[str, Any] | None:
    """The commit measured, and whether the work tree had uncommitted changes to the package."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "timestep"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "timestep_modified": bool(status.strip())}


def installed_versions(dists: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def write_json(path: Path, head: dict[str, Any], results: Results, names: list[str]) -> None:
    lines = [head, *results.records]
    for (impl, key), vals in results.values.items():
        lines.append(
            {
                "type": "median",
                "impl": impl,
                "workload": key,
                "value": statistics.median(vals),
                "unit": UNITS.get(key, "us"),
                "runs": len(vals),
                **{f"ratio_to_{floor}": ratio(results, impl, key, floor) for floor in FLOORS},
            }
        )
    lines += [{"type": "skipped", "impl": i, "reason": r} for i, r in results.skipped.items()]
    lines += [{"type": "failed", "impl": i, "workload": w, "error": e} for (i, w), e in results.failed.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = Results()
    names: list[str] = args.names
    for name in names:
        gone = missing(SPECS[name])
        if gone:
            results.skipped[name] = "not installed"
            log(f"{name}: not installed ({', '.join(gone)}), skipped")
    runnable = [n for n in names if n not in results.skipped]
    head = meta(args, names, sizes)
    with servers(args, sizes) as urls:
        run_workloads(args, runnable, results, urls)
    measure_imports(runnable, args.runs, results)
    if hasattr(os, "getloadavg"):
        head["loadavg_at_end"] = list(os.getloadavg())

    print(f"Ratios in brackets: to {FLOORS[0]} / to {FLOORS[1]}.")
    print()
    print(table(results, names, sizes, COLUMNS))
    print()
    print("Streaming:")
    print()
    print(table(results, names, sizes, STREAM_COLUMNS))
    print()
    print("CPU during the timed part (client process / fake server process):")
    print()
    print(cpu_table(results, names))
    if "timestep" in runnable:
        print()
        print(append_table(results, sizes))
        print()
        print(targets(results))
    if args.json:
        write_json(args.json, head, results, names)
    if args.chart:
        from benchmarks.chart import draw

        draw(args.chart, results, names)
    if results.failed:
        log(f"{len(results.failed)} workload(s) failed: " + ", ".join(f"{i} {w}" for i, w in results.failed))
        return 1
    return 0
